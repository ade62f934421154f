"""The tagging controls of the Tag tab (the Batch tab tags with them too), from the options' declaration:
one widget per ``TagOptions`` field, in declaration order, with its label, range, default, choices
and help; ``categories`` offers the categories this vocabulary has. Widgets of one mode show only
in it, and mistakes show next to their field as they are typed: both in the page (``assets/tag_view.js``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass
from typing import Any, TypeAlias

import gradio as gr
import numpy as np
from gradio.components import Component

from tagger.engine.vocab import CATEGORIES, Category, Vocabulary
from tagger.errors import SelectionError
from tagger.tags.options import OPTION_FIELDS, OPTION_TYPES, TagOptions, option_info
from tagger.web.context import in_page

OPTION_FIELD_BY_NAME = {f.name: f for f in OPTION_FIELDS}

# One accordion per option group, in this order: (group, title, open).
ACCORDIONS = (("selection", "Selection", True), ("format", "Tag string", False))
ELEM_IDS = {"categories": "category-filter"}  # elem_id if not the option's name with dashes
# Options that only mean something in one mode (see TagOptions.__post_init__): hidden in the others.
MODE_ONLY = {
    "threshold": "threshold",
    "character_threshold": "threshold",
    "category_thresholds": "threshold",
    "topk_per_category": "topk",
}
DEFAULT_MODE = TagOptions().mode
# Unticked when the page opens, as on the authors' page (the API's default keeps every category).
UNTICKED_CATEGORIES = ("contributor", "unassigned")
# The fields whose mistakes the page shows beside them.
CHECKED_FIELDS = ("category_thresholds", "threshold", "character_threshold", "floor", "exclude", "include")
# The widgets option_widget makes (their events, such as .change, are declared per class).
OptionWidget: TypeAlias = gr.CheckboxGroup | gr.Radio | gr.Checkbox | gr.Slider | gr.Textbox


def present_categories(vocab: Vocabulary) -> list[Category]:
    """Categories that have at least one tag in this vocabulary, in display order."""
    ids = set(np.unique(vocab.category_ids).tolist())
    return [c for c in CATEGORIES if c.id in ids]


def ticked_categories(vocab: Vocabulary) -> list[str]:
    """Ticked when the page opens: every present category but ``UNTICKED_CATEGORIES`` (all if that leaves none)."""
    names = [c.name for c in present_categories(vocab)]
    return [n for n in names if n not in UNTICKED_CATEGORIES] or names


@dataclass
class OptionControls:
    """The widgets by option name, in declaration order."""

    widgets: dict[str, OptionWidget]

    def inputs(self) -> list[OptionWidget]:
        return list(self.widgets.values())

    def options(self, values: Mapping[Component, object]) -> TagOptions:
        """The options of the widgets' values (by widget, as Gradio passes a set of inputs)."""
        by_name = {name: values[widget] for name, widget in self.widgets.items()}
        # Unticking every box means "none" to a person (the Tag tab then shows no tags), while
        # an empty value means "all" to TagOptions: a batch run would tag with every category.
        if by_name.get("categories") == []:
            raise SelectionError("Tick at least one category.")
        return TagOptions.from_values(**by_name)

    def quick_bar(self) -> dict:
        """What the bar above the cards offers (``TagView.update``'s ``config.quick``): the modes
        as (label, value), the categories of the checkbox group, and the ids of the controls it writes to."""
        names = ("mode", "threshold", "topk_per_category", "categories")
        group = self.widgets["categories"]
        assert isinstance(group, gr.CheckboxGroup)
        return {
            "modes": [list(choice) for choice in option_info(OPTION_FIELD_BY_NAME["mode"]).choices],
            "categories": [str(choice[1]) for choice in group.choices],
            "ids": {name: str(self.widgets[name].elem_id) for name in names},
        }

    def wire_mode_visibility(self) -> None:
        """Show only the widgets the chosen mode uses: in the page, no round trip."""
        in_page(
            self.widgets["mode"].change,
            f"(mode) => TagView.modeVisibility(mode, {json.dumps(list(MODE_ONLY))}, {json.dumps(MODE_ONLY)})",
            inputs=self.widgets["mode"],
            outputs=[self.widgets[name] for name in MODE_ONLY],
        )


def option_widget(field: Field, category_names: list[str], ticked: list[str], typed: bool = False) -> OptionWidget:
    """``typed``: a box shown only on request (CSS class ``tv-typed``; the page writes into it)."""
    info = option_info(field)
    default: Any = field.default
    # Shown in the default mode only if it applies there (the page does the rest).
    visible = MODE_ONLY.get(field.name, DEFAULT_MODE) == DEFAULT_MODE
    elem_id = ELEM_IDS.get(field.name, field.name.replace("_", "-"))
    common: dict[str, Any] = {"label": info.label, "info": info.widget_help or info.help, "elem_id": elem_id}
    common.update(visible=visible, elem_classes=["tv-typed"] if typed else None)
    if field.name == "categories":
        return gr.CheckboxGroup(category_names, value=ticked, **common)
    if info.choices:
        return gr.Radio(list(info.choices), value=default, **common)
    if OPTION_TYPES[field.name] is bool:
        return gr.Checkbox(value=default, **common)
    if info.minimum is not None and info.maximum is not None:
        return gr.Slider(info.minimum, info.maximum, default, step=info.step, **common)
    return gr.Textbox(default, **common)


def build_option_controls(vocab: Vocabulary, *, typed: Sequence[str] = ()) -> OptionControls:
    """The options in their ``ACCORDIONS``; the ``typed`` ones hidden until asked for (``option_widget``)."""
    category_names = [c.name for c in present_categories(vocab)]
    ticked = ticked_categories(vocab)
    widgets: dict[str, OptionWidget] = {}
    for group, title, is_open in ACCORDIONS:
        with gr.Accordion(title, open=is_open):
            for field in OPTION_FIELDS:
                if option_info(field).group == group:
                    widgets[field.name] = option_widget(field, category_names, ticked, field.name in typed)
    return OptionControls({f.name: widgets[f.name] for f in OPTION_FIELDS})
