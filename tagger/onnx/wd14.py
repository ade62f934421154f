"""The wd14 package layout: ``selected_tags.csv`` and the output order of ``wd14/model.onnx``.

The wd14 tools (kohya's ``tag_images_by_wd14_tagger.py``, wd14-tagger-standalone,
ComfyUI-WD14-Tagger) read ``selected_tags.csv`` (``tag_id,name,category,count``) next to a
graph whose outputs follow the file's rows, and they assume more than the columns say:

* the first four outputs are ratings (all three tools skip them; kohya's ``--use_rating_tags``
  picks one by argmax). This model has none, so the package starts with four placeholder rows
  ``RATING_PLACEHOLDERS`` (category 9) whose outputs are always 0;
* kohya reads the rest as all general rows, then all character rows (category 0, then 4, in
  file order), and ComfyUI-WD14-Tagger cuts the rows at the first category-0 and category-4
  row: any other category, or interleaved ones, shift every later tag onto the wrong score.
  So the package has only the codes 0, 4 and 9, in blocks, the outputs reordered to match.

``WD14_CATEGORY``: character → 4 (the tools' character threshold, 0.85 by default, applies);
every other category → 0, so that every tag reaches every tool. Names use underscores, those
files' convention (the tools' underscore options give back our spelling); ``count`` is 0 (the
vocabulary holds no counts) and ``tag_id`` is the tag's vocabulary index (the placeholders get
``num_tags + k``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from tagger.engine.vocab import Vocabulary

GENERAL, CHARACTER, RATING = 0, 4, 9
RATING_PLACEHOLDERS = ("no_rating_0", "no_rating_1", "no_rating_2", "no_rating_3")
WD14_CATEGORY = {"character": CHARACTER}  # every other category: GENERAL
CSV_HEADER = ("tag_id", "name", "category", "count")


def wd14_category(category_name: str) -> int:
    return WD14_CATEGORY.get(category_name, GENERAL)


def wd14_order(vocab: Vocabulary) -> np.ndarray:
    """Vocabulary indices in package order after the placeholders: general block, then character
    block, each in vocabulary order (the most frequent first)."""
    codes = np.array([wd14_category(vocab.category_of(i).name) for i in range(len(vocab))])
    return np.concatenate([np.flatnonzero(codes == GENERAL), np.flatnonzero(codes == CHARACTER)])


def write_selected_tags(path: str | os.PathLike, vocab: Vocabulary) -> Path:
    """``selected_tags.csv`` in the package order (placeholders, general, character)."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for k, name in enumerate(RATING_PLACEHOLDERS):
            writer.writerow((len(vocab) + k, name, RATING, 0))
        for i in wd14_order(vocab).tolist():
            writer.writerow((i, vocab.tags[i].replace(" ", "_"), wd14_category(vocab.category_of(i).name), 0))
    return path
