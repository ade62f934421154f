"""What this run tags: the records of this process's unfinished shards not yet written.

``Plan.items()`` walks every record in the inputs' fixed order and yields a ``Record`` (shard and
caption path filled in) for each image to tag; ``Kept`` for one whose caption exists and is kept
(``--on-existing skip``, ``txt`` only): nothing to compute, but it counts towards the progress;
``ShardEnd(k)`` after the last record of each of this process's shards, once its images are all
written or passed over, so it can be completed.
Other processes' shards and finished ones are passed over, and images a half-done shard already
committed are counted in ``already_done``. Every record gets its caption path, in order, whoever
tags it: processes sharing an output folder therefore agree on every caption's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

from tagger.bulk.names import unescape_name
from tagger.bulk.outputs import Layout
from tagger.bulk.resume import ResumeState
from tagger.bulk.sharding import ShardSpec, shard_sizes
from tagger.bulk.sources import Inputs, Record
from tagger.datasets.intake import sanitize_path
from tagger.datasets.names import CaptionNamer
from tagger.errors import UploadError


@dataclass(frozen=True)
class ShardEnd:
    shard: int


@dataclass(frozen=True)
class Kept:
    record: Record


@dataclass(kw_only=True)
class Plan:
    """``keep_existing_only``: ``--on-existing skip`` with ``txt`` the only output, so an image
    whose caption exists needs no tagging at all. ``counts``: images per input, when known, for
    the progress bar's total."""

    inputs: Inputs
    layout: Layout
    shard: ShardSpec
    shard_size: int
    state: ResumeState
    txt: bool
    beside: bool
    keep_existing_only: bool
    counts: list[int | None]
    already_done: int = 0  # images of this process's shards written by an earlier run

    def __post_init__(self) -> None:
        self._beside_names, self._out_names = CaptionNamer(), CaptionNamer()

    def place(self, record: Record) -> str:
        """Where a record's caption goes: beside its image file, or under the output's ``txt/``.
        Two images of one folder with the same stem (``a.png``, ``a.jpg``) cannot both own ``a.txt``:
        by the Batch tab's rule the first gets ``a.txt``, the next ``a.jpg.txt``."""
        if self.beside and record.file is not None:
            return self._beside_names.name_for(Path(record.file).as_posix())
        try:
            # The caption under txt/ has the image's own name, bytes that are not UTF-8 included.
            name = sanitize_path(unescape_name(record.key))
        except UploadError:  # a key column value such as "../x": keep the file inside txt/
            name = f"{record.key.split('/', 1)[0]}/row-{record.index:09d}"
        return self._out_names.name_for(name)

    @property
    def total(self) -> int | None:
        """Images this run will tag or pass over (None when an input cannot be counted ahead)."""
        if any(c is None for c in self.counts):
            return None
        sizes = shard_sizes(sum(cast(list[int], self.counts)), self.shard_size)  # no None: checked above
        return sum(
            size - len(self.state.done_keys.get(shard, ()))
            for shard, size in enumerate(sizes)
            if self.shard.owns(shard) and shard not in self.state.finished
        )

    def items(self) -> Iterator[Record | Kept | ShardEnd]:
        current: int | None = None
        for record in self.inputs.records():
            shard = record.index // self.shard_size
            caption = self.place(record) if self.txt else None
            if shard != current and current is not None:
                yield ShardEnd(current)
                current = None
            if not self.shard.owns(shard):
                continue
            if shard in self.state.finished:
                self.already_done += 1
                continue
            current = shard
            if record.key in self.state.done_keys.get(shard, ()):
                self.already_done += 1
                continue
            record = replace(record, shard=shard, caption_file=caption)
            if self.keep_existing_only and caption is not None and self.layout.caption(caption).exists():
                yield Kept(record)
                continue
            yield record
        if current is not None:
            yield ShardEnd(current)
