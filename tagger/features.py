"""What the backbone sees: PCA false colour of patch features, per-tag relevance maps, and
descriptor similarity of images (one pair, or a zip of pairs).

Model work is done by functions of ``(tagger, pixels, ...)`` so that ``ModelRunner.call``
can run each request inside one GPU call; everything else (colours, overlays, pairing,
summaries) is plain numpy / Pillow on the CPU and shared by the UI and the API. Zips are
read with ``tagger.batch.collect_inputs``, the same guarded reader as batch tagging.
"""

from __future__ import annotations

import lzma
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import torch
from PIL import Image

from tagger.batch import BatchInputs, BatchItem, BatchLimits, collect_inputs, wrapper_depth
from tagger.model import TaggerModel
from tagger.predict import Tagger
from tagger.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageError
from tagger.vocab import Vocabulary

__all__ = [
    "DEFAULT_COLOURS",
    "DEFAULT_LAYERS_FROM_END",
    "BatchSimilarity",
    "FeatureError",
    "FeatureMaps",
    "Relevance",
    "ZipPairs",
    "analyse",
    "batch_similarity",
    "color_blend",
    "colormap",
    "cosine_similarity",
    "pair_inputs",
    "parse_colour",
    "patch_features",
    "pca_components",
    "pca_rgb",
    "pixels_to_image",
    "relevance",
    "resolve_tag",
    "tag_logits",
    "tap_block",
    "upscale",
]


class FeatureError(ValueError):
    """A request these views cannot serve (bad colour, unknown tag, zip without two folders);
    the message is a sentence for people."""


DEFAULT_COLOURS: tuple[str, str, str] = ("#ff4d4d", "#4dff88", "#4d79ff")
RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}

# -------------------------------------------------------------------------------------------
# Pixels, colours, resizing


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def pixels_to_image(pixels: torch.Tensor) -> np.ndarray:
    """Normalised ``[3, H, W]`` pixels back to the uint8 RGB image the model saw ``[H, W, 3]``."""
    array = pixels.detach().float().cpu().numpy().transpose(1, 2, 0)
    # Inverse of (x / 255 - mean) / std; rounding recovers the resized uint8 image exactly.
    return np.clip(np.rint((array * _STD + _MEAN) * 255.0), 0, 255).astype(np.uint8)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → uint8 (clipped)."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def upscale(grid: np.ndarray, size: tuple[int, int], resample: str = "nearest") -> np.ndarray:
    """A patch map ``[h, w]`` or ``[h, w, k]`` (float) resized to ``size = (width, height)``.

    Each channel goes through Pillow as a 32-bit float image, so no precision is lost to uint8.
    """
    if resample not in RESAMPLING:
        raise FeatureError(f"Unknown upscaling {resample!r}; use one of: {', '.join(RESAMPLING)}.")
    grid = np.asarray(grid, dtype=np.float32)
    channels = grid[..., None] if grid.ndim == 2 else grid
    resized = [
        np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., i]), mode="F").resize(size, RESAMPLING[resample]))
        for i in range(channels.shape[-1])
    ]
    out = np.stack(resized, axis=-1)
    return out[..., 0] if grid.ndim == 2 else out


_HEX_COLOUR = re.compile(r"#?([0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})", re.IGNORECASE)
_RGB_COLOUR = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+%?\s*)?\)", re.IGNORECASE)


def parse_colour(value: str | Sequence[float]) -> np.ndarray:
    """``"#rrggbb"``, ``"#rgb"``, ``"#rrggbbaa"``, ``"rgb(r, g, b)"`` / ``"rgba(...)"`` (0-255, as
    colour pickers send them) or three 0-255 numbers → float32 RGB in [0, 1]; alpha is ignored."""
    if isinstance(value, str):
        text = value.strip()
        if match := _HEX_COLOUR.fullmatch(text):
            digits = match.group(1)
            if len(digits) == 3:
                digits = "".join(d * 2 for d in digits)
            rgb = [int(digits[i : i + 2], 16) for i in (0, 2, 4)]
        elif match := _RGB_COLOUR.fullmatch(text):
            rgb = [float(g) for g in match.groups()]
        else:
            raise FeatureError(f"{value!r} is not a colour; use #rrggbb (e.g. #ff8800) or rgb(255, 136, 0).")
    else:
        rgb = [float(v) for v in value]
        if len(rgb) != 3:
            raise FeatureError(f"A colour needs three values (red, green, blue), not {len(rgb)}.")
    array = np.asarray(rgb, dtype=np.float32)
    if not np.all((array >= 0) & (array <= 255)):
        raise FeatureError(f"Colour values must lie between 0 and 255: {value!r}.")
    return array / 255.0


