"""Where model work runs: ZeroGPU (``spaces.GPU``), a local CUDA GPU, or the CPU.

Only the model call goes through the GPU function, so that a ZeroGPU slice is held as briefly as
possible; what crosses into it is exactly what ``Tagger.prepare`` returned (on ZeroGPU by shared
memory, into a forked worker). Off ZeroGPU the ``spaces`` decorator does nothing.

On ZeroGPU an exception raised inside the GPU function reaches the caller only as a generic
``gr.Error`` ("ZeroGPU worker error") and costs the worker (the next call copies the weights
again). So out-of-memory and our user-facing errors are returned as a ``Failure`` value, which
``ModelRunner.call`` raises again in the calling process: the same sentence everywhere."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch

from tagger.engine.cpu import release_memory
from tagger.engine.tagger import Tagger
from tagger.errors import ModelRunError, TaggerError

try:  # `spaces` is only needed on Hugging Face Spaces; everything works without it.
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

log = logging.getLogger("tagger")
R = TypeVar("R")  # what the model work passed to ModelRunner.call returns

OUT_OF_MEMORY = "The model ran out of memory on this request; try fewer or smaller images."

# -- ZeroGPU durations ----------------------------------------------------------------------
# ZeroGPU refuses a call whose requested duration exceeds the visitor's remaining quota, gives
# shorter requests priority and may abort a call that runs past its duration; the quota is
# charged with the time used. So ask for what the work needs plus a margin (README: On ZeroGPU):
# - GPU_SECONDS_PER_MEGAPIXEL: 2.5x the worst cost measured on an H200 slice (40-60 ms/MP in
#   bf16, by others: we had no GPU), for the quadratic attention share at 1024 px, odd-sized
#   images running one at a time, and a slower slice.
# - GPU_BASE_SECONDS: the call itself: tens of ms warm (inputs by shared memory, the result
#   pickled back); a fresh worker also creates its CUDA context (~0.5 s) and copies the weights
#   (~3.6 GB) to the GPU (~1 s at disk speed). Estimates, not measurements.
# - GPU_FIRST_CALL_SECONDS: added to a fresh worker's first call only (``ModelRunner``): the
#   fork, the CUDA context, the weight copy and loading cuBLAS and the attention kernels.
# - ``gpu_cost``: a work function's cost relative to a forward pass over the same pixels, which
#   it declares itself (``tagger.engine.tagger.gpu_cost``); undeclared work is a forward.
# - spaces reads whole seconds (``timedelta.seconds``), so the sum is rounded up.
GPU_BASE_SECONDS = 2.0
GPU_SECONDS_PER_MEGAPIXEL = 0.15
GPU_FIRST_CALL_SECONDS = 6.0
GPU_MAX_SECONDS = 300  # ZeroGPU refuses longer requests outright ("illegal duration")


def gpu_seconds(pixels: Sequence[torch.Tensor], cost: float = 1.0, fresh_worker: bool = False) -> int:
    """Whole seconds to ask ZeroGPU for work of relative ``cost`` on ``pixels`` (``[3, H, W]``
    each; only their shapes are read), on a warm worker or, with ``fresh_worker``, a new one."""
    megapixels = sum(p.shape[-1] * p.shape[-2] for p in pixels) / 1e6
    seconds = GPU_BASE_SECONDS + GPU_SECONDS_PER_MEGAPIXEL * cost * megapixels
    if fresh_worker:
        seconds += GPU_FIRST_CALL_SECONDS
    return min(GPU_MAX_SECONDS, math.ceil(seconds))


def gpu_duration(fn: Callable[..., object], pixels: Sequence[torch.Tensor], *args: object) -> int:
    """The ``spaces.GPU`` duration of ``ModelRunner``'s GPU function (same arguments) on a warm worker."""
    return gpu_seconds(pixels, getattr(fn, "gpu_cost", 1.0))


# Titles of the errors ``spaces`` raises while scheduling, before any worker is touched: the
# worker that served the last call stays. Any other error discards it.
_SCHEDULING_ERRORS = {
    "ZeroGPU quota exceeded",
    "ZeroGPU illegal duration",
    "ZeroGPU pending credits exceeded",
    "ZeroGPU queue timeout",
    "ZeroGPU client error",
}


@dataclass(frozen=True)
class Failure:
    """What the GPU function returns instead of raising a user-facing error (see module doc)."""

    error: TaggerError
    cause: str  # the original exception's type, for the log


class ModelRunner:
    """Runs model work ``fn(tagger, pixels, *args)`` (usually ``Tagger.run``) in one GPU call per request."""

    def __init__(self, tagger: Tagger):
        self.tagger = tagger
        # Whether the next call may start a new worker: the first one does, and so does the
        # one after a call that failed in the worker (spaces discards it). A Space with more
        # than one GPU may also start a worker on another GPU; this cannot be known beforehand.
        self.fresh_worker = True
        self._gpu_call = self._run if spaces is None else spaces.GPU(duration=self.duration)(self._run)

    def duration(self, fn: Callable[..., object], pixels: Sequence[torch.Tensor], *args: object) -> int:
        """``gpu_duration`` of the next call, plus ``GPU_FIRST_CALL_SECONDS`` when it may start a worker."""
        return gpu_seconds(pixels, getattr(fn, "gpu_cost", 1.0), fresh_worker=self.fresh_worker)

    def _run(self, fn: Callable[..., object], pixels: Sequence[torch.Tensor], *args: object) -> object:
        """The GPU function: on ZeroGPU it runs in the worker process."""
        try:
            return fn(self.tagger, pixels, *args)
        except TaggerError as e:
            return Failure(e, type(e).__name__)
        except (RuntimeError, MemoryError) as e:
            # cuBLAS/cuDNN workspace allocations can fail as a plain RuntimeError.
            if not isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) and "out of memory" not in str(e):
                raise
            cause = type(e).__name__
        # Outside the except block: the exception's traceback no longer holds the frames (and
        # their tensors) alive, so collecting here frees them.
        release_memory()
        return Failure(ModelRunError(OUT_OF_MEMORY), cause)

    def call(self, fn: Callable[..., R], pixels: Sequence[torch.Tensor], *args: object) -> R:
        """``fn(tagger, pixels, *args)`` in one GPU call, ``pixels`` as ``Tagger.prepare`` returned them.
        Out-of-memory becomes a ``ModelRunError`` after the memory is released, so the next request works."""
        try:
            result = self._gpu_call(fn, list(pixels), *args)
        except BaseException as e:
            if getattr(e, "title", None) not in _SCHEDULING_ERRORS:
                self.fresh_worker = True
            raise
        self.fresh_worker = False
        if isinstance(result, Failure):
            if isinstance(result.error, ModelRunError):
                name = getattr(fn, "__qualname__", fn)
                log.warning("Out of memory (%s) in %s on %d image(s)", result.cause, name, len(pixels))
            raise result.error
        return cast(R, result)  # not a Failure, so what fn returned

    def probabilities(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        return self.call(Tagger.run, pixels)

    def descriptors(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        return self.call(Tagger.run_descriptors, pixels)
