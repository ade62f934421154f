"""Batch tagging for dataset builders: many images and/or zip archives in, captions out.

``run_batch`` collects the images (``intake.collect_inputs``), tags them in chunks
(``tag_items``: at most ``chunk_size`` decoded images alive, an unreadable one becomes an error
result) and writes kohya/sd-scripts captions and the authors' JSONL as they come (``BatchWriter``).

Why one model call per chunk: on ZeroGPU every ``spaces.GPU`` call queues for a GPU slice, its
duration estimated from its pixels (``tagger.web.runtime``). One call per image (the authors'
Space) pays the queue and attach cost hundreds of times; one call for the whole request would
hold every decoded image at once and need a long estimate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from tagger.datasets.intake import BatchInputs, BatchItem, BatchLimits, collect_inputs
from tagger.datasets.names import CaptionNamer
from tagger.engine.preprocess import Prepare
from tagger.engine.vocab import Vocabulary
from tagger.errors import ImageError, UploadError
from tagger.tags.formats import tags_as_dicts
from tagger.tags.options import TagOptions
from tagger.tags.selection import TagScore, select_tags

log = logging.getLogger("tagger")


@dataclass(frozen=True)
class ImageResult:
    filename: str
    concept: str
    sha256: str | None
    tags: tuple[TagScore, ...] = ()
    error: str | None = None

    def json_line(self) -> dict:
        """The authors' JSONL line: tags on success, ``error`` (and sha256 when known) otherwise."""
        line: dict = {} if self.sha256 is None else {"sha256": self.sha256}
        line |= {"filename": self.filename, "concept": self.concept}
        return line | ({"tags": tags_as_dicts(self.tags)} if self.error is None else {"error": self.error})


# -- Tagging -----------------------------------------------------------------------------------

ProgressCallback = Callable[[int, int, str], None]


def tag_items(
    inputs: BatchInputs,
    *,
    prepare: Prepare,
    run: Callable[[list[torch.Tensor]], np.ndarray],
    vocab: Vocabulary,
    options: TagOptions,
    chunk_size: int = 32,
    progress: ProgressCallback | None = None,
) -> Iterator[ImageResult]:
    """Tag every image of ``inputs`` in order, one ``run`` (model) call per chunk of images:
    ``prepare`` decodes bytes on the CPU (``Tagger.prepare``), ``run`` maps pixel tensors to
    probabilities ``[B, num_tags]`` (``Tagger.run`` or ``ModelRunner.probabilities``, one GPU call);
    ``progress(done, total, name)`` is called after each image."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}.")

    total = len(inputs.items)
    done = 0
    for start in range(0, total, chunk_size):
        chunk = inputs.items[start : start + chunk_size]
        for result in _tag_chunk(chunk, inputs, prepare, run, vocab, options):
            done += 1
            if progress is not None:
                progress(done, total, result.filename)
            yield result


def _tag_chunk(
    items: Sequence[BatchItem],
    inputs: BatchInputs,
    prepare: Prepare,
    run: Callable[[list[torch.Tensor]], np.ndarray],
    vocab: Vocabulary,
    options: TagOptions,
) -> list[ImageResult]:
    # A helper keeps every pixel tensor local to it: they are freed before we yield.
    results: list[ImageResult | None] = [None] * len(items)
    pixels: list[torch.Tensor] = []
    prepared: list[tuple[int, str]] = []  # (slot, sha256) of each image in pixels
    for i, item in enumerate(items):
        digest: str | None = None
        try:
            data = inputs.read(item)
            digest = hashlib.sha256(data).hexdigest()
            pixels.append(prepare(data, name=item.name))
            prepared.append((i, digest))
        except ImageError as e:
            results[i] = ImageResult(item.name, item.concept, digest, error=str(e))
        except UploadError:
            raise
        except Exception as e:  # one odd file must not stop a batch of hundreds
            log.exception("Unexpected error reading %s", item.name)
            results[i] = ImageResult(item.name, item.concept, digest, error=f"Could not read {item.name} ({e}).")
        finally:
            data = b""  # drop the encoded bytes before reading the next file
    if pixels:
        probabilities = run(pixels)
        pixels.clear()
        for row, (slot, digest) in zip(probabilities, prepared, strict=True):
            item = items[slot]
            results[slot] = ImageResult(
                item.name, item.concept, digest, tuple(select_tags(row, vocab, options.selection))
            )
    return cast(list[ImageResult], results)  # every slot is filled: an error or the image's tags


# -- Outputs -----------------------------------------------------------------------------------


class BatchWriter:
    """Writes ``captions.zip`` and ``tags.jsonl`` into ``directory`` as results arrive."""

    def __init__(self, directory: str | os.PathLike, options: TagOptions, vocab: Vocabulary | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.options, self.vocab = options, vocab  # the vocabulary's relations rename prepended aliases
        self.captions_path = self.directory / "captions.zip"
        self.jsonl_path = self.directory / "tags.jsonl"
        self.namer = CaptionNamer()
        self._zip = zipfile.ZipFile(self.captions_path, "w", compression=zipfile.ZIP_DEFLATED)
        self._jsonl = open(self.jsonl_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed in close()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, result: ImageResult) -> str | None:
        """Write one result; returns the caption's path in the zip (None for an error)."""
        self._jsonl.write(json.dumps(result.json_line(), ensure_ascii=False) + "\n")
        if result.error is not None:
            return None
        name = self.namer.name_for(result.filename)
        self._zip.writestr(name, self.options.tag_string(result.tags, self.vocab).encode("utf-8"))
        return name

    def close(self) -> None:
        self._zip.close()
        self._jsonl.close()


