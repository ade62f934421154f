"""Tag vocabulary and the category table.

The vocabulary file is JSON: ``{"idx2tag": [...]}`` plus an optional
``"tag2category": {tag: e621_id}``. The authors' UI shifts e621 ids by +1 so that a tag
missing from the map lands in category 0 ("unassigned"); we do the same. Other keys are
ignored so that later revisions of the file keep loading.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tagger.errors import VocabularyError

if TYPE_CHECKING:
    from tagger.tags.relations import VocabRelations


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    color: str
    order: int  # position in the authors' display order


# (shifted id, name, colour) in the authors' display order.
_CATEGORY_ROWS = [
    (2, "artist", "#f472b6"),
    (4, "copyright", "#fb923c"),
    (5, "character", "#60a5fa"),
    (6, "species", "#facc15"),
    (1, "general", "#4ade80"),
    (9, "lore", "#f87171"),
    (8, "meta", "#e2e8f0"),
    (3, "contributor", "#a78bfa"),
    (7, "disambiguation", "#94a3b8"),
    (0, "unassigned", "#6b7280"),
]

CATEGORIES: tuple[Category, ...] = tuple(
    Category(cid, name, color, order) for order, (cid, name, color) in enumerate(_CATEGORY_ROWS)
)

CATEGORY_BY_ID: dict[int, Category] = {c.id: c for c in CATEGORIES}
CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}
UNASSIGNED = CATEGORY_BY_NAME["unassigned"]


def category_by_name(name: str) -> Category:
    """Look a category up by name (case-insensitive); raises ``ValueError`` with the choices."""
    try:
        return CATEGORY_BY_NAME[name.strip().lower()]
    except KeyError:
        choices = ", ".join(c.name for c in CATEGORIES)
        raise ValueError(f"Unknown category {name!r}; choose from: {choices}.") from None


def normalize_tag(tag: str) -> str:
    """Comparison form of a tag: users type underscores, escaped parentheses and any case."""
    return tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ").strip().lower()


class Vocabulary:
    """Tags in model output order and the (shifted) category of each tag."""

    def __init__(self, tags: list[str], category_ids: np.ndarray | None = None, source: str = "<memory>"):
        if category_ids is None:
            category_ids = np.zeros(len(tags), dtype=np.int16)
        if len(category_ids) != len(tags):
            raise VocabularyError(f"{source}: {len(tags)} tags but {len(category_ids)} category ids.")
        self.tags: list[str] = tags
        self.category_ids: np.ndarray = np.asarray(category_ids, dtype=np.int16)
        self.source = source
        # Implications and aliases mapped onto these tags (tagger.tags.relations.attach), if loaded.
        self.relations: VocabRelations | None = None

    def __len__(self) -> int:
        return len(self.tags)

    @cached_property
    def index(self) -> dict[str, int]:
        """Tag → output index (first occurrence wins for duplicated tags)."""
        index: dict[str, int] = {}
        for i, tag in enumerate(self.tags):
            index.setdefault(tag, i)
        return index

    @cached_property
    def normalized_index(self) -> dict[str, list[int]]:
        """``normalize_tag(tag)`` → output indices, for lookups typed by people."""
        index: dict[str, list[int]] = {}
        for i, tag in enumerate(self.tags):
            index.setdefault(normalize_tag(tag), []).append(i)
        return index

    def find(self, tag: str) -> list[int]:
        """Indices of a tag typed by a person (any case, ``_`` or space, escaped or not)."""
        return self.normalized_index.get(normalize_tag(tag), [])

    def category_of(self, i: int) -> Category:
        return CATEGORY_BY_ID.get(int(self.category_ids[i]), UNASSIGNED)

    @classmethod
    def from_data(cls, data: object, source: str = "<memory>") -> Vocabulary:
        if not isinstance(data, dict) or "idx2tag" not in data:
            raise VocabularyError(f"{source}: not a tagger vocabulary (expected a JSON object with 'idx2tag').")
        tags = data["idx2tag"]
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise VocabularyError(f"{source}: 'idx2tag' must be a non-empty list of strings.")
        mapping = data.get("tag2category") or {}
        if not isinstance(mapping, dict):
            raise VocabularyError(f"{source}: 'tag2category' must be an object mapping tag to category id.")
        category_ids = np.zeros(len(tags), dtype=np.int16)
        for i, tag in enumerate(tags):
            raw = mapping.get(tag)
            if raw is None:
                continue
            try:
                # int() would silently truncate 2.5 and read true as 1: both are corrupt ids.
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError(raw)
                shifted = int(raw) + 1
            except (TypeError, ValueError):
                raise VocabularyError(f"{source}: category of tag {tag!r} is {raw!r}, not an integer.") from None
            # Ids outside the known table fall back to "unassigned" rather than failing.
            category_ids[i] = shifted if shifted in CATEGORY_BY_ID else UNASSIGNED.id
        return cls(tags, category_ids, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise VocabularyError(f"Vocabulary file not found: {path}.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VocabularyError(f"{path}: not valid JSON ({e}).") from None
        return cls.from_data(data, str(path))
