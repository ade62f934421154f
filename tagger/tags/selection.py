"""Which tags to keep from one image's score vector: ``Selection`` and ``select_tags`` (pure
functions, so a threshold change never needs the model again); typed tag lists and globs."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tagger.engine.vocab import CATEGORIES, CATEGORY_BY_ID, Category, Vocabulary, category_by_name, normalize_tag
from tagger.errors import SelectionError


@dataclass(frozen=True)
class TagScore:
    tag: str
    score: float
    category: Category
    index: int  # position in the vocabulary / model output


def _check_probability(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SelectionError(f"{name} must be a number between 0 and 1, not {value!r}.") from None
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise SelectionError(f"{name} must be between 0 and 1, not {value}.")
    # Scores are compared in float32 (a score shown as 0.35 meets a threshold of 0.35): keep the
    # limit as that float32 value, so a Selection reports what it applies (1e-50 is 0 in float32).
    return float(np.float32(value))


def _check_count(name: str, value: float | np.integer) -> int:
    if isinstance(value, np.integer) or (isinstance(value, float) and value.is_integer()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SelectionError(f"{name} must be a whole number of 0 or more, not {value!r}.")
    return value


def resolve_category(key: int | str | Category) -> Category:
    """A category from its id, name or itself; unknown names raise ``SelectionError``."""
    if isinstance(key, Category):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if int(key) in CATEGORY_BY_ID:
            return CATEGORY_BY_ID[int(key)]
        raise SelectionError(f"Unknown category id {key}; ids run from 0 to {len(CATEGORIES) - 1}.")
    try:
        return category_by_name(str(key))
    except ValueError as e:
        raise SelectionError(str(e)) from None


def parse_tag_list(text: str | Iterable[str] | None) -> list[str]:
    """Split user input ("a, b_c\\nd") into tags; empty items dropped, order kept, duplicates removed."""
    if text is None:
        return []
    items = re.split(r"[,\n]", text) if isinstance(text, str) else [str(t) for t in text]
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        item = item.strip()
        if item and normalize_tag(item) not in seen:
            seen.add(normalize_tag(item))
            out.append(item)
    return out


IMPLIED = ("keep", "remove", "add")
MAX_STARS = 8  # per pattern: more would only slow matching down


def is_pattern(key: str) -> bool:
    """Whether a typed tag (``normalize_tag`` form) is a glob: ``*`` or ``?`` not escaped by ``\\``."""
    return re.search(r"(?<!\\)[*?]", key) is not None


def check_pattern(name: str, item: str) -> None:
    """A ``SelectionError`` naming option ``name`` for a glob that cannot be meant."""
    key = normalize_tag(item)
    if not is_pattern(key):
        return
    if not key.replace("*", "").strip():
        raise SelectionError(f"{name}: {item!r} matches every tag; write part of a tag around the *, e.g. *censor*.")
    if key.count("*") > MAX_STARS:
        raise SelectionError(f"{name}: {item!r} has more than {MAX_STARS} '*'; use fewer.")


def pattern_regex(key: str) -> re.Pattern[str]:
    """A glob (``normalize_tag`` form) as a regex: ``*`` any run, ``?`` one character, ``\\*`` and
    ``\\?`` themselves, everything else literally."""
    tokens = re.findall(r"\\[*?]|.", key, re.DOTALL)
    return re.compile("".join(".*" if t == "*" else "." if t == "?" else re.escape(t[-1]) for t in tokens), re.DOTALL)


_PATTERN_HITS: weakref.WeakKeyDictionary[Vocabulary, tuple[object, dict[str, list[int]]]] = weakref.WeakKeyDictionary()


def _matching(key: str, vocab: Vocabulary, index: Mapping[str, list[int]]) -> list[int]:
    """Indices of the tags matching the glob ``key``, remembered per vocabulary and relations (a
    blacklist is applied to every image)."""
    owner, hits = _PATTERN_HITS.get(vocab, (None, {}))
    if owner is not vocab.relations:
        hits = {}
    if key not in hits:
        if len(hits) > 1024:
            hits.clear()
        regex = pattern_regex(key)
        hits[key] = [i for name, indices in index.items() if regex.fullmatch(name) for i in indices]
    _PATTERN_HITS[vocab] = (vocab.relations, hits)
    return hits[key]


def mcut_threshold(scores: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron et al., 2012): the midpoint of the largest gap
    between consecutive sorted scores. Returns 1.0 for fewer than two scores."""
    if scores.size < 2:
        return 1.0
    ordered = np.sort(scores.astype(np.float64))[::-1]
    gaps = ordered[:-1] - ordered[1:]
    t = int(np.argmax(gaps))
    return float((ordered[t] + ordered[t + 1]) / 2)