def check_alpha(alpha: float) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise FeatureError(f"alpha must be a number between 0 and 1, not {alpha!r}.") from None
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise FeatureError(f"alpha must be between 0 and 1, not {alpha}.")
    return alpha


def alpha_blend(image: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) · image + alpha · overlay`` for uint8 RGB images of the same size."""
    alpha = check_alpha(alpha)
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * overlay.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------
# PCA of the patch features


def patch_features(tagger: Tagger, pixels: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Final-norm patch tokens of each image as float32 ``[h, w, C]`` (same-size images batched)."""
    out: list[np.ndarray] = [np.empty(0)] * len(pixels)
    with torch.inference_mode():
        for idx, batch in tagger.batches(pixels):
            grid = tagger.model.patch_grid(batch).float().cpu().numpy()
            for row, i in zip(grid, idx, strict=True):
                out[i] = row
    return out


def _top_right_vectors(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` leading right singular vectors ``[k, C]`` of ``x`` ``[N, C]``.

    An exact SVD on a GPU or for small matrices. A 1024-pixel image on a CPU (4096 × 1280)
    would take many seconds that way, so there a randomised range finder with power
    iterations from a fixed seed is used instead (like ``torch.pca_lowrank``, but seeded,
    hence deterministic, and with more iterations for closely spaced components).
    """
    n, c = x.shape
    if x.is_cuda or min(n, c) <= 256:
        return torch.linalg.svd(x, full_matrices=False).Vh[:k]
    width = min(k + 10, n, c)
    generator = torch.Generator().manual_seed(0)
    y = x @ torch.randn(c, width, generator=generator).to(x.device)
    for _ in range(6):
        y = x @ torch.linalg.qr(x.T @ torch.linalg.qr(y).Q).Q
    basis = torch.linalg.qr(y).Q  # [N, width], spans the leading left singular vectors
    return torch.linalg.svd(basis.T @ x, full_matrices=False).Vh[:k]


def pca_components(features: np.ndarray | torch.Tensor, k: int = 3) -> np.ndarray:
    """Scores of the first ``k`` principal components of patch features ``[h, w, C]`` →
    float32 ``[h, w, k]`` (zeros where the data has fewer components).

    The sign of a component is arbitrary in any SVD; each is flipped so that its largest
    absolute loading is positive, so the same features always give the same colours.
    """
    x = torch.as_tensor(features)
    if x.ndim != 3:
        raise ValueError(f"features must be [h, w, C], got shape {tuple(x.shape)}.")
    h, w, c = x.shape
    flat = x.reshape(h * w, c).float()
    flat = flat - flat.mean(dim=0, keepdim=True)
    scores = torch.zeros(h * w, k, device=flat.device)
    usable = min(k, h * w, c)
    if usable and torch.any(flat != 0):
        v = _top_right_vectors(flat, usable)
        sign = torch.sign(v.gather(1, v.abs().argmax(dim=1, keepdim=True)))
        v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
        scores[:, :usable] = flat @ v.T
    return scores.reshape(h, w, k).cpu().numpy()


def minmax(values: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Scale to [0, 1] over ``axis``; a constant slice becomes 0."""
    low = values.min(axis=axis, keepdims=True)
    span = values.max(axis=axis, keepdims=True) - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def pca_rgb(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """False colour of patch features ``[h, w, C]``: components 1-3 → R, G, B, each min-max
    scaled to [0, 1] over the image. Float32 ``[h, w, 3]``."""
    return minmax(pca_components(features, 3), axis=(0, 1))


def color_blend(components: np.ndarray, colours: Sequence[str | Sequence[float]]) -> np.ndarray:
    """Mix one colour per component: ``Σ_i component_i · colour_i`` ``[h, w, 3]`` in [0, 1].

    ``components`` are the [0, 1] scores from ``pca_rgb``. Where the weights add up to more
    than 1 the mix is divided by their sum, so bright colours never clip to white and a
    pixel carried by one component shows exactly that component's colour.
    """
    components = np.asarray(components, dtype=np.float32)
    if components.ndim != 3 or components.shape[-1] != len(colours):
        raise FeatureError(f"Need one colour per component: {components.shape[-1]} components, {len(colours)} colours.")
    palette = np.stack([parse_colour(c) for c in colours])  # [k, 3]
    mixed = components @ palette
    total = components.sum(axis=-1, keepdims=True)
    return (mixed / np.maximum(total, 1.0)).astype(np.float32)


@dataclass
class FeatureMaps:
    """One image's analysis: what the model saw, its PCA colours and its tag probabilities."""

    image: np.ndarray  # uint8 [H, W, 3], the preprocessed image
    pca: np.ndarray  # float32 [H/16, W/16, 3] in [0, 1]
    probabilities: np.ndarray  # float32 [num_tags]


def analyse(tagger: Tagger, pixels: Sequence[torch.Tensor]) -> list[FeatureMaps]:
    """PCA colours and tag probabilities from ONE forward pass per size group: both come from
    the same final-norm tokens (patches → PCA, CLS + registers → head). The PCA runs where the
    model runs, so on a GPU the SVD costs milliseconds."""
    model = tagger.model
    prefix = model.config.num_prefix_tokens
    out: list[FeatureMaps | None] = [None] * len(pixels)
    with torch.inference_mode():
        for idx, batch in tagger.batches(pixels):
            tokens = model.tokens(batch)
            probabilities = torch.sigmoid(model.head(model.descriptor_from_tokens(tokens))).float().cpu().numpy()
            h, w = (s // model.config.patch_size for s in batch.shape[-2:])
            grids = tokens[:, prefix:].reshape(len(idx), h, w, -1)
            for row, i in enumerate(idx):
                out[i] = FeatureMaps(pixels_to_image(pixels[i]), pca_rgb(grids[row]), probabilities[row])
    return out  # type: ignore[return-value]


# -------------------------------------------------------------------------------------------
# Per-tag relevance

# Relevance is taken at the input of this many blocks from the end (block 28 of 32 for the
# real model). Not the last block: every path from the last block's input to the head goes
# through that block's norm1 (the patch's own output is never read by the head), and
# LayerNorm is invariant to scaling its input, so Σ_c grad_c · x_c there is exactly zero up
# to eps. Four blocks back the tokens are already semantic and still tied to their patch,
# and the prefix tokens have read from the patches in four attention layers.
DEFAULT_LAYERS_FROM_END = 4


def tap_block(num_layers: int, layers_from_end: int = DEFAULT_LAYERS_FROM_END) -> int:
    """Index of the block whose input the relevance is taken at."""
    if isinstance(layers_from_end, float) and layers_from_end.is_integer():
        layers_from_end = int(layers_from_end)
    if not isinstance(layers_from_end, int) or isinstance(layers_from_end, bool):
        raise FeatureError(f"layers_from_end must be a whole number, not {layers_from_end!r}.")
    low = min(2, num_layers)
    if not low <= layers_from_end <= num_layers:
        raise FeatureError(
            f"layers_from_end must be between {low} and {num_layers} (the last block's input carries no "
            f"relevance), not {layers_from_end}."
        )
    return num_layers - layers_from_end


def tag_logits(model: TaggerModel, descriptor: torch.Tensor, tag_index: int) -> torch.Tensor:
    """The head's logit ``[B]`` for one tag, in float32, without computing all 74,625 logits."""
    x = descriptor.float()
    layers = list(model.head.layers)
    for layer in layers[:-1]:  # the low-rank head's first projection
        bias = None if layer.bias is None else layer.bias.float()
        x = torch.nn.functional.linear(x, layer.weight.float(), bias)
    last = layers[-1]
    logit = x @ last.weight[tag_index].float()
    return logit if last.bias is None else logit + last.bias[tag_index].float()


@dataclass
class Relevance:
    """One image's relevance map for a tag, and the tag's probability on that image."""

    map: np.ndarray  # float32 [H/16, W/16] in [0, 1]
    probability: float


def relevance(
    tagger: Tagger,
    pixels: Sequence[torch.Tensor],
    tag_index: int,
    layers_from_end: int = DEFAULT_LAYERS_FROM_END,
) -> list[Relevance]:
    """Where each image's evidence for a tag sits, and the tag's probability.

    Gradient × activation of the tag's logit on the patch tokens at the input of a late block
    (see ``DEFAULT_LAYERS_FROM_END``), summed over channels, ReLU, divided by the maximum. The
    tap detaches the activation and makes it the only tensor that needs a gradient, and
    ``autograd.grad`` returns that gradient without touching any parameter's ``.grad``.
    """
    model = tagger.model
    config = model.config
    if not 0 <= int(tag_index) < config.num_tags:
        raise FeatureError(f"Tag index {tag_index} is out of range; the model has {config.num_tags} tags.")
    block = tap_block(config.num_layers, layers_from_end)
    prefix = config.num_prefix_tokens
    out: list[Relevance | None] = [None] * len(pixels)
    # The rest of the app runs under inference_mode, which forbids autograd: leave it here.
    with torch.inference_mode(False), torch.enable_grad():
        for idx, batch in tagger.batches(pixels):
            captured: list[torch.Tensor] = []

            def tap(x: torch.Tensor, captured: list[torch.Tensor] = captured) -> torch.Tensor:
                x = x.detach().requires_grad_(True)
                captured.append(x)
                return x

            tokens = model.tokens(batch, tap_block=block, tap=tap)
            logits = tag_logits(model, model.descriptor_from_tokens(tokens), int(tag_index))
            # Images in a batch are independent, so the gradient of the sum is each image's own.
            (grad,) = torch.autograd.grad(logits.sum(), captured[0])
            activation = captured[0].detach()
            scores = (grad[:, prefix:].float() * activation[:, prefix:].float()).sum(dim=-1).clamp_min(0)
            h, w = (s // config.patch_size for s in batch.shape[-2:])
            scores = scores.reshape(len(idx), h, w)
            peak = scores.amax(dim=(1, 2), keepdim=True)
            scores = torch.where(peak > 0, scores / peak.clamp_min(1e-30), torch.zeros_like(scores))
            probabilities = torch.sigmoid(logits.detach()).cpu().tolist()
            for row, probability, i in zip(scores.cpu().numpy(), probabilities, idx, strict=True):
                out[i] = Relevance(row.astype(np.float32), float(probability))
            del tokens, logits, grad, activation, captured
    return out  # type: ignore[return-value]


# A backward pass through the late blocks comes on top of the forward: ~3x a plain forward.
relevance.gpu_cost = 3.0  # type: ignore[attr-defined]


def resolve_tag(vocab: Vocabulary, name: str | None) -> int:
    """The output index of a tag typed by a person (any case, ``_`` or space, escaped or not)."""
    if name is None or not str(name).strip():
        raise FeatureError("Choose a tag first: pick one of this image's top tags or type any tag.")
    found = vocab.find(str(name))
    if not found:
        raise FeatureError(
            f"Unknown tag {str(name).strip()!r}: it is not one of the model's {len(vocab):,} tags. "
            "Check the spelling, or search for it under 'Look up any tag' in the Tag tab."
        )
    return found[0]


# A 5-stop approximation of matplotlib's "inferno": black → purple → red → orange → pale yellow.
_INFERNO_STOPS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    dtype=np.float32,
)
_LUT = np.stack(
    [
        np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_INFERNO_STOPS)), _INFERNO_STOPS[:, ch])
        for ch in range(3)
    ],
    axis=-1,
)
COLORMAP_LUT: np.ndarray = np.rint(_LUT).astype(np.uint8)  # [256, 3]


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) → uint8 RGB ``[..., 3]`` through the inferno-like LUT."""
    index = np.rint(np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0, 1) * 255).astype(np.intp)
    return COLORMAP_LUT[index]


def heatmap_images(
    image: np.ndarray, relevance: np.ndarray, alpha: float = 0.5, resample: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray]:
    """(heatmap over the image, heatmap alone), uint8 at the image's size."""
    heat = colormap(upscale(relevance, (image.shape[1], image.shape[0]), resample))
    return alpha_blend(image, heat, alpha), heat


def pca_images(
    maps: FeatureMaps,
    colours: Sequence[str | Sequence[float]] = DEFAULT_COLOURS,
    alpha: float = 0.5,
    resample: str = "nearest",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PCA map, PCA map over the image, colour blend), uint8 at the image's size."""
    size = (maps.image.shape[1], maps.image.shape[0])
    pca = to_uint8(upscale(maps.pca, size, resample))
    blend = to_uint8(upscale(color_blend(maps.pca, colours), size, resample))
    return pca, alpha_blend(maps.image, pca, alpha), blend


# -------------------------------------------------------------------------------------------
# Similarity


def cosine_similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Cosine similarity of two descriptors (L2-normalised in float64 first)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"Descriptors differ in size: {x.size} and {y.size}.")
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return 0.0
    return float(np.clip(np.dot(x / nx, y / ny), -1.0, 1.0))


@dataclass
class ZipPairs:
    """A zip's images split into its two top-level folders and paired by stem (the path
    inside the folder without its extension: ``a/x/cat.png`` pairs with ``b/x/cat.jpg``)."""

    folders: tuple[str, str]
    pairs: list[tuple[str, BatchItem, BatchItem]]  # (stem, image in A, image in B)
    unmatched: list[str]  # images with no partner (or a second file with the same stem)
    ignored: list[str]  # not images, hidden files, or not inside either folder


def _is_hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def pair_inputs(inputs: BatchInputs) -> ZipPairs:
    """Pair the images of a zip read by ``tagger.batch.collect_inputs`` (which already refused
    unsafe paths, links and zip bombs, and skipped ``__MACOSX`` and dotfiles). A single
    wrapping folder (``pairs/a``, ``pairs/b``: a zip made from the parent folder) is looked
    through. ``FeatureError`` unless exactly two folders hold images."""
    depth = wrapper_depth([item.name for item in inputs.items])
    files = [(PurePosixPath(*PurePosixPath(item.name).parts[depth:]), item) for item in inputs.items]
    # collect_inputs lists resource forks and dotfiles among its skipped names; they are noise here.
    ignored = [n for n in inputs.skipped if not (n.startswith("__MACOSX/") or _is_hidden(n))]
    folders: dict[str, dict[str, list[BatchItem]]] = {}
    for path, item in files:
        if len(path.parts) < 2:  # a file beside the folders
            ignored.append(item.name)
            continue
        stem = str(PurePosixPath(*path.parts[1:]).with_suffix(""))
        folders.setdefault(path.parts[0], {}).setdefault(stem, []).append(item)
    if len(folders) != 2:
        found = ", ".join(sorted(folders)) or "none"
        raise FeatureError(
            f"The zip must hold exactly two top-level folders of images to pair by file name; found: {found}."
        )
    name_a, name_b = sorted(folders)
    a, b = folders[name_a], folders[name_b]
    pairs: list[tuple[str, BatchItem, BatchItem]] = []
    unmatched: list[str] = []
    for stem in sorted(set(a) | set(b)):
        in_a = sorted(a.get(stem, []), key=lambda i: i.name)
        in_b = sorted(b.get(stem, []), key=lambda i: i.name)
        if in_a and in_b:
            pairs.append((stem, in_a[0], in_b[0]))
            in_a, in_b = in_a[1:], in_b[1:]  # a second x.png / x.jpg in one folder has no partner
        unmatched.extend(i.name for i in in_a + in_b)
    return ZipPairs((name_a, name_b), pairs, unmatched, ignored)


@dataclass
class BatchSimilarity:
    """Per-pair scores of a zip of two folders, with what could not be scored."""

    folders: tuple[str, str]
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)  # (stem, file A, file B, similarity)
    unmatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message)

    def stats(self) -> dict:
        scores = [r[3] for r in self.rows]
        if not scores:
            return {"pairs": 0, "mean": None, "min": None, "max": None}
        return {
            "pairs": len(scores),
            "mean": round(float(np.mean(scores)), 6),
            "min": round(min(scores), 6),
            "max": round(max(scores), 6),
        }

    def to_json(self) -> dict:
        return {
            "folders": list(self.folders),
            "pairs": [{"stem": s, "a": a, "b": b, "similarity": round(v, 6)} for s, a, b, v in self.rows],
            "summary": self.stats(),
            "unmatched": self.unmatched,
            "ignored": self.ignored,
            "errors": [{"file": f, "error": e} for f, e in self.errors],
        }

    def summary_markdown(self, limit: int = 50) -> str:
        s = self.stats()
        a, b = self.folders
        if s["pairs"]:
            line = (
                f"**{s['pairs']} pairs** (`{a}` ↔ `{b}`) · mean **{s['mean']:.4f}** · "
                f"min {s['min']:.4f} · max {s['max']:.4f}"
            )
        else:
            line = f"**No pair could be scored** (`{a}` ↔ `{b}`)."
        parts = [line]
        for title, items in (
            ("Unmatched files", self.unmatched),
            ("Errors", [f"{f}: {e}" for f, e in self.errors]),
            ("Ignored (not images or outside the folders)", self.ignored),
        ):
            if items:
                shown = "\n".join(f"- `{x}`" for x in items[:limit])
                more = f"\n- … and {len(items) - limit} more" if len(items) > limit else ""
                parts.append(f"{title} ({len(items)}):\n{shown}{more}")
        return "\n\n".join(parts)


PAIRS_PER_CALL = 16  # pairs decoded and sent to the model together: bounds memory per GPU call


def batch_similarity(
    path: str | os.PathLike,
    prepare: Callable[[bytes], torch.Tensor],
    descriptors: Callable[[list[torch.Tensor]], np.ndarray],
    limits: BatchLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSimilarity:
    """Score every pair of a zip with two folders (see ``pair_inputs``).

    The zip is read with ``tagger.batch.collect_inputs`` and its limits (entries, sizes,
    compression ratio, zip slip; ``BatchError`` refuses the request). ``prepare`` decodes one
    file on the CPU; ``descriptors`` is the model call, one per ``PAIRS_PER_CALL`` pairs (so
    one for small zips). A file that cannot be read is reported and its pair skipped.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise FeatureError("This file is not a zip archive; upload a .zip holding two folders of images.")
    if PurePosixPath(path).suffix.lower() != ".zip":
        raise FeatureError("Please give the archive a .zip file name.")
    with collect_inputs([path], limits) as inputs:
        listing = pair_inputs(inputs)
        result = BatchSimilarity(listing.folders, unmatched=listing.unmatched, ignored=listing.ignored)
        total = len(listing.pairs)
        for start in range(0, total, PAIRS_PER_CALL):
            chunk: list[tuple[str, str, str]] = []
            pixels: list[torch.Tensor] = []
            for stem, item_a, item_b in listing.pairs[start : start + PAIRS_PER_CALL]:
                decoded = []
                for item in (item_a, item_b):
                    try:
                        decoded.append(prepare(inputs.read(item)))
                    except (ImageError, zlib.error, lzma.LZMAError) as e:
                        # Unreadable or corrupt member: this pair is skipped, the others go on.
                        message = str(e).replace("the given data", item.name)
                        result.errors.append((item.name, message or type(e).__name__))
                if len(decoded) == 2:
                    chunk.append((stem, item_a.name, item_b.name))
                    pixels.extend(decoded)
            if pixels:
                vectors = descriptors(pixels)
                for j, (stem, name_a, name_b) in enumerate(chunk):
                    result.rows.append((stem, name_a, name_b, cosine_similarity(vectors[2 * j], vectors[2 * j + 1])))
                del pixels
            if progress is not None:
                progress(min(start + PAIRS_PER_CALL, total), total)
    return result
