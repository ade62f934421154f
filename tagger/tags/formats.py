"""The output formats of selected tags: tag strings, the ``/tag`` JSON, the authors' CLI formats."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from tagger.engine.vocab import CATEGORIES, Category, normalize_tag
from tagger.errors import SelectionError
from tagger.tags.selection import TagScore, parse_tag_list


def group_by_category(tags: Sequence[TagScore]) -> list[tuple[Category, list[TagScore]]]:
    """Tags grouped in the authors' display order; only categories that have tags."""
    groups: dict[int, list[TagScore]] = {}
    for t in tags:
        groups.setdefault(t.category.id, []).append(t)
    return [(c, groups[c.id]) for c in CATEGORIES if c.id in groups]


def tag_string(
    tags: Sequence[TagScore],
    *,
    underscores: bool = False,
    escape_parentheses: bool = False,
    order: str = "score",
    prepend: Iterable[str] | str = (),
    separator: str = ", ",
    rename: Callable[[str], str] | None = None,
) -> str:
    """Comma-separated tags. ``order`` is ``"score"`` (best first) or ``"category"`` (display
    order of categories, best first within each). ``prepend`` tags come first, once;
    ``rename`` maps each (an alias to the name it points to: ``VocabRelations.shown``)."""
    if order == "category":
        tags = [t for _, group in group_by_category(tags) for t in group]
    elif order != "score":
        raise SelectionError(f"order must be 'score' or 'category', not {order!r}.")
    # Prepended tags may be typed already escaped (fate \(series\)): unescaped, every tag is
    # escaped exactly once below.
    leading = [t.replace("\\(", "(").replace("\\)", ")") for t in parse_tag_list(prepend)]
    if rename is not None:
        leading = parse_tag_list([rename(t) for t in leading])
    seen = {normalize_tag(t) for t in leading}
    names = [*leading, *(t.tag for t in tags if normalize_tag(t.tag) not in seen)]
    if underscores:
        names = [name.replace(" ", "_") for name in names]
    if escape_parentheses:
        names = [name.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for name in names]
    return separator.join(names)


def category_tag_strings(
    tags: Sequence[TagScore], *, underscores: bool = False, escape_parentheses: bool = False
) -> list[tuple[Category, str]]:
    """One tag string per category, in display order (the Tag tab's copy buttons): the format
    options apply; prepended tags belong to the string of all tags only."""
    return [
        (category, tag_string(group, underscores=underscores, escape_parentheses=escape_parentheses))
        for category, group in group_by_category(tags)
    ]


def tags_as_dicts(tags: Sequence[TagScore], with_category: bool = True) -> list[dict]:
    if with_category:
        return [{"tag": t.tag, "score": round(t.score, 6), "category": t.category.name} for t in tags]
    return [{"tag": t.tag, "score": round(t.score, 6)} for t in tags]


def api_response(tags: Sequence[TagScore], tag_text: str) -> dict:
    """The ``/tag`` JSON: flat tags (best first), the same tags per category, count, string."""
    return {
        "tags": tags_as_dicts(tags),
        "categories": [
            {"id": c.id, "name": c.name, "color": c.color, "tags": tags_as_dicts(group, with_category=False)}
            for c, group in group_by_category(tags)
        ],
        "count": len(tags),
        "tag_string": tag_text,
    }


def authors_json_entry(file: str, tags: Sequence[TagScore]) -> dict:
    """One element of the authors' CLI ``--format json`` list: ``{"file", "tags": [{"tag", "score"}]}``."""
    return {"file": file, "tags": tags_as_dicts(tags, with_category=False)}


def pretty_text(tags: Sequence[TagScore], bar_width: int = 20) -> str:
    """Rank, score, bar and tag per line, as the authors' CLI ``--format pretty`` prints."""
    lines = []
    width = len(str(len(tags)))
    for rank, t in enumerate(tags, 1):
        filled = min(bar_width, max(0, math.floor(t.score * bar_width + 0.5)))
        bar = "█" * filled + "░" * (bar_width - filled)
        lines.append(f"{rank:>{width}}. {t.score:.3f} {bar} {t.tag}")
    return "\n".join(lines)
