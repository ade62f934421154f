"""The Tag tab and the ``/tag`` API endpoint.

The model runs once per image; its scores live in a ``gr.State``. Every threshold, filter
or format change re-renders from those scores with the pure functions in
``tagger.results`` / ``tagger.options`` and never calls the model again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr
import numpy as np

from tagger.options import MODES, ORDERS
from tagger.results import TagScore, api_response, group_by_category, label_values, select_tags
from tagger.ui.context import TAG_QUEUE, AppContext, user_errors
from tagger.ui.controls import DEFAULTS, build_option_controls, tag_options
from tagger.ui.inputs import SafeFile, image_upload
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


def present_categories(vocab: Vocabulary) -> list[Category]:
    """Categories that have at least one tag in this vocabulary, in display order."""
    ids = set(np.unique(vocab.category_ids).tolist())
    return [c for c in CATEGORIES if c.id in ids]


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
            option_controls = build_option_controls(categories)

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
        options = tag_options(*values)
        selected_names = set(values[5] or [])  # no ticked box shows nothing (options would mean "all")
        tags = [] if not selected_names else select_tags(scores, vocab, options.selection)
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

    build_tag_api(ctx)


def build_tag_api(ctx: AppContext) -> None:
    """``/tag``: image in, JSON out. Hidden components give every parameter a type and the
    UI's default, so only the image is required."""
    with gr.Column(visible=False):
        image_in = SafeFile(label="image", file_types=None, type="filepath")
        mode_in = gr.Dropdown(list(MODES), value=DEFAULTS.mode, label="mode")
        threshold_in = gr.Slider(0, 1, DEFAULTS.threshold, label="threshold")
        character_threshold_in = gr.Slider(0, 1, DEFAULTS.character_threshold, label="character_threshold")
        topk_in = gr.Number(DEFAULTS.topk_per_category, precision=0, minimum=1, label="topk_per_category")
        floor_in = gr.Slider(0, 1, DEFAULTS.floor, label="floor")
        categories_in = gr.Textbox("", label="categories")
        category_thresholds_in = gr.Textbox("", label="category_thresholds")
        exclude_in = gr.Textbox("", label="exclude")
        prepend_in = gr.Textbox("", label="prepend")
        underscores_in = gr.Checkbox(False, label="underscores")
        escape_in = gr.Checkbox(False, label="escape_parentheses")
        order_in = gr.Dropdown(list(ORDERS), value=DEFAULTS.order, label="order")
        result = gr.JSON(label="result")
        trigger = gr.Button(visible=False)

    @user_errors
    def tag(
        image: str | None,
        mode: str = DEFAULTS.mode,
        threshold: float = DEFAULTS.threshold,
        character_threshold: float = DEFAULTS.character_threshold,
        topk_per_category: float = DEFAULTS.topk_per_category,
        floor: float = DEFAULTS.floor,
        categories: str = "",
        category_thresholds: str = "",
        exclude: str = "",
        prepend: str = "",
        underscores: bool = False,
        escape_parentheses: bool = False,
        order: str = DEFAULTS.order,
    ) -> dict:
        # Parameter names are the API's keyword names (gradio_client uses them).
        options = tag_options(
            mode,
            threshold,
            character_threshold,
            topk_per_category,
            floor,
            categories,
            category_thresholds,
            exclude,
            prepend,
            underscores,
            escape_parentheses,
            order,
        )
        scores = ctx.scores_for(image)
        tags = select_tags(scores, ctx.vocab, options.selection)
        return api_response(tags, options.tag_string(tags))

    trigger.click(
        tag,
        inputs=[
            image_in,
            mode_in,
            threshold_in,
            character_threshold_in,
            topk_in,
            floor_in,
            categories_in,
            category_thresholds_in,
            exclude_in,
            prepend_in,
            underscores_in,
            escape_in,
            order_in,
        ],
        outputs=result,
        api_name="tag",
        api_description="Tag one image. Only `image` is required; every other parameter has the UI's default.",
        concurrency_id=TAG_QUEUE,
    )
