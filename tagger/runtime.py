"""Where model work runs: ZeroGPU (``spaces.GPU``), a local CUDA GPU, or the CPU.

Only the model call goes through the GPU function; decoding, filtering and formatting stay
outside it so that a ZeroGPU slice is held for as short a time as possible. Off ZeroGPU the
``spaces`` decorator does nothing and the call runs wherever the model lives.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from tagger.errors import ModelRunError
from tagger.predict import Tagger

try:  # `spaces` is only needed on Hugging Face Spaces; everything works without it.
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

log = logging.getLogger("tagger")


def gpu_seconds(pixels: Sequence[torch.Tensor], seconds_per_megapixel: float = 0.5, base: float = 5.0) -> int:
    """A ZeroGPU duration sized from the work: shorter requests get better queue priority."""
    megapixels = sum(p.shape[-1] * p.shape[-2] for p in pixels) / 1e6
    return int(min(300, base + seconds_per_megapixel * megapixels * 4))


def _duration(fn: Callable[..., object], pixels: Sequence[torch.Tensor], *args: object) -> int:
    # A function may declare its cost relative to a forward pass (a backward pass costs ~2x).
    return int(gpu_seconds(pixels) * getattr(fn, "gpu_cost", 1.0))


class ModelRunner:
    """Runs model work on pre-processed pixels inside one GPU call per request.

    Work is a function ``fn(tagger, pixels, *args)``; ``Tagger.run`` is the usual one.
    """

    def __init__(self, tagger: Tagger):
        self.tagger = tagger
        self._gpu_call: Callable[..., object] = self._call
        if spaces is not None:
            self._gpu_call = spaces.GPU(duration=_duration)(self._call)

    def _call(self, fn: Callable[..., object], pixels: Sequence[torch.Tensor], *args: object) -> object:
        return fn(self.tagger, pixels, *args)

    def call(self, fn: Callable[..., object], pixels: Sequence[torch.Tensor], *args: object) -> object:
        """``fn(tagger, pixels, *args)`` on the model's device; out-of-memory becomes a
        ``ModelRunError`` after the memory is released, so the next request works."""
        try:
            return self._gpu_call(fn, list(pixels), *args)
        except (torch.cuda.OutOfMemoryError, MemoryError):
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("Out of memory in %s on %d image(s)", getattr(fn, "__name__", fn), len(pixels))
            raise ModelRunError("The model ran out of memory on this request; try fewer or smaller images.") from None

    def probabilities(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        return self.call(Tagger.run, pixels)  # type: ignore[return-value]

    def descriptors(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        return self.call(Tagger.run_descriptors, pixels)  # type: ignore[return-value]
