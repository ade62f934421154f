"""CPU-only tuning: one policy for the engine's memory, and the opt-in int8 precision.

* **Memory**: what a forward freed is kept for the next (``keep_freed_memory``, applied by
  ``Tagger`` to CPU models; by default each activation above the mmap threshold is a fresh
  ``mmap``, so every forward faults its pages in again: hundreds of thousands of faults per
  512 px image). It goes back to the OS
  (``release_memory``) after an out-of-memory error, and after a request (``MEMORY.after_request``,
  called by the web layer) that grew the process ``RELEASE_AFTER_GROWTH`` since the last release.
* ``quantize_linears`` replaces the backbone's ``nn.Linear`` modules by ``DynamicInt8Linear``
  (int8 weights, activations quantized per token) through the FBGEMM/oneDNN kernels in every
  x86 torch wheel (``torch.ops.quantized``, not the deprecated ``torch.ao.quantization`` API).
  Opt-in: it changes the scores slightly (README: its speed and effect on scores).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import platform
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger("tagger")

# The int8 precision wherever a dtype is chosen (``Tagger(dtype="int8")``, ``--dtype int8``).
# ``torch.qint8`` only names it: activations stay float32, weights become int8.
INT8 = "int8"
INT8_DTYPE = torch.qint8
# The backbone is loaded in this dtype and quantized from it: the file's own bf16 lands in
# place, and no float32 copy of more than one weight is ever made.
INT8_LOAD_DTYPE = torch.bfloat16


# -- Memory ----------------------------------------------------------------------------

# glibc <malloc.h> parameter numbers for mallopt().
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
# Keep up to this much free memory at the top of the heap (mallopt takes an int): releasing is
# ``MemoryPolicy``'s decision.
_TRIM_THRESHOLD_BYTES = 2**31 - 1
# Other threads (Gradio's workers) allocate from 64 MiB heaps that glibc unmaps once empty,
# whatever the trim threshold, unless that much padding is kept: with it, a heap stays.
_TOP_PAD_BYTES = 64 * 1024 * 1024
_ALLOCATOR_LOCK = threading.Lock()
_allocator_tuned: list[bool] = []  # [result] once tried
ENV_DISABLE = "TAGGER_KEEP_FREED_MEMORY"  # "0" leaves malloc's defaults alone


def keep_freed_memory() -> bool:
    """Make glibc malloc serve large blocks from the heap and keep them after ``free``.

    ``M_MMAP_MAX=0``: large blocks are no separate mappings; ``M_TRIM_THRESHOLD``: the main
    heap's top is not handed back; ``M_TOP_PAD`` of a whole thread heap: emptied thread heaps
    are not unmapped (``tests/test_cpu.py`` measures the faults). Process-wide, applied once;
    whether the settings are in effect (False off glibc or when ``TAGGER_KEEP_FREED_MEMORY=0``)."""
    with _ALLOCATOR_LOCK:
        if not _allocator_tuned:
            _allocator_tuned.append(_apply_mallopt())
        return _allocator_tuned[0]


def _apply_mallopt() -> bool:
    if os.environ.get(ENV_DISABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    settings = ((_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES), (_M_TOP_PAD, _TOP_PAD_BYTES), (_M_MMAP_MAX, 0))
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    if ok:
        log.debug("glibc malloc: large blocks from the heap, kept after free")
    return ok


def _libc_function(name: str) -> Any:  # a ctypes function, or None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL("libc.so.6"), name, None)


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> None:
    """Give back now what nothing uses: unreachable objects, the CUDA cache, and the heap that
    ``keep_freed_memory`` keeps (``malloc_trim``; the next forward faults its pages in again)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


# More than one forward keeps (~0.3 GiB at 512 px in fp32), so back-to-back forwards keep theirs.
RELEASE_AFTER_GROWTH = 1024 * 1024 * 1024


class MemoryPolicy:
    """When the memory kept between forwards goes back to the OS (``release``: ``release_memory``)."""

    def __init__(self, growth_bytes: int = RELEASE_AFTER_GROWTH):
        self.growth_bytes = growth_bytes
        self.release: Callable[[], None] = release_memory
        self.lock = threading.Lock()
        self.baseline = rss_bytes()

    def after_request(self) -> None:
        """Release memory if the process grew ``growth_bytes`` since the last release."""
        rss = rss_bytes()
        if rss is None or self.baseline is None or rss - self.baseline < self.growth_bytes:
            return
        with self.lock:
            self.release()
            self.baseline = rss_bytes()


MEMORY = MemoryPolicy()  # the process's one policy (the allocator is process-wide too)


# -- int8 ------------------------------------------------------------------------------

# Quantized engines that provide x86 int8 GEMM kernels, best first (measured in the README).
_X86_ENGINES = ("x86", "fbgemm", "onednn")


