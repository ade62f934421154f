"""The model step, shared by the local and the Ray engine: decoded images in, result rows out.

Images are batched by token count: a window of decoded images is sorted by patch count (then
by shape, so equal shapes sit together) and cut into batches of ``batch_size``: a batch padded
to its largest image wastes little, and an engine that batches only equal shapes gets runs of them.

Each image's scores are used once, here: its selected tags (caption, JSONL line) and its sparse
scores above the floor (Parquet) come from the same row; with ``--descriptors`` the head runs on
the descriptors the backbone already computed, not a second forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from tagger.bulk.decode import Decoded
from tagger.bulk.outputs import TagRow
from tagger.datasets.batch import ImageResult
from tagger.engine.tagger import Tagger
from tagger.tags.options import TagOptions
from tagger.tags.selection import select_tags


@dataclass
class TokenCounts:
    """Token positions the model computed on: the images' own, and with the padding that lets
    images of different sizes share a forward pass. ``waste`` is the extra computed per real
    token (the engine's definition: ``padded / real - 1``)."""

    tokens: int = 0
    padded: int = 0

    def add(self, tokens: int, padded: int) -> None:
        self.tokens += tokens
        self.padded += padded

    @property
    def waste(self) -> float:
        return self.padded / self.tokens - 1.0 if self.tokens else 0.0


def count_tokens(tagger: Tagger, batch: Sequence[Decoded]) -> tuple[int, int]:
    """(real, padded) token positions of one model call over ``batch``, from the engine's own
    plan of forward passes (``Tagger.plan``)."""
    passes = tagger.plan([item.pixels for item in batch if item.pixels is not None])
    return sum(p.tokens for p in passes), sum(p.padded_tokens for p in passes)


def batches_by_tokens(items: Sequence[Decoded], batch_size: int, patch: int) -> list[list[Decoded]]:
    """Decoded images (errors left out) sorted by token count and shape, cut into batches."""
    good = [d for d in items if d.pixels is not None]  # the comprehension does not narrow d.pixels
    good.sort(key=lambda d: (d.tokens(patch), tuple(cast(torch.Tensor, d.pixels).shape), d.record.index))
    return [good[i : i + batch_size] for i in range(0, len(good), batch_size)]


def error_row(item: Decoded) -> TagRow:
    result = ImageResult(item.record.key, item.record.concept, item.sha256, error=item.error)
    return _row(item, result, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))


def _row(
    item: Decoded,
    result: ImageResult,
    tag_ids: np.ndarray,
    scores: np.ndarray,
    caption: str | None = None,
    descriptor: np.ndarray | None = None,
) -> TagRow:
    """``item``'s row: its ``result`` (an error row has no size) and the scores it keeps."""
    record, tagged = item.record, result.error is None
    return TagRow(
        record.index,
        record.shard,
        record.key,
        record.path,
        item.sha256,
        item.width if tagged else None,
        item.height if tagged else None,
        result.error,
        tag_ids,
        scores,
        json.dumps(result.json_line(), ensure_ascii=False),
        record.caption_file,
        caption,
        descriptor,
    )


def score_batch(tagger: Tagger, batch: Sequence[Decoded], descriptors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The model, once over ``batch`` (decoded images without errors): probabilities ``[B, num_tags]``,
    and with ``descriptors`` the descriptors ``[B, D]`` of the same forward pass."""
    pixels = cast(list[torch.Tensor], [item.pixels for item in batch])
    return tagger.run_with_descriptors(pixels) if descriptors else (tagger.run(pixels), None)


def batch_rows(
    tagger: Tagger,
    batch: Sequence[Decoded],
    probabilities: np.ndarray,
    features: np.ndarray | None,
    options: TagOptions,
) -> list[TagRow]:
    """One row per image from its scores: selection, caption, JSONL line, sparse scores."""
    rows = []
    for i, item in enumerate(batch):
        scores, record = probabilities[i], item.record
        tags = select_tags(scores, tagger.vocab, options.selection)
        result = ImageResult(record.key, record.concept, item.sha256, tuple(tags))
        kept = np.flatnonzero(scores >= np.float32(options.selection.floor)).astype(np.int32)
        caption = options.tag_string(tags, tagger.vocab)
        descriptor = None if features is None else features[i]
        rows.append(_row(item, result, kept, scores[kept].astype(np.float32), caption, descriptor))
    return rows