@dataclass
class BatchOutput:
    """What a batch request produced: one result per image, the two files, and counts."""

    results: list[ImageResult] = field(default_factory=list)  # in upload order
    captions_zip: Path | None = None
    jsonl: Path | None = None
    images: int = 0  # tagged
    errors: int = 0  # unreadable
    skipped: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    model_calls: int = 0
    seconds: float = 0.0


OUTPUT_ROOT = Path(tempfile.gettempdir()) / "tagger-batch"
OUTPUT_MAX_AGE_S = 24 * 3600


def new_output_dir() -> Path:
    """A fresh directory under ``OUTPUT_ROOT``; those older than ``OUTPUT_MAX_AGE_S`` are removed
    first (Gradio copies returned files into its own cache, so ours are only needed briefly)."""
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - OUTPUT_MAX_AGE_S
    for old in OUTPUT_ROOT.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="batch-", dir=OUTPUT_ROOT))


def run_batch(
    paths: Iterable[str | os.PathLike],
    *,
    prepare: Prepare,
    run: Callable[[list[torch.Tensor]], np.ndarray],
    vocab: Vocabulary,
    options: TagOptions,
    limits: BatchLimits | None = None,
    chunk_size: int = 32,
    progress: ProgressCallback | None = None,
    out_dir: str | os.PathLike | None = None,
) -> BatchOutput:
    """Collect, tag and write the whole request into ``out_dir`` (default: ``new_output_dir()``). With
    a ``Tagger``: ``prepare=tagger.prepare, run=tagger.run, vocab=tagger.engine.vocab`` (in the app
    ``run=ctx.runner.probabilities``, one GPU call per chunk)."""
    started = time.perf_counter()
    inputs = collect_inputs(paths, limits)  # refuse a bad request before creating anything
    directory = Path(out_dir) if out_dir is not None else new_output_dir()
    output = BatchOutput(skipped=list(inputs.skipped))

    def counted_run(pixels: list[torch.Tensor]) -> np.ndarray:
        output.model_calls += 1
        return run(pixels)

    results = tag_items(
        inputs, prepare=prepare, run=counted_run, vocab=vocab, options=options, chunk_size=chunk_size, progress=progress
    )
    try:
        with inputs, BatchWriter(directory, options, vocab) as writer:
            for result in results:
                writer.add(result)
                output.results.append(result)
    except BaseException:
        if out_dir is None:  # half-written outputs of a failed request are of no use
            shutil.rmtree(directory, ignore_errors=True)
        raise
    output.errors = sum(result.error is not None for result in output.results)
    output.images = len(output.results) - output.errors
    output.captions_zip = writer.captions_path
    output.jsonl = writer.jsonl_path
    output.renamed = writer.namer.renamed
    output.seconds = time.perf_counter() - started
    log.info(
        "Batch: %d tagged, %d errors, %d skipped, %d model calls, %.1f s",
        output.images,
        output.errors,
        len(output.skipped),
        output.model_calls,
        output.seconds,
    )
    return output
