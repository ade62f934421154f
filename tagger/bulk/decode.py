"""Decoding in parallel worker processes, so that the model never waits for Pillow.

Each worker reads an image's bytes (``sources.read_bytes``), hashes them, reads its size and
runs ``Tagger.prepare``'s own preprocessing without the model (``Tagger.preprocessor``, a
picklable ``Preprocessor``). ``DecodePool.map`` yields results in input order, a bounded number
in flight; an image that cannot be read becomes a result with an ``error`` sentence.

Processes, not threads: Pillow releases the GIL while it decodes and resizes, but the Python
around it (EXIF, mode conversion, hashing) does not, and feeding one H100 takes 8-16 decoders.
Pixels come back as numpy arrays through a pipe: measured faster, for images this size, than
torch's per-tensor shared memory, which creates and maps a segment for every image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, cast

import torch
from PIL import Image

from tagger.bulk.sharding import HOST_GPUS_ENV
from tagger.bulk.sources import Locator, Record, read_bytes
from tagger.engine.decode import upright_size
from tagger.engine.preprocess import Prepare
from tagger.errors import ImageError

log = logging.getLogger("tagger")


@dataclass
class Decoded:
    """A record after decoding: its prepared pixels, or the sentence saying why there are none."""

    record: Record
    pixels: torch.Tensor | None
    sha256: str | None = None
    width: int | None = None  # the image's own size, upright (EXIF orientation applied)
    height: int | None = None
    error: str | None = None

    def tokens(self, patch: int) -> int:
        """Patch tokens the model will see (0 for an error): what batches are grouped by."""
        return 0 if self.pixels is None else (self.pixels.shape[-2] // patch) * (self.pixels.shape[-1] // patch)


# What a worker sends back: (pixels as numpy or tensor, sha256, width, height, error).
DecodeResult = tuple[Any, str | None, int | None, int | None, str | None]


def decode_locator(locator: Locator, shown: str, prepare: Prepare) -> DecodeResult:
    """Read, hash, measure and prepare one image; every failure becomes an error sentence."""
    try:
        data = read_bytes(locator)
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        return None, None, None, None, f"Could not read {shown}: {reason}."
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels = prepare(data, name=shown)
        with Image.open(io.BytesIO(data)) as image:
            width, height = upright_size(image)
    except ImageError as e:
        return None, digest, None, None, str(e)
    except Exception as e:  # one odd file must not stop a run over millions
        return None, digest, None, None, f"Could not read {shown} ({type(e).__name__}: {e})."
    # numpy arrays pickle by value (one copy through the pipe); dtypes numpy lacks go as tensors.
    with contextlib.suppress(TypeError):
        return pixels.numpy(), digest, width, height, None
    return pixels, digest, width, height, None


def decoded_from(record: Record, result: DecodeResult) -> Decoded:
    pixels, digest, width, height, error = result
    if pixels is not None and not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(pixels)
    return Decoded(record, pixels, digest, width, height, error)


_worker_prepare: Prepare | None = None


def _init_worker(prepare: Prepare) -> None:
    global _worker_prepare
    _worker_prepare = prepare
    torch.set_num_threads(1)  # one image per worker; threads would only contend
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _decode_in_worker(locator: Locator, shown: str) -> DecodeResult:
    assert _worker_prepare is not None
    return decode_locator(locator, shown, _worker_prepare)


# Torch threads of a process that feeds a GPU: the model runs on the GPU, the CPU side only
# moves pixels and copies results back; the decoders need the cores. (Each child of --gpus
# would otherwise start a pool spanning every core.)
GPU_PROCESS_THREADS = 2


def host_gpus() -> int:
    """GPU processes sharing this host's cores: ``--gpus`` tells its children, else 1."""
    try:
        return max(1, int(os.environ.get(HOST_GPUS_ENV, "1")))
    except ValueError:
        return 1


def default_workers(device: torch.device) -> int:
    """Decoding processes: with a GPU, its share of the cores (cores ÷ GPUs on this host) but one
    (the thread feeding the GPU), at most 16; on the CPU, where the model needs the cores, a
    quarter: none below four cores, where a decoder would take half the model's threads (README)."""
    cores = os.cpu_count() or 2
    if device.type == "cuda":
        return max(1, min(16, cores // host_gpus() - 1))
    return cores // 4


def share_cores_with_decoders(device: torch.device, workers: int) -> None:
    """The model's threads (unless OMP_NUM_THREADS says otherwise): on the CPU the cores the
    decoders do not use, with a GPU a small pool (``GPU_PROCESS_THREADS``): model threads and
    decoders contending for the same cores slow both down."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    if device.type == "cuda":
        torch.set_num_threads(min(GPU_PROCESS_THREADS, max(1, (os.cpu_count() or 2) // host_gpus())))
    elif workers > 0:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - workers))


class DecodePool:
    """Ordered, bounded parallel decoding: ``map(items)`` yields one result per item, in order;
    other items than ``Record`` (the local engine's shard-end markers) pass through in place. At
    most ``workers * prefetch`` images are decoded ahead; ``workers=0`` decodes in this thread."""

    def __init__(self, prepare: Prepare, workers: int, prefetch: int = 4):
        self.prepare, self.workers = prepare, workers
        self.limit = max(2, workers * prefetch)
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0
        if workers > 0:
            self._start()

    def _start(self) -> None:
        # fork where the platform has it: workers start in milliseconds and share the parent's
        # imports (as torch's DataLoader does; the workers never touch CUDA).
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=(self.prepare,)
        )
        for future in [self._executor.submit(os.getpid) for _ in range(self.workers)]:
            future.result()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _submit(self, record: Record) -> Future | DecodeResult:
        if record.error is not None:
            return None, None, None, None, record.error
        if self._executor is None:
            return decode_locator(record.locator, record.path, self.prepare)
        return self._executor.submit(_decode_in_worker, record.locator, record.path)

    def _restart(self) -> None:
        self.close()
        self._start()
        self._generation += 1

    def _next(self, pending: deque[tuple[Any, Future | DecodeResult | None, int]]) -> Any:
        record, work, generation = pending.popleft()
        if work is None:  # not a Record
            return record
        if not isinstance(work, Future):
            return decoded_from(record, work)
        if generation != self._generation:  # submitted to a pool that has died since
            work = self._submit(record)
        with contextlib.suppress(BrokenProcessPool):
            return decoded_from(record, cast(Future, work).result())  # the pool is running: a Future
        # A worker died (a decoder crash on a hostile file, or the OOM killer), and the images
        # in flight with it. Restart the pool and decode this image alone; if it kills the
        # fresh pool too, it is the culprit and is reported as unreadable.
        log.warning("A decoding worker died; restarting the decoders (at %s)", record.path)
        self._restart()
        try:
            return decoded_from(record, cast(Future, self._submit(record)).result())  # as above
        except BrokenProcessPool:
            self._restart()
            return Decoded(record, None, error=f"Could not read {record.path}: decoding it crashed the decoder.")

    def map(self, items: Iterable[Any]) -> Iterator[Any]:
        pending: deque[tuple[Any, Future | DecodeResult | None, int]] = deque()
        for item in items:
            work = self._submit(item) if isinstance(item, Record) else None
            pending.append((item, work, self._generation))
            if len(pending) >= self.limit:
                yield self._next(pending)
        while pending:
            yield self._next(pending)
