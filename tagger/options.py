"""The user-facing tagging options shared by the UI, the ``/tag`` API and batch captions.

One dataclass holds every control a person sets (with the UI's defaults), turns itself into
a ``Selection`` and formats the tag string, so the three front ends cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tagger.errors import SelectionError
from tagger.results import Selection, TagScore, parse_tag_list, resolve_category, tag_string
from tagger.vocab import CATEGORIES

MODES = ("threshold", "topk", "mcut")
ORDERS = ("score", "category")


def parse_category_values(text: str | dict | None) -> dict[str, float]:
    """``"artist=0.6, copyright: 0.7"`` (or a dict) → ``{"artist": 0.6, "copyright": 0.7}``."""
    if not text:
        return {}
    if isinstance(text, dict):
        items = [(str(k), v) for k, v in text.items()]
    else:
        items = []
        for part in re.split(r"[,\n;]", text):
            if not part.strip():
                continue
            match = re.fullmatch(r"\s*([^=:]+?)\s*[=:]\s*(.*?)\s*", part)
            if match is None:
                raise SelectionError(f"Write per-category values as name=value, e.g. artist=0.6; got {part.strip()!r}.")
            items.append((match.group(1), match.group(2)))
    out: dict[str, float] = {}
    for name, value in items:
        category = resolve_category(name)
        try:
            out[category.name] = float(value)
        except (TypeError, ValueError):
            raise SelectionError(f"The value for {category.name} must be a number, not {value!r}.") from None
    return out


@dataclass(frozen=True)
class TagOptions:
    """Every tagging control, with the UI's defaults.

    ``mode``: ``"threshold"`` (``threshold`` for all categories, ``character_threshold`` for
    characters, ``category_thresholds`` overriding either), ``"topk"`` (the
    ``topk_per_category`` best of each category) or ``"mcut"`` (automatic per-category
    threshold). ``floor`` always applies; ``categories`` empty or None means all.
    """

    mode: str = "threshold"
    threshold: float = 0.35
    character_threshold: float = 0.85
    topk_per_category: int = 20
    floor: float = 0.05
    categories: Sequence[str] | str | None = None
    category_thresholds: str | dict = ""
    exclude: str | Iterable[str] = ""
    prepend: str | Iterable[str] = ""
    underscores: bool = False
    escape_parentheses: bool = False
    order: str = "score"
    selection: Selection = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SelectionError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}.")
        if self.order not in ORDERS:
            raise SelectionError(f"order must be one of {', '.join(ORDERS)}; got {self.order!r}.")
        categories = self.categories
        if isinstance(categories, str):
            categories = parse_tag_list(categories)
        per_category: dict[int | str, float] = {}
        category_topk: dict[int | str, int] = {}
        if self.mode == "threshold":
            per_category = {"character": self.character_threshold, **parse_category_values(self.category_thresholds)}
        elif self.mode == "topk":
            category_topk = {c.id: self.topk_per_category for c in CATEGORIES}
        selection = Selection(
            threshold=self.threshold,
            floor=self.floor,
            mcut=self.mode == "mcut",
            category_thresholds=per_category,
            category_topk=category_topk,
            categories=categories or None,
            exclude=self.exclude,
        )
        object.__setattr__(self, "selection", selection)

    def tag_string(self, tags: Sequence[TagScore]) -> str:
        return tag_string(
            tags,
            underscores=self.underscores,
            escape_parentheses=self.escape_parentheses,
            order=self.order,
            prepend=self.prepend,
        )
