"""The user-facing tagging options, declared once (``TagOptions``) and shared by every front end,
so that they cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any, get_type_hints

from tagger.engine.vocab import CATEGORIES, Vocabulary
from tagger.errors import SelectionError
from tagger.tags.formats import tag_string
from tagger.tags.selection import Selection, TagScore, _check_count, parse_tag_list, resolve_category


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
class OptionInfo:
    """How a tagging option is presented: everything but its name, type and default."""

    label: str  # the UI's label
    help: str  # one sentence: API reference, MCP tool description, CLI --help
    widget_help: str = ""  # the UI's hint, where its widget reads differently from a value (default: help)
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (label, value)
    group: str = "selection"  # "selection" or "format": which panel of the UI holds it


def _option(default: object, **info: Any) -> Any:
    return field(default=default, metadata={"option": OptionInfo(**info)})


_PROBABILITY: dict[str, Any] = {"minimum": 0.0, "maximum": 1.0, "step": 0.01}  # the range of score options


@dataclass(frozen=True)
class TagOptions:
    """Every tagging control (name, type, default, range, label, help) as a field: the UI's widgets,
    the API signatures and reference, the MCP tools and the CLI flags derive from ``OPTION_FIELDS``.
    An instance validates the values and holds their ``Selection``; ``floor`` applies in every mode."""

    mode: str = _option(
        "threshold",
        label="Mode",
        help="threshold: fixed thresholds; topk: the k best tags of each category; mcut: an automatic "
        "threshold per category (MCut).",
        choices=(("Threshold", "threshold"), ("Top-k per category", "topk"), ("MCut (automatic)", "mcut")),
    )
    threshold: float = _option(
        0.35,
        label="Threshold",
        help="Threshold mode: the score a tag needs, for every category without its own threshold.",
        **_PROBABILITY,
    )
    character_threshold: float = _option(
        0.85,
        label="Character threshold",
        help="Threshold mode: the score a character tag needs.",
        **_PROBABILITY,
    )
    topk_per_category: int = _option(
        20,
        label="Top-k per category",
        help="Top-k mode: how many tags to keep from each category.",
        minimum=1,
        maximum=200,
        step=1,
    )
    floor: float = _option(
        0.05,
        label="Never show tags below",
        help="No tag scoring below this is returned, in any mode.",
        **_PROBABILITY,
    )
    categories: str | list[str] = _option(
        "",
        label="Categories",
        help="Categories to keep, as a list or comma-separated (e.g. 'general, character'); empty keeps all.",
        widget_help="Tags of the ticked categories are shown.",
    )
    category_thresholds: str = _option(
        "",
        label="Per-category thresholds",
        help="Threshold mode: overrides for single categories, e.g. 'artist=0.6, copyright=0.7'.",
    )
    exclude: str = _option(
        "",
        label="Exclude tags",
        help="Comma-separated tags never returned (case, '_' for space and \\( escapes are ignored).",
        group="format",
    )
    include: str = _option(
        "",
        label="Only these tags",
        help="Comma-separated tags: when not empty, no other tag is returned (the other rules still apply).",
        group="format",
    )
    prepend: str = _option(
        "",
        label="Prepend tags",
        help="Comma-separated tags put first in the tag string (e.g. a trigger word).",
        group="format",
    )
    underscores: bool = _option(
        False,
        label="Underscores",
        help="Write underscores instead of spaces in the tag string.",
        group="format",
    )
    escape_parentheses: bool = _option(
        False,
        label="Escape ( ) for prompts",
        help="Write \\( and \\) in the tag string, as prompt tools expect.",
        group="format",
    )
    order: str = _option(
        "score",
        label="Order",
        help="Tag string order: score (best first) or category (the display order of categories).",
        choices=(("By score", "score"), ("By category", "category")),
        group="format",
    )
    implied: str = _option(
        "keep",
        label="Implied tags",
        help="With tag implication files loaded: keep: as scored; remove: drop each tag that a more specific "
        "selected tag implies (wolf drops canine); add: a tag scores at least as high as the tags implying it "
        "(a confident wolf brings canine along).",
        widget_help="Implications (wolf → canine): keep as scored, remove the implied tags, or add them.",
        choices=(("Keep", "keep"), ("Remove implied", "remove"), ("Add implied", "add")),
    )
    selection: Selection = field(init=False, repr=False, compare=False)

    @classmethod
    def from_values(cls, **values: Any) -> TagOptions:
        """Options from UI or API values; ``None`` (what a raw REST call may send) means the default."""
        unknown = set(values) - set(OPTION_NAMES)
        if unknown:
            raise SelectionError(f"Unknown option {sorted(unknown)[0]!r}; the options are {', '.join(OPTION_NAMES)}.")
        # The values are untyped here: the endpoints check their types, __post_init__ and Selection their values.
        return cls(**{name: value for name, value in values.items() if value is not None})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SelectionError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}.")
        if self.order not in ORDERS:
            raise SelectionError(f"order must be one of {', '.join(ORDERS)}; got {self.order!r}.")
        categories = parse_tag_list(self.categories) if isinstance(self.categories, str) else self.categories
        per_category: dict[int | str, float] = {}
        category_topk: dict[int | str, int] = {}
        if self.mode == "threshold":
            per_category = {"character": self.character_threshold}
            per_category.update(parse_category_values(self.category_thresholds).items())
        elif self.mode == "topk":
            # Checked here so the sentence names the option (not each category it is copied to).
            category_topk = {c.id: _check_count("topk_per_category", self.topk_per_category) for c in CATEGORIES}
        selection = Selection(
            threshold=self.threshold,
            floor=self.floor,
            mcut=self.mode == "mcut",
            category_thresholds=per_category,
            category_topk=category_topk,
            categories=categories or None,
            exclude=self.exclude,
            include=self.include,
            implied=self.implied,
        )
        object.__setattr__(self, "selection", selection)

    def tag_string(self, tags: Sequence[TagScore], vocab: Vocabulary | None = None) -> str:
        """The tag string; with ``vocab``'s relations, prepended aliases become the names they point to."""
        relations = vocab.relations if vocab is not None else None
        return tag_string(
            tags,
            underscores=self.underscores,
            escape_parentheses=self.escape_parentheses,
            order=self.order,
            prepend=self.prepend,
            rename=relations.shown if relations is not None else None,
        )


# The declared options, in order, with their resolved types: what every front end derives from.
OPTION_FIELDS: tuple[Field, ...] = tuple(f for f in fields(TagOptions) if "option" in f.metadata)
OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in OPTION_FIELDS)
OPTION_TYPES: dict[str, object] = {
    name: hint for name, hint in get_type_hints(TagOptions).items() if name in OPTION_NAMES
}


def option_info(f: Field) -> OptionInfo:
    return f.metadata["option"]


def choice_values(name: str) -> tuple[str, ...]:
    """The allowed values of a choice option (``mode``, ``order``)."""
    return tuple(value for _, value in option_info(_FIELD_BY_NAME[name]).choices)


_FIELD_BY_NAME = {f.name: f for f in OPTION_FIELDS}
MODES = choice_values("mode")
ORDERS = choice_values("order")
