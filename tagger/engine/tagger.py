"""The prediction API: load once, then decode → preprocess → model → scores.

``Tagger.prepare`` (CPU: decoding and resizing) and ``Tagger.run`` (the model) are separate
so that a Space can keep everything but the model call outside its GPU function.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from tagger.engine.cpu import INT8, INT8_DTYPE, INT8_LOAD_DTYPE, int8_engine, keep_freed_memory, quantize_linears
from tagger.engine.decode import ImageSource
from tagger.engine.model import Pixels, TaggerModel
from tagger.engine.preprocess import Preprocessor, normalise
from tagger.engine.vocab import Vocabulary
from tagger.engine.weights import load_model
from tagger.tags.selection import Selection, TagScore, select_tags

log = logging.getLogger("tagger")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; anything else is checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available; use --device cpu.")
    return resolved


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def on_zero_gpu() -> bool:
    """True on a Hugging Face ZeroGPU Space, where CUDA is emulated until a GPU call runs."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


# bf16 on a GPU only where fused attention kernels take it: compute capability 8.0 (Ampere) and
# up. ``torch.cuda.is_bf16_supported()`` says yes on a T4 (sm75) too, by emulation: attention
# falls back to the math path (out of memory at 1024 px) and bf16 matmuls are slow. fp16 would
# run, but that it keeps the scores cannot be shown without the real weights: fp32 there.
MIN_BF16_CAPABILITY = (8, 0)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware runs it natively (as the authors run on GPU), else fp32."""
    if device.type == "cuda":
        if on_zero_gpu():  # ZeroGPU hands out H200 slices; don't query emulated CUDA
            return torch.bfloat16
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.bfloat16 if torch.cuda.get_device_capability(index) >= MIN_BF16_CAPABILITY else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


_DTYPE_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
_DTYPE_NAMES |= {"fp16": torch.float16, "float16": torch.float16, INT8: INT8_DTYPE}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPE_NAMES[dtype.lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; use bf16, fp16, fp32 or int8 (CPU only).") from None


# Padding allowed per real token when images of different sizes share a forward pass. On a CPU
# batching gains little, so only equal token counts share one (docs/MODEL.md). On a GPU, fewer,
# larger passes keep it busy; a quarter of extra work is the bound (not yet measured there).
# Padding needs a mask, which rules flash attention out: ``plan_batches`` groups equal counts first.
DEFAULT_MAX_PADDING = {"cpu": 0.0, "cuda": 0.25}

# Images per model call for batches: 16 x ~1 MP (the 1024 px cap) is ~0.5-1 s of GPU work and
# asks ZeroGPU for 5 s (32 asked for 8 s): a smaller request keeps its place in the queue, and a
# visitor low on quota is refused later, if at all. 16 is also the GPU batch (one forward pass
# per chunk of same-size images); smaller chunks spend more of each call on scheduling.
IMAGES_PER_GPU_CALL = 16

Work = TypeVar("Work", bound=Callable[..., object])


def gpu_cost(cost: float) -> Callable[[Work], Work]:
    """Declares a work function's GPU time relative to a forward pass over the same pixels
    (``tagger.web.runtime`` sizes ZeroGPU requests with it; undeclared work costs 1.0)."""

    def declare(fn: Work) -> Work:
        fn.__dict__["gpu_cost"] = cost  # a function attribute, read with getattr(fn, "gpu_cost", 1.0)
        return fn

    return declare


@dataclass(frozen=True)
class Batch:
    """One forward pass: its images (input indices) and the token positions it computes."""

    indices: list[int]
    tokens: int  # real tokens (prefix + patches) of its images
    padded_tokens: int  # images × the longest sequence: what the model computes

    @property
    def masked(self) -> bool:
        """Whether the pass pads some image, hence needs an attention mask (no flash attention)."""
        return self.padded_tokens > self.tokens


def plan_batches(lengths: Sequence[int], max_batch_size: int, max_padding: float) -> list[Batch]:
    """Group images with token counts ``lengths`` into forward passes, by increasing token count.
    Images of equal token count (shapes may differ: a 3:4 and a 4:3 photo) fill batches of
    ``max_batch_size``, which need no mask. When padding is allowed, a run shorter than half a batch
    is pooled, shortest first, into batches of at most ``max_batch_size`` images that compute at most
    ``(1 + max_padding)`` times their real tokens (waste: ``sum(padded_tokens) / sum(tokens) - 1``)."""
    by_length: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        by_length.setdefault(lengths[i], []).append(i)
    groups: list[list[int]] = []
    pooled: list[int] = []
    for same in by_length.values():
        for start in range(0, len(same), max_batch_size):
            part = same[start : start + max_batch_size]
            if max_padding > 0 and 2 * len(part) < max_batch_size:
                pooled.extend(part)
            else:
                groups.append(part)
    padded: list[list[int]] = []
    for i in pooled:  # already shortest first
        group = padded[-1] if padded else []
        real = sum(lengths[j] for j in group) + lengths[i]
        if group and len(group) < max_batch_size and (len(group) + 1) * lengths[i] <= (1 + max_padding) * real:
            group.append(i)
        else:
            padded.append([i])
    groups = sorted(groups + padded, key=lambda g: (lengths[g[-1]], g[0]))
    return [Batch(g, sum(lengths[j] for j in g), len(g) * lengths[g[-1]]) for g in groups]


class Tagger:
    """DINOv3 tagger: ``Tagger(checkpoint, vocab).predict("image.jpg", topk=30)``. ``device`` "auto":
    CUDA when available. ``dtype`` defaults to bf16 where the hardware runs it natively
    (``default_dtype``), else fp32; the head always computes in fp32 (stored so on GPU; on CPU in the
    file's dtype, to save memory: widening bf16 to fp32 is exact). ``run`` batches images of any sizes
    (``plan``, ``DEFAULT_MAX_PADDING``); a padded image's scores equal its scores alone. ``dtype="int8"``
    (CPU only, opt-in): int8 backbone Linears, less memory, scores measurably different
    (``tagger.engine.cpu``, the README's Performance section)."""

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        vocab_path: str | os.PathLike | Vocabulary,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        max_size: int = 1024,
        max_batch_size: int | None = None,
        rope_coord_scale: float | None = None,
        max_padding: float | None = None,
        reduced_decode: bool = False,
    ):
        started = time.perf_counter()
        self.vocab = vocab_path if isinstance(vocab_path, Vocabulary) else Vocabulary.load(vocab_path)
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype) or default_dtype(self.device)
        if self.dtype == INT8_DTYPE:
            if self.device.type != "cpu":
                raise ValueError("The int8 precision runs on the CPU only; use --device cpu, or bf16 on a GPU.")
            int8_engine()  # a clear error now rather than after loading
        if max_size < 16:
            raise ValueError(f"max_size must be at least 16 pixels, not {max_size}.")
        self.max_size = max_size
        # Huge images decoded at a reduced scale: cheaper, not bit-identical (``load_image``).
        self.reduced_decode = reduced_decode
        self.max_batch_size = max_batch_size or (IMAGES_PER_GPU_CALL if self.device.type == "cuda" else 4)
        self.max_padding = DEFAULT_MAX_PADDING.get(self.device.type, 0.0) if max_padding is None else max_padding
        self.checkpoint_path = Path(checkpoint_path)
        # ZeroGPU documents module-level `.to("cuda")` on a CPU model (the transfer is
        # deferred); elsewhere tensors go straight to their device while loading.
        load_device = torch.device("cpu") if on_zero_gpu() else self.device
        self.model: TaggerModel = load_model(
            checkpoint_path,
            device=load_device,
            dtype=INT8_LOAD_DTYPE if self.dtype == INT8_DTYPE else self.dtype,
            head_dtype=torch.float32 if self.device.type != "cpu" else None,
            expected_num_tags=len(self.vocab),
            rope_coord_scale=rope_coord_scale,
        ).to(self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
            if self.dtype == INT8_DTYPE:
                quantize_linears(self.model)
        self.load_seconds = time.perf_counter() - started
        log.info(
            "Loaded %s (%d tags) on %s in %s in %.1f s",
            self.checkpoint_path.name,
            len(self.vocab),
            self.device,
            str(self.dtype).removeprefix("torch."),
            self.load_seconds,
        )

    # -- stages -------------------------------------------------------------------------
    def prepare(self, image: ImageSource, max_size: int | None = None, *, name: str | None = None) -> torch.Tensor:
        """Decode and resize one image on the CPU → uint8 ``[3, H, W]`` (normalised in ``run``), its
        long edge at most ``max_size`` (default: the Tagger's). ``name``: what errors call it."""
        return replace(self.preprocessor, max_size=self.max_size if max_size is None else max_size)(image, name)

    @property
    def preprocessor(self) -> Preprocessor:
        """``prepare`` without the model (picklable: for decoding processes and Ray tasks)."""
        return Preprocessor(self.max_size, self.model.config.patch_size, self.reduced_decode)

    def plan(self, pixels: Sequence[torch.Tensor]) -> list[Batch]:
        """The forward passes ``run`` makes for these images (see ``plan_batches``)."""
        prefix, p = self.model.config.num_prefix_tokens, self.model.config.patch_size
        lengths = [prefix + (image.shape[-2] // p) * (image.shape[-1] // p) for image in pixels]
        return plan_batches(lengths, self.max_batch_size, self.max_padding)

    def batches(self, pixels: Sequence[torch.Tensor]) -> Iterator[tuple[list[int], Pixels]]:
        """``(indices, images)`` per forward pass of ``plan``, normalised on the model's device,
        stacked when they share a size (else a list for the model to pad); callers choose the grad mode."""
        for batch in self.plan(pixels):
            images = [pixels[i] for i in batch.indices]
            if len({image.shape for image in images}) == 1:
                yield batch.indices, normalise(torch.stack(images).to(self.device, non_blocking=True))
            else:
                yield batch.indices, [normalise(image.to(self.device, non_blocking=True)) for image in images]

    def _forward(
        self, pixels: Sequence[torch.Tensor], compute: Callable[[Pixels], torch.Tensor], width: int
    ) -> np.ndarray:
        out = np.zeros((len(pixels), width), dtype=np.float32)
        with torch.inference_mode():
            for idx, images in self.batches(pixels):
                out[idx] = compute(images).float().cpu().numpy()
        return out

    def run(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Probabilities ``[B, num_tags]`` (float32) for prepared images, batched by ``plan``."""
        return self._forward(pixels, lambda images: torch.sigmoid(self.model(images)), len(self.vocab))

    def run_descriptors(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Descriptors ``[B, descriptor_dim]`` (CLS + registers after the final norm, float32)."""
        return self._forward(pixels, self.model.descriptor, self.model.config.descriptor_dim)

    def run_with_descriptors(self, pixels: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """``run`` and ``run_descriptors`` from one forward pass: the same numbers, since the model's
        forward is head(descriptor(x)) with the head in float32 from the float32 descriptor."""
        features = self.run_descriptors(pixels)
        with torch.inference_mode():
            logits = self.model.head(torch.from_numpy(features).to(self.device))
            probabilities = torch.sigmoid(logits).float().cpu().numpy()
        return probabilities, features

    # -- convenience ----------------------------------------------------------------------
    def probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Float32 probability matrix ``[B, num_tags]`` for the images, in input order."""
        return self.run([self.prepare(image) for image in images])

    def descriptors(self, images: Sequence[ImageSource]) -> np.ndarray:
        return self.run_descriptors([self.prepare(image) for image in images])

    def select(self, scores: np.ndarray, topk: int | None = None, threshold: float | None = None) -> list[TagScore]:
        if threshold is None and topk is None:
            topk = 30
        return select_tags(scores, self.vocab, Selection(threshold=threshold or 0.0, topk=topk))

    def predict(
        self, image: ImageSource, topk: int | None = None, threshold: float | None = None
    ) -> list[tuple[str, float]]:
        """``[(tag, score)]`` best first: top 30 by default, or ``topk=N``, or ``threshold=T``
        (both together: at most ``topk`` tags at or above ``threshold``)."""
        return self.predict_batch([image], topk=topk, threshold=threshold)[0]

    def predict_batch(
        self, images: Sequence[ImageSource], topk: int | None = None, threshold: float | None = None
    ) -> list[list[tuple[str, float]]]:
        probs = self.probabilities(images)
        return [[(t.tag, t.score) for t in self.select(row, topk, threshold)] for row in probs]
