"""The tagging controls shared by the Tag and Batch tabs: same choices, defaults and meaning.

``OptionControls.inputs()`` lists the components in the order of ``tag_options``'s
parameters, which is also the order (and naming) of the ``/tag`` and ``/tag_batch`` API
parameters after the image(s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import gradio as gr

from tagger.options import TagOptions
from tagger.vocab import Category

MODE_CHOICES = [("Threshold", "threshold"), ("Top-k per category", "topk"), ("MCut (automatic)", "mcut")]
ORDER_CHOICES = [("By score", "score"), ("By category", "category")]
DEFAULTS = TagOptions()


@dataclass
class OptionControls:
    mode: gr.Radio
    threshold: gr.Slider
    character_threshold: gr.Slider
    topk: gr.Slider
    floor: gr.Slider
    categories: gr.CheckboxGroup
    category_thresholds: gr.Textbox
    exclude: gr.Textbox
    prepend: gr.Textbox
    underscores: gr.Checkbox
    escape: gr.Checkbox
    order: gr.Radio

    def inputs(self) -> list[gr.components.Component]:
        return [getattr(self, f.name) for f in fields(self)]


def build_option_controls(
    categories: Sequence[Category],
    *,
    id_prefix: str = "",
    format_title: str = "Tag string",
    format_open: bool = False,
    prepend_example: str = "masterpiece",
) -> OptionControls:
    """Selection and format controls in two accordions, with the defaults of ``TagOptions``."""
    names = [c.name for c in categories]
    with gr.Accordion("Selection", open=True):
        mode = gr.Radio(MODE_CHOICES, value=DEFAULTS.mode, label="Mode", elem_id=f"{id_prefix}mode")
        threshold = gr.Slider(0, 1, DEFAULTS.threshold, step=0.01, label="Threshold", elem_id=f"{id_prefix}threshold")
        character_threshold = gr.Slider(0, 1, DEFAULTS.character_threshold, step=0.01, label="Character threshold")
        topk = gr.Slider(1, 200, DEFAULTS.topk_per_category, step=1, label="Top-k per category")
        floor = gr.Slider(0, 1, DEFAULTS.floor, step=0.01, label="Never show tags below")
        category_thresholds = gr.Textbox(
            "",  # a value gives the API parameter a default
            label="Per-category thresholds",
            placeholder="artist=0.6, copyright=0.7",
            info="Threshold mode: overrides for single categories.",
        )
        category_filter = gr.CheckboxGroup(
            names, value=names, label="Categories", elem_id=f"{id_prefix}category-filter"
        )
    with gr.Accordion(format_title, open=format_open):
        with gr.Row():
            underscores = gr.Checkbox(
                label="Underscores", value=DEFAULTS.underscores, elem_id=f"{id_prefix}underscores"
            )
            escape = gr.Checkbox(label=r"Escape ( ) for prompts", value=DEFAULTS.escape_parentheses)
        order = gr.Radio(ORDER_CHOICES, value=DEFAULTS.order, label="Order")
        exclude = gr.Textbox("", label="Exclude tags", placeholder="comma-separated, e.g. simple background")
        prepend = gr.Textbox("", label="Prepend tags", placeholder=f"comma-separated, e.g. {prepend_example}")
    return OptionControls(
        mode=mode,
        threshold=threshold,
        character_threshold=character_threshold,
        topk=topk,
        floor=floor,
        categories=category_filter,
        category_thresholds=category_thresholds,
        exclude=exclude,
        prepend=prepend,
        underscores=underscores,
        escape=escape,
        order=order,
    )


def tag_options(
    mode: str | None = None,
    threshold: float | None = None,
    character_threshold: float | None = None,
    topk_per_category: float | None = None,
    floor: float | None = None,
    categories: Sequence[str] | str | None = None,
    category_thresholds: str | None = None,
    exclude: str | None = None,
    prepend: str | None = None,
    underscores: bool | None = None,
    escape_parentheses: bool | None = None,
    order: str | None = None,
) -> TagOptions:
    """Control or API values → ``TagOptions``; ``None`` means the default."""
    return TagOptions.from_values(**{k: v for k, v in locals().items()})