@dataclass(frozen=True)
class Selection:
    """Which tags to keep. Thresholds are probabilities in [0, 1]; categories by id or name."""

    threshold: float = 0.35  # every category without its own rule
    topk: int | None = None  # cap on the total, best first
    category_thresholds: Mapping[int | str, float] = field(default_factory=dict)
    category_topk: Mapping[int | str, int] = field(default_factory=dict)  # that category's k best at or above floor
    mcut: bool = False  # categories without their own rule use their MCut threshold (wd-tagger's automatic one)
    floor: float = 0.0  # nothing below it is ever returned (the authors' Space uses 0.05)
    categories: Iterable[int | str] | None = None  # None keeps all
    # Tags never returned / when not empty, the only ones that can be (the other rules still apply),
    # matched as normalize_tag compares; globs: ``*`` any run, ``?`` one (``\*``, ``\?`` themselves).
    exclude: Iterable[str] = ()
    include: Iterable[str] = ()
    # With relations attached to the vocabulary: ``remove`` drops each selected tag another selected
    # tag implies; ``add`` first raises each tag's score to the best of the tags implying it.
    implied: str = "keep"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise arguments once, here
        set_(self, "threshold", _check_probability("threshold", self.threshold))
        set_(self, "floor", _check_probability("floor", self.floor))
        set_(self, "topk", None if self.topk is None else _check_count("topk", self.topk))
        rules = (("category_thresholds", "threshold", _check_probability), ("category_topk", "top-k", _check_count))
        for name, what, check in rules:
            given = getattr(self, name) or {}
            set_(self, name, {resolve_category(k).id: check(f"{what} for {k}", v) for k, v in given.items()})
        if self.categories is not None:
            categories = [self.categories] if isinstance(self.categories, (str, int)) else self.categories
            set_(self, "categories", frozenset(resolve_category(c).id for c in categories))
        if self.implied not in IMPLIED:
            raise SelectionError(f"implied must be one of {', '.join(IMPLIED)}; got {self.implied!r}.")
        for name in ("exclude", "include"):
            items = parse_tag_list(getattr(self, name))
            for item in items:
                check_pattern(name, item)
            set_(self, name, frozenset(normalize_tag(t) for t in items))


def select_tags(scores: np.ndarray, vocab: Vocabulary, selection: Selection | None = None) -> list[TagScore]:
    """Apply ``selection`` to one image's probabilities ``[num_tags]``; best first. With relations
    attached to ``vocab`` (``tagger.tags.relations.attach``), typed tags go through the aliases, tags
    are shown under the name an alias points to (each name once, its best score), and
    ``selection.implied`` applies."""
    selection = selection or Selection()
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if scores.shape[0] != len(vocab):
        raise SelectionError(f"Got {scores.shape[0]} scores for a vocabulary of {len(vocab)} tags.")
    relations = vocab.relations
    if relations is not None and selection.implied == "add":
        scores = relations.lift(scores)
    index = vocab.normalized_index if relations is None else relations.index

    def find(key: str) -> list[int]:
        if is_pattern(key):
            return _matching(key, vocab, index)
        return vocab.find(key) if relations is None else relations.find(key)

    eligible = scores >= selection.floor
    if selection.include:
        allowed = np.zeros_like(eligible)
        for tag in selection.include:
            allowed[find(tag)] = True
        eligible &= allowed
    for tag in selection.exclude:
        eligible[find(tag)] = False

    chosen: list[np.ndarray] = []
    wanted = selection.categories
    for category in CATEGORIES:
        if wanted is not None and category.id not in wanted:
            continue
        idx = np.flatnonzero(eligible & (vocab.category_ids == category.id))
        if idx.size == 0:
            continue
        cat_scores = scores[idx]
        if category.id in selection.category_topk:
            k = selection.category_topk[category.id]
            chosen.append(idx[np.argsort(-cat_scores, kind="stable")[:k]])
            continue
        if category.id in selection.category_thresholds:
            threshold = selection.category_thresholds[category.id]
        elif selection.mcut:
            # MCut over the category's own scores, never below the general threshold's floor.
            threshold = max(mcut_threshold(scores[vocab.category_ids == category.id]), selection.floor)
        else:
            threshold = selection.threshold
        chosen.append(idx[cat_scores >= threshold])

    if not chosen:
        return []
    picked = np.concatenate(chosen)
    picked = picked[np.argsort(-scores[picked], kind="stable")]
    names = vocab.tags
    if relations is not None:
        names = relations.names
        if selection.implied == "remove":
            picked = picked[~np.isin(picked, relations.ancestors_of(picked)[0])]
        keys = relations.keys
        best: dict[str, int] = {}
        for i in picked:
            best.setdefault(keys[i], i)  # an aliased tag and the tag it points to: the best one
        picked = np.asarray(list(best.values()), dtype=np.int64)
    if selection.topk is not None:
        picked = picked[: selection.topk]
    return [TagScore(names[i], float(scores[i]), vocab.category_of(i), int(i)) for i in picked]


def top_tags(scores: np.ndarray, vocab: Vocabulary, k: int) -> list[TagScore]:
    """The ``k`` best tags regardless of threshold (the CLI's ``--topk``)."""
    return select_tags(scores, vocab, Selection(threshold=0.0, topk=k))


def add_to_tag_list(text: str | None, tag: str) -> str:
    """``text`` (a typed tag list) with ``tag`` appended unless it holds it (compared as ``Selection`` does)."""
    text = text or ""
    if normalize_tag(tag) in {normalize_tag(t) for t in parse_tag_list(text)}:
        return text
    kept = text.rstrip().rstrip(",").rstrip()
    return f"{kept}, {tag}" if kept else tag
