"""Descriptor similarity: two images, the pairs of a zip with two folders, or pairs of image URLs.

Zips are read with ``tagger.datasets.intake.collect_inputs``, the same guarded reader as batch
tagging. The model call (descriptors) is passed in, so the caller decides where it runs.
"""

from __future__ import annotations

import csv
import json
import lzma
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np
import torch

from tagger.datasets.intake import BatchInputs, BatchItem, BatchLimits, collect_inputs, is_skipped, wrapper_depth
from tagger.engine.preprocess import Prepare
from tagger.engine.tagger import IMAGES_PER_GPU_CALL
from tagger.errors import FeatureError, FetchError, ImageError


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
class BatchSimilarity:
    """Per-pair scores of a zip of two folders, with what could not be scored."""

    folders: tuple[str, str]
    rows: list[tuple[str, str, str, float]] = field(default_factory=list)  # (stem, file A, file B, similarity)
    unmatched: list[str] = field(default_factory=list)  # images with no partner (or a second file with the same stem)
    ignored: list[str] = field(default_factory=list)  # not images, hidden files, or not inside either folder
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

    def write_downloads(self, directory: Path) -> tuple[Path, Path]:
        """``similarity.csv`` and ``similarity.jsonl`` in ``directory``: one row per scored pair."""
        csv_path, jsonl_path = directory / "similarity.csv", directory / "similarity.jsonl"
        pairs = self.to_json()["pairs"]
        with open(csv_path, "w", encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=["stem", "a", "b", "similarity"])
            writer.writeheader()
            writer.writerows(pairs)
        with open(jsonl_path, "w", encoding="utf-8", newline="\n") as out:
            out.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
        return csv_path, jsonl_path


def pair_inputs(inputs: BatchInputs) -> tuple[BatchSimilarity, list[tuple[str, BatchItem, BatchItem]]]:
    """A zip's images split into its two top-level folders and paired by stem (the path inside the
    folder without extension: ``a/x/cat.png`` pairs with ``b/x/cat.jpg``) → the result to score
    into (folders, unmatched and ignored names) and the pairs (stem, image in A, in B).
    ``collect_inputs`` already refused unsafe paths, links and zip bombs and skipped ``__MACOSX``
    and dotfiles. A single wrapping folder (``pairs/a``, ``pairs/b``: a zip of the parent folder)
    is looked through. ``FeatureError`` unless exactly two folders hold images."""
    depth = wrapper_depth([item.name for item in inputs.items])
    files = [(PurePosixPath(*PurePosixPath(item.name).parts[depth:]), item) for item in inputs.items]
    # collect_inputs lists resource forks and dotfiles among its skipped names; they are noise here.
    ignored = [n for n in inputs.skipped if not is_skipped(n)]
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
    return BatchSimilarity((name_a, name_b), unmatched=unmatched, ignored=ignored), pairs


def parse_url_pairs(text: str, max_pairs: int) -> list[tuple[str, str]]:
    """``[["url_a", "url_b"], ...]`` (JSON) → the pairs; ``FeatureError`` with a sentence otherwise."""
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError as e:
        raise FeatureError(f'Write the pairs as JSON, e.g. [["https://a/1.png", "https://b/1.png"]]: {e}.') from None
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(u, str) for u in pair) for pair in value
    ):
        raise FeatureError("The pairs must be a JSON list of [url_a, url_b] lists of two strings.")
    if not value:
        raise FeatureError("The list of pairs is empty.")
    if len(value) > max_pairs:
        raise FeatureError(f"At most {max_pairs} pairs per request; got {len(value)}.")
    return [(a.strip(), b.strip()) for a, b in value]


# Pairs decoded and sent to the model together (two images each): bounds memory and the
# duration of each GPU call, like a batch chunk.
PAIRS_PER_CALL = IMAGES_PER_GPU_CALL // 2


def batch_similarity(
    path: str | os.PathLike,
    prepare: Prepare,
    descriptors: Callable[[list[torch.Tensor]], np.ndarray],
    limits: BatchLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSimilarity:
    """Score every pair of a zip with two folders (``pair_inputs``), read with ``collect_inputs``
    and its limits (entries, sizes, compression ratio, zip slip: ``UploadError``). ``prepare``
    decodes one file on the CPU; ``descriptors`` is the model call (see ``score_pairs``)."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise FeatureError("This file is not a zip archive; upload a .zip holding two folders of images.")
    if PurePosixPath(path).suffix.lower() != ".zip":
        raise FeatureError("Please give the archive a .zip file name.")
    with collect_inputs([path], limits) as inputs:
        result, listing = pair_inputs(inputs)
        pairs = [(stem, (a.name, a), (b.name, b)) for stem, a, b in listing]
        return score_pairs(
            result, pairs, lambda item, name: prepare(inputs.read(item), name=name), descriptors, progress
        )


Source = TypeVar("Source")


def score_pairs(
    result: BatchSimilarity,
    pairs: list[tuple[str, tuple[str, Source], tuple[str, Source]]],
    load: Callable[[Source, str], torch.Tensor],
    descriptors: Callable[[list[torch.Tensor]], np.ndarray],
    progress: Callable[[int, int], None] | None = None,
) -> BatchSimilarity:
    """``pairs`` (stem, (name, source) of A, of B) scored into ``result``: ``load`` decodes one source
    (named for its errors) on the CPU, ``descriptors`` runs once per ``PAIRS_PER_CALL`` pairs. A
    source that cannot be read (or fetched) is reported under its name and its pair skipped."""
    total = len(pairs)
    for start in range(0, total, PAIRS_PER_CALL):
        chunk: list[tuple[str, str, str]] = []
        pixels: list[torch.Tensor] = []
        for stem, (name_a, source_a), (name_b, source_b) in pairs[start : start + PAIRS_PER_CALL]:
            decoded = []
            for name, source in ((name_a, source_a), (name_b, source_b)):
                try:
                    decoded.append(load(source, name))
                except (ImageError, FetchError, zlib.error, lzma.LZMAError) as e:
                    # Unreadable, corrupt or refused: this pair is skipped, the others go on.
                    result.errors.append((name, str(e) or type(e).__name__))
            if len(decoded) == 2:
                chunk.append((stem, name_a, name_b))
                pixels.extend(decoded)
        if pixels:
            vectors = descriptors(pixels)
            for j, (stem, name_a, name_b) in enumerate(chunk):
                result.rows.append((stem, name_a, name_b, cosine_similarity(vectors[2 * j], vectors[2 * j + 1])))
            del pixels
        if progress is not None:
            progress(min(start + PAIRS_PER_CALL, total), total)
    return result
