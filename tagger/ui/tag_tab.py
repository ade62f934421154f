"""The Tag tab.

The model runs once per image; its scores live in a ``gr.State``. Every threshold, filter
or format change re-renders from those scores with the pure functions in
``tagger.results`` / ``tagger.options`` and never calls the model again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr
import numpy as np

from tagger.results import TagScore, group_by_category, label_values, select_tags
from tagger.ui.context import TAG_QUEUE, AppContext, user_errors
from tagger.ui.controls import build_option_controls, present_categories
from tagger.ui.inputs import image_upload
from tagger.vocab import CATEGORIES, Category, Vocabulary, normalize_tag

MAX_BARS = 40  # label bars drawn per category; the tag strings always hold every selected tag
LOOKUP_ROWS = 12
# gr.Label's ``color`` only tints its heading (hidden here); the bars take this CSS variable.
LABEL_CSS = "\n".join(f"#label-{c.name} {{ --stat-background-fill: {c.color}; }}" for c in CATEGORIES)
# A hairline around each bar keeps the palest colours (meta's #e2e8f0) visible on a light theme.
LABEL_CSS += "\n[id^='label-'] .bar { box-shadow: 0 0 0 1px rgba(100, 116, 139, 0.35); }"


@dataclass
class CategoryView:
    category: Category
    column: gr.Column
    label: gr.Label
    text: gr.Textbox


def lookup_rows(query: str, scores: np.ndarray | None, vocab: Vocabulary, limit: int = LOOKUP_ROWS) -> list[list]:
    """Tags matching ``query`` (exact, then prefix, then substring), with this image's score."""
    needle = normalize_tag(query or "")
    if not needle:
        return []
    exact = vocab.find(needle)
    prefix: list[int] = []
    contains: list[int] = []
    for key, indices in vocab.normalized_index.items():
        if key == needle:
            continue
        if key.startswith(needle):
            prefix.extend(indices)
        elif needle in key and len(contains) < limit:
            contains.extend(indices)
        if len(prefix) >= limit:
            break
    rows = []
    for i in [*exact, *prefix, *contains][:limit]:
        score = "—" if scores is None else f"{float(scores[i]):.4f}"
        rows.append([vocab.tags[i], vocab.category_of(i).name, score])
    return rows


def build_tag_tab(ctx: AppContext) -> None:
    vocab = ctx.vocab
    categories = present_categories(vocab)
    scores_state = gr.State(None)
    seconds_state = gr.State(None)  # the last model run's time, kept in the summary across re-renders

    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            image = image_upload("tag-image")
            if ctx.examples:
                gr.Examples(ctx.examples, inputs=image, label="Examples")
            option_controls = build_option_controls(vocab)

        with gr.Column(scale=7, min_width=320):
            if ctx.demo_mode:
                gr.Markdown(
                    "⚠️ **Demo mode**: a tiny random-weight model and a made-up vocabulary. "
                    "The tags below are meaningless; start without `--demo` for the real model.",
                    elem_id="demo-warning",
                )
            summary = gr.Markdown("Upload an image to see its tags.", elem_id="summary")
            all_tags = gr.Textbox(
                label="Tags (all selected categories)",
                lines=3,
                max_lines=12,
                interactive=False,
                buttons=["copy"],
                elem_id="tag-string",
            )
            views: list[CategoryView] = []
            with gr.Row():
                for category in categories:
                    with gr.Column(visible=False, min_width=260) as column:
                        label = gr.Label(
                            label=category.name,
                            num_top_classes=MAX_BARS,
                            color=category.color,
                            show_heading=False,
                            elem_id=f"label-{category.name}",
                        )
                        text = gr.Textbox(
                            show_label=False,
                            lines=1,
                            max_lines=6,
                            interactive=False,
                            buttons=["copy"],
                            elem_id=f"tags-{category.name}",
                        )
                    views.append(CategoryView(category, column, label, text))
            with gr.Accordion("Look up any tag", open=False):
                lookup = gr.Textbox(
                    label="Search the vocabulary",
                    placeholder=f"any of the {len(vocab):,} tags",
                    elem_id="lookup",
                )
                lookup_table = gr.Dataframe(
                    headers=["tag", "category", "score"],
                    datatype=["str", "str", "str"],
                    interactive=False,
                    elem_id="lookup-table",
                )

    controls = option_controls.inputs()
    view_outputs = [summary, all_tags]
    for view in views:
        view_outputs += [view.column, view.label, view.text]

    def render(scores: np.ndarray | None, seconds: float | None, values: tuple) -> list:
        if scores is None:
            hidden = [gr.Column(visible=False), None, ""] * len(views)
            return ["Upload an image to see its tags.", "", *hidden]
        options = option_controls.options(values)
        # No ticked box shows nothing (for the options an empty list means "all").
        ticked = option_controls.values(values)["categories"]
        tags = select_tags(scores, vocab, options.selection) if ticked else []
        groups = dict((c.id, g) for c, g in group_by_category(tags))
        info = f"**{len(tags)} tags**"
        if seconds is not None:
            info += f" · model {seconds:.2f} s on {ctx.tagger.device.type}"
        out: list = [info, options.tag_string(tags)]
        for view in views:
            group: list[TagScore] = groups.get(view.category.id, [])
            out += [
                gr.Column(visible=bool(group)),
                gr.Label(value=label_values(group[:MAX_BARS]), label=f"{view.category.name} · {len(group)}"),
                options.tag_string(group),
            ]
        return out

    @user_errors
    def tag_image(path: str | None, *values):
        if path is None:
            return [None, None, *render(None, None, values)]
        started = time.perf_counter()
        scores = ctx.scores_for(path)
        seconds = time.perf_counter() - started
        return [scores, seconds, *render(scores, seconds, values)]

    @user_errors
    def rerender(scores: np.ndarray | None, seconds: float | None, *values):
        return render(scores, seconds, values)

    image.change(
        tag_image,
        inputs=[image, *controls],
        outputs=[scores_state, seconds_state, *view_outputs],
        api_visibility="private",
        concurrency_id=TAG_QUEUE,
    )
    gr.on(
        [c.change for c in controls],
        rerender,
        inputs=[scores_state, seconds_state, *controls],
        outputs=view_outputs,
        api_visibility="private",
        trigger_mode="always_last",
        queue=False,
        show_progress="hidden",
    )

    def run_lookup(query: str, scores: np.ndarray | None) -> list[list]:
        return lookup_rows(query, scores, vocab)

    gr.on(
        [lookup.change, scores_state.change],
        run_lookup,
        inputs=[lookup, scores_state],
        outputs=lookup_table,
        api_visibility="private",
        trigger_mode="always_last",
        queue=False,
        show_progress="hidden",
    )
