"""The tagging controls of the Tag and Batch tabs, built from the options' declaration.

One widget per ``TagOptions`` field, in declaration order, with its label, range, default,
choices and help: a choice is a radio, a bounded number a slider, a flag a checkbox, text a
textbox, and ``categories`` a checkbox group of the categories this vocabulary has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass
from typing import Any

import gradio as gr
import numpy as np
from gradio.components import Component

from tagger.options import OPTION_FIELDS, OPTION_TYPES, TagOptions, option_info
from tagger.vocab import CATEGORIES, Category, Vocabulary

GROUPS = ("selection", "format")  # one accordion each, in this order
ELEM_IDS = {"categories": "category-filter"}  # elem_id if not the option's name with dashes


def present_categories(vocab: Vocabulary) -> list[Category]:
    """Categories that have at least one tag in this vocabulary, in display order."""
    ids = set(np.unique(vocab.category_ids).tolist())
    return [c for c in CATEGORIES if c.id in ids]


@dataclass
class OptionControls:
    """The widgets by option name, in declaration order."""

    widgets: dict[str, Component]

    def inputs(self) -> list[Component]:
        return list(self.widgets.values())

    def values(self, values: Sequence | Mapping[Component, object]) -> dict[str, object]:
        """Option values by name, from the widgets' values in ``inputs()`` order or by widget."""
        if isinstance(values, Mapping):
            return {name: values[widget] for name, widget in self.widgets.items()}
        return dict(zip(self.widgets, values, strict=True))

    def options(self, values: Sequence | Mapping[Component, object]) -> TagOptions:
        return TagOptions.from_values(**self.values(values))


def option_widget(field: Field, category_names: list[str], elem_id: str) -> Component:
    info = option_info(field)
    label, help_text = info.label, info.help
    default: Any = field.default
    if field.name == "categories":
        return gr.CheckboxGroup(category_names, value=category_names, label=label, info=help_text, elem_id=elem_id)
    if info.choices:
        return gr.Radio(list(info.choices), value=default, label=label, info=help_text, elem_id=elem_id)
    if OPTION_TYPES[field.name] is bool:
        return gr.Checkbox(value=default, label=label, info=help_text, elem_id=elem_id)
    if info.minimum is not None and info.maximum is not None:
        return gr.Slider(
            info.minimum, info.maximum, default, step=info.step, label=label, info=help_text, elem_id=elem_id
        )
    return gr.Textbox(default, label=label, info=help_text, elem_id=elem_id)


def build_option_controls(
    vocab: Vocabulary, *, id_prefix: str = "", format_title: str = "Tag string", format_open: bool = False
) -> OptionControls:
    """The options in two accordions, "Selection" and ``format_title``, with their defaults."""
    category_names = [c.name for c in present_categories(vocab)]
    widgets: dict[str, Component] = {}
    for group in GROUPS:
        title, is_open = ("Selection", True) if group == "selection" else (format_title, format_open)
        with gr.Accordion(title, open=is_open):
            for field in OPTION_FIELDS:
                if option_info(field).group == group:
                    elem_id = id_prefix + ELEM_IDS.get(field.name, field.name.replace("_", "-"))
                    widgets[field.name] = option_widget(field, category_names, elem_id)
    return OptionControls({f.name: widgets[f.name] for f in OPTION_FIELDS})