def int8_engine() -> str:
    """The quantized engine ``quantize_linears`` uses, or ``ValueError``: one small quantized Linear
    is run, so a torch build or CPU without the kernels fails here, not in the middle of a request."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise ValueError(f"The int8 precision needs an x86-64 CPU (this one is {platform.machine()}); use fp32.")
    probe: Callable[[], bool] | None = getattr(torch.cpu, "_is_avx2_supported", None)
    # Older torch has no probe: trust the build's own dispatch level.
    if not (probe() if probe is not None else torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        raise ValueError("The int8 precision needs a CPU with AVX2; use fp32.")
    layer = nn.Linear(8, 4)
    for engine in [e for e in _X86_ENGINES if e in torch.backends.quantized.supported_engines]:
        try:
            packed = _pack(layer.weight.detach(), layer.bias.detach(), engine)
            out = torch.ops.quantized.linear_dynamic(torch.randn(2, 8), packed, True)
        except (RuntimeError, AttributeError, NotImplementedError):
            continue
        if out.shape == (2, 4) and torch.isfinite(out).all():
            return engine
    raise ValueError(
        f"This torch build ({torch.__version__}) has no working x86 int8 kernels (FBGEMM or oneDNN); use fp32."
    )


def _pack(weight: torch.Tensor, bias: torch.Tensor | None, engine: str) -> torch.ScriptObject:
    """Symmetric per-output-channel int8 weights, packed for ``engine``'s kernels."""
    weight = weight.float()
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 warns that quantized dtypes will go (pytorch#184982); the packed weight
        # is the only one made, and ``int8_engine`` turns their absence into a clear error.
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation", category=UserWarning)
        qweight = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine  # prepack picks the kernel family from the engine
    try:
        return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.float().contiguous())
    finally:
        torch.backends.quantized.engine = previous


class DynamicInt8Linear(nn.Module):
    """Inference stand-in for an ``nn.Linear``: int8 weights, float32 in and out.

    Weights: symmetric int8, one scale per output channel (the float weight is not kept).
    Inputs: quantized on each call to 7-bit unsigned integers (``reduce_range``: AVX2 without
    VNNI multiplies u8 × s8 pairs into saturating 16-bit sums, which 8-bit inputs can overflow).
    Every token (row) gets its own input scale, though the kernels take one per tensor: each row
    is divided by its largest magnitude and the output row multiplied back (exact: the layer is
    linear), then the bias added. ViTs carry a few tokens (in DINO, the register and CLS tokens)
    orders of magnitude above the rest, which would otherwise set the step for every token
    (cost: three extra passes over inputs and outputs).
    Gradients flow to the input (relevance maps need them) through the dequantized weight,
    rebuilt for the backward pass and dropped again; parameters get none.
    """

    bias: torch.Tensor | None  # a buffer: the bias is added after rescaling, so the kernel must not add it

    def __init__(self, linear: nn.Linear, engine: str):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.engine = engine
        self._packed = _pack(linear.weight.detach(), None, engine)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float(), persistent=False)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, bias={self.bias is not None}, int8 (per token)"

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this layer multiplies by (after int8 rounding)."""
        qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"DynamicInt8Linear takes float32 inputs, not {x.dtype}.")
        if torch.is_grad_enabled() and x.requires_grad:
            return _Int8LinearFunction.apply(x, self)
        return self._int8_linear(x)

    def _int8_linear(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_min_(1e-30)
        out = torch.ops.quantized.linear_dynamic(x / scale, self._packed, True)
        return out.mul_(scale) if self.bias is None else torch.addcmul(self.bias, out, scale, out=out)


class _Int8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: DynamicInt8Linear) -> torch.Tensor:
        ctx.layer = layer
        return layer._int8_linear(x.detach())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ ctx.layer.dequantized_weight().to(grad.dtype), None


def quantize_linears(model: nn.Module, skip: tuple[str, ...] = ("head",)) -> int:
    """Replace every ``nn.Linear`` outside the ``skip`` prefixes (the head, left as it is) by a
    ``DynamicInt8Linear``, one at a time (from bf16 weights no float32 copy of more than one is
    held), and make every other float tensor outside ``skip`` float32; returns how many."""
    engine = int8_engine()
    skipped = tuple(p + "." for p in skip)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not (name + ".").startswith(skipped)
    ]
    with torch.no_grad():
        for name, linear in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, DynamicInt8Linear(linear, engine))
            linear.register_parameter("weight", None)  # free the float weight now
            linear.register_parameter("bias", None)
        for module_name, module in model.named_modules():
            if (module_name + ".").startswith(skipped):
                continue
            for tensors in (module._parameters, module._buffers):
                for key, tensor in tensors.items():
                    if tensor is not None and tensor.is_floating_point() and tensor.dtype != torch.float32:
                        if isinstance(tensor, nn.Parameter):
                            tensors[key] = nn.Parameter(tensor.float(), requires_grad=False)
                        else:
                            tensors[key] = tensor.float()
    log.info("int8: %d Linear layers quantized (%s kernels)", len(targets), engine)
    return len(targets)
