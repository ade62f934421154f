"""The local engine: one process, decoding workers, one model, a background writer.

Decoding workers prepare the next images (``DecodePool``) while the main thread runs the model
on the current batch and a writer thread writes the previous batch's captions and part. Windows
of ``WINDOW_BATCHES`` batches are cut by token count (``batches_by_tokens``); a window never
spans two shards, so each shard is completed as soon as its last batch is written. A kill loses
the batch the model was running and the one being written; the next run resumes after the rest.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Callable
from functools import partial

from tagger.bulk.decode import Decoded, DecodePool, default_workers, share_cores_with_decoders
from tagger.bulk.inference import batch_rows, batches_by_tokens, count_tokens, error_row, score_batch
from tagger.bulk.outputs import OutputWriter, TagRow
from tagger.bulk.plan import Kept, Plan, ShardEnd
from tagger.bulk.progress import Progress, Summary
from tagger.engine.tagger import Tagger
from tagger.tags.options import TagOptions

WINDOW_BATCHES = 4


class BackgroundWriter:
    """Turns scores into rows, writes them and completes shards in a thread, in order: selecting
    and formatting a batch of 74,625-tag rows takes tens of milliseconds, which then overlap the
    model's next batch. The queue holds one job, so at most two batches are computed but not yet
    written. An exception in the thread is raised again in the caller at its next call."""

    def __init__(self, writer: OutputWriter, summary: Summary, progress: Progress):
        self.writer, self.summary, self.progress = writer, summary, progress
        self._jobs: queue.Queue[tuple[str, int, Callable[[], list[TagRow]]] | None] = queue.Queue(maxsize=1)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="bulk-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._failure is not None:
                continue  # drain: the caller stops at its next call
            kind, shard, make_rows = job
            try:
                if kind == "batch":
                    rows = make_rows()
                    counts = self.writer.write_batch(shard, rows)
                    self.summary.add(counts)
                    for message in [*(row.error for row in rows if row.error is not None), *counts.messages]:
                        self.progress.error(message)
                    self.progress.update(len(rows), counts.errors)
                else:
                    self.writer.finish_shard(shard)
                    self.summary.shards_finished += 1
            except BaseException as e:  # re-raised in the main thread
                self._failure = e

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def write(self, shard: int, make_rows: Callable[[], list[TagRow]]) -> None:
        """Queue a batch: ``make_rows()`` runs in the writer thread."""
        self._check()
        self._jobs.put(("batch", shard, make_rows))

    def finish(self, shard: int) -> None:
        self._check()
        self._jobs.put(("finish", shard, list))

    def close(self) -> None:
        """Write what was handed over, stop the thread; raise its failure if it had one."""
        self._jobs.put(None)
        self._thread.join()
        self._check()


def run_local(
    plan: Plan,
    tagger: Tagger,
    writer: OutputWriter,
    args: argparse.Namespace,
    *,
    options: TagOptions,
    batch_size: int,
    summary: Summary,
    progress: Progress,
) -> None:
    """Tag everything ``plan`` yields; counts go into ``summary`` (also on an interrupt)."""
    workers = default_workers(tagger.device) if args.workers is None else args.workers
    share_cores_with_decoders(tagger.device, workers)
    started = time.perf_counter()
    output = BackgroundWriter(writer, summary, progress)
    window: list[Decoded] = []

    def flush(shard: int) -> None:
        errors = [error_row(item) for item in window if item.pixels is None]
        if errors:
            output.write(shard, lambda: errors)
        for batch in batches_by_tokens(window, batch_size, tagger.model.config.patch_size):
            summary.tokens.add(*count_tokens(tagger, batch))
            probabilities, features = score_batch(tagger, batch, args.descriptors)
            output.write(shard, partial(batch_rows, tagger, batch, probabilities, features, options))
        window.clear()

    try:
        with DecodePool(tagger.preprocessor, workers) as pool:
            for item in pool.map(plan.items()):
                if isinstance(item, ShardEnd):
                    flush(item.shard)
                    output.finish(item.shard)
                elif isinstance(item, Kept):
                    summary.kept += 1
                    progress.update(1)
                else:
                    window.append(item)
                    if len(window) >= batch_size * WINDOW_BATCHES:
                        flush(item.record.shard)
    finally:
        window.clear()  # an interrupted window is not written: its images are tagged again next run
        output.close()
        summary.already_done = plan.already_done
        summary.seconds = time.perf_counter() - started
