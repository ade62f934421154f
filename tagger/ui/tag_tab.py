"""The Tag tab and the ``/tag`` API endpoint.

The model runs once per image. The server then sends the page the scores at or above the
floor (``tagger.results.page_scores``, a few kB) and the page selects, formats and draws the
tags itself (``assets/tag_rules.js``, ``assets/tag_view.js``): a filter change updates one HTML
block and one textbox without a server round trip. The rules in ``tag_rules.js`` are those of
``tagger.results`` / ``tagger.options``, which stay the one definition for the API and the CLI;
``tests/test_rules_parity.py`` holds the two to the same answers.

Clicking a tag shows where it comes from (its relevance heatmap) over the image; its ✕ adds it
to the excluded tags.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from tagger.errors import FetchError
from tagger.fetch import fetch_url
from tagger.options import MODES, OPTION_FIELDS, OPTION_NAMES, ORDERS, TagOptions, option_info
from tagger.relevance import DEFAULT_LAYERS_FROM_END, heatmap_images
from tagger.results import add_to_tag_list, api_response, page_scores, select_tags
from tagger.ui.context import HEAVY_QUEUE, TAG_QUEUE, AppContext, user_errors
from tagger.ui.controls import DEFAULTS, build_option_controls, tag_options
from tagger.ui.features_tab import heatmap_info, heatmap_markdown, run_heatmap
from tagger.ui.inputs import SafeFile, SafeImage, image_upload
from tagger.vocab import CATEGORIES, Category, Vocabulary, normalize_tag

ASSETS = Path(__file__).resolve().parent / "assets"
LOOKUP_ROWS = 12
EMPTY = "Upload an image to see its tags."
HEATMAP_OPACITY = 0.5
# Options that only mean something in one mode (see TagOptions.__post_init__): hidden in the others.
MODE_ONLY = {
    "threshold": "threshold",
    "character_threshold": "threshold",
    "category_thresholds": "threshold",
    "topk_per_category": "topk",
}
# Option names that the present OptionControls spells differently.
_CONTROL_ALIASES = {"topk_per_category": "topk", "escape_parentheses": "escape"}


# -- the option controls, by option name --------------------------------------------------------


def option_components(controls: Any) -> dict[str, gr.components.Component]:
    """The option widgets of ``build_option_controls`` by option name, in ``OPTION_NAMES`` order
    (a mapping or an object with one attribute per option both work)."""
    found: dict[str, gr.components.Component] = {}
    for name in OPTION_NAMES:
        if isinstance(controls, Mapping):
            component = controls.get(name)
        else:
            component = getattr(controls, name, None) or getattr(controls, _CONTROL_ALIASES.get(name, ""), None)
        if component is not None:
            found[name] = component
    return found


def add_missing_controls(components: dict[str, gr.components.Component], id_prefix: str) -> None:
    """Text boxes, from the declaration, for options the shared controls do not offer yet
    (the include-only list), so that every option is in the page."""
    for f in OPTION_FIELDS:
        if f.name in components or not isinstance(f.default, str):
            continue
        info = option_info(f)
        components[f.name] = gr.Textbox(
            f.default,
            label=info.label,
            info=info.help,
            placeholder="comma-separated; empty: no limit",
            elem_id=f"{id_prefix}{f.name.replace('_', '-')}",
        )
    order = {name: i for i, name in enumerate(OPTION_NAMES)}
    items = sorted(components.items(), key=lambda item: order[item[0]])
    components.clear()
    components.update(items)


def field_ids(components: dict[str, gr.components.Component], id_prefix: str) -> dict[str, str]:
    """An element id for every option control (kept where it has one): the page shows an
    option's error sentence next to it."""
    ids = {}
    for name, component in components.items():
        if not component.elem_id:
            component.elem_id = f"{id_prefix}{name.replace('_', '-')}"
        ids[name] = component.elem_id
    return ids


def hide_for_mode(components: dict[str, gr.components.Component], mode: str) -> None:
    """Start with the controls that do not apply to ``mode`` hidden (the page does the rest)."""
    for name, only in MODE_ONLY.items():
        if name in components:
            components[name].visible = only == mode


def wire_mode_visibility(components: dict[str, gr.components.Component]) -> None:
    """Show only the controls the chosen mode uses: in the page, no round trip."""
    names = [n for n in MODE_ONLY if n in components]
    components["mode"].change(
        None,
        inputs=components["mode"],
        outputs=[components[n] for n in names],
        js=f"(mode) => TagView.modeVisibility(mode, {json.dumps(names)}, {json.dumps(MODE_ONLY)})",
        api_visibility="private",
        show_progress="hidden",
    )


def wire_field_checks(components: dict[str, gr.components.Component], ids: dict[str, str]) -> None:
    """Check the options as they are typed and put each sentence next to its field (the Batch
    tab: its options are used on "Tag all", but a mistake should show at once)."""
    names = list(components)
    config = json.dumps({"fields": {n: ids[n] for n in ("category_thresholds", "threshold", "floor") if n in ids}})
    gr.on(
        [c.change for c in components.values()],
        None,
        inputs=list(components.values()),
        outputs=None,
        js=f"(...values) => TagView.validate({json.dumps(names)}, values, {config})",
        api_visibility="private",
        show_progress="hidden",
    )


# -- what the page is sent ------------------------------------------------------------------------


def rules_config() -> dict:
    """``TagRules.configure``'s argument: the category table, option defaults and choices."""
    defaults = TagOptions()
    return {
        "categories": [[c.id, c.name, c.color] for c in CATEGORIES],
        "defaults": {name: getattr(defaults, name) for name in OPTION_NAMES},
        "modes": list(MODES),
        "orders": list(ORDERS),
    }


def page_script() -> str:
    """The page's rules and view, as one <script> for the document head."""
    code = "\n".join((ASSETS / name).read_text(encoding="utf-8") for name in ("tag_rules.js", "tag_view.js"))
    config = json.dumps(rules_config()).replace("</", "<\\/")
    assert "</script" not in code.lower()
    return f"<script>\n{code}\nTagRules.configure({config});\n</script>"


@dataclass
class ScoredImage:
    """One image's model output, kept server-side for lookups and more scores."""

    scores: np.ndarray
    seconds: float
    key: str  # new for every image: the page scrolls to the results of a new image


def page_payload(ctx: AppContext, scored: ScoredImage, floor: float | None) -> dict:
    """The scores the page needs for floors down to ``floor`` (at most the default floor, so
    that lowering it a little needs no second trip), plus the summary's facts."""
    try:
        cutoff = min(max(float(floor), 0.0), DEFAULTS.floor)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        cutoff = DEFAULTS.floor
    payload = page_scores(scored.scores, ctx.vocab, cutoff)
    payload.update(id=scored.key, seconds=round(scored.seconds, 3), device=ctx.tagger.device.type)
    return payload


def error_payload(message: str) -> dict:
    return {"id": uuid.uuid4().hex, "error": message}


# -- look-ups and heatmaps ----------------------------------------------------------------------


def present_categories(vocab: Vocabulary) -> list[Category]:
    """Categories that have at least one tag in this vocabulary, in display order."""
    ids = set(np.unique(vocab.category_ids).tolist())
    return [c for c in CATEGORIES if c.id in ids]


def lookup_rows(query: str, scores: np.ndarray | None, vocab: Vocabulary, limit: int = LOOKUP_ROWS) -> list[list]:
    """Tags matching ``query``: an exact match first, then prefix and substring matches, best
    score first when there is an image (else prefixes before substrings); with its score."""
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
        elif needle in key:
            contains.extend(indices)
        if scores is None and len(prefix) >= limit:
            break
    others = [*prefix, *contains]
    if scores is not None:
        others.sort(key=lambda i: -float(scores[i]))  # stable: prefixes first among equal scores
    rows = []
    for i in [*exact, *others][:limit]:
        score = "—" if scores is None else f"{float(scores[i]):.4f}"
        rows.append([vocab.tags[i], vocab.category_of(i).name, score])
    return rows


def heatmap_view(ctx: AppContext, path: str | None, tag: str | None) -> tuple[np.ndarray, str]:
    """A tag's relevance over the image as the model sees it, and its caption: one model call."""
    layers = min(DEFAULT_LAYERS_FROM_END, ctx.tagger.model.config.num_layers)
    seen, index, result = run_heatmap(ctx, path, tag, layers)
    overlay, _ = heatmap_images(seen, result.map, HEATMAP_OPACITY, "bilinear")
    return overlay, heatmap_markdown(heatmap_info(ctx, index, result, layers))


def fetch_image(image: SafeImage, url: str) -> str:
    """An image URL downloaded with the app's limits (public addresses only, size and time
    caps) into Gradio's cache, as the image inputs do it."""
    url = (url or "").strip()
    if not url:
        raise FetchError("Paste the address of an image (http or https) first.")
    if "://" not in url:
        url = "https://" + url
    path = fetch_url(
        url,
        Path(image.GRADIO_CACHE) / "fetched",
        max_bytes=image.max_download_bytes,
        timeout=image.download_timeout,
    )
    image.temp_files.add(str(path))  # removed with the rest of the cache
    return str(path)


def message(text: str) -> str:
    return f"⚠️ {text}"


def sentence(fn, *args) -> tuple[Any, str | None]:
    """``(fn(*args), None)``, or ``(None, the error's sentence)``: for UI events that keep
    their last good output and show the sentence instead of failing."""
    try:
        return user_errors(fn)(*args), None
    except gr.Error as e:
        return None, str(e.message)


# -- the tab --------------------------------------------------------------------------------------


@dataclass
class TagTab:
    image: SafeImage  # the image the other tabs reuse
    scores: gr.State


def build_tag_tab(ctx: AppContext) -> TagTab:
    vocab = ctx.vocab
    categories = present_categories(vocab)
    scored_state = gr.State(None)
    scores_state = gr.State(None)  # the scores alone, for the lookup and the other tabs

    with gr.Row(equal_height=False, elem_id="tag-layout"):
        with gr.Column(scale=5, min_width=320, elem_id="tag-left"):
            with gr.Column(elem_id="tag-input"):
                image = image_upload("tag-image")
                with gr.Column(visible=False, elem_id="tag-heatmap-panel") as heat_panel:
                    heat_image = gr.Image(
                        label="Where the tag comes from",
                        type="numpy",
                        format="png",
                        interactive=False,
                        height=380,
                        elem_id="tag-heatmap",
                    )
                    back = gr.Button("Back to the image", size="sm", elem_id="tag-heatmap-back")
                heat_caption = gr.Markdown(elem_id="tag-heatmap-caption")
                with gr.Row(equal_height=True):
                    url = gr.Textbox(
                        label="…or an image address",
                        placeholder="https://example.com/image.png",
                        submit_btn="Fetch",
                        max_lines=1,
                        elem_id="tag-url",
                    )
                url_note = gr.Markdown(elem_id="tag-url-note")
                if ctx.examples:
                    gr.Examples(ctx.examples, inputs=image, label="Examples")
            with gr.Column(elem_id="tag-controls"):
                option_controls = build_option_controls(categories)
                controls = option_components(option_controls)
                add_missing_controls(controls, "")

        with gr.Column(scale=7, min_width=320, elem_id="tag-results"):
            if ctx.demo_mode:
                gr.Markdown(
                    "⚠️ **Demo mode**: a tiny random-weight model and a made-up vocabulary. "
                    "The tags below are meaningless; start without `--demo` for the real model.",
                    elem_id="demo-warning",
                )
            payload = gr.JSON(None, visible=False, elem_id="tag-payload")
            all_tags = gr.Textbox(
                label="Tags (all selected categories)",
                lines=3,
                max_lines=12,
                interactive=False,
                buttons=["copy"],
                elem_id="tag-string",
            )
            view = gr.HTML(
                f'<div class="tv"><p class="tv-empty">{EMPTY}</p></div>',
                head=page_script(),
                js_on_load=(
                    "TagView.bind(element, trigger, 'tag-view');"
                    # The view's custom events, named here so that Gradio offers them in Python:
                    " void ['tag_select', 'tag_exclude', 'need_scores'];"
                ),
                apply_default_css=False,  # no prose margins: the bars are dense on purpose
                elem_id="tag-view",
            )
            gr.Markdown("Click a tag to see where it comes from in the image; ✕ excludes it.", elem_id="tag-view-help")
            with gr.Accordion("Look up any tag", open=False):
                lookup = gr.Textbox(
                    label="Search the vocabulary",
                    placeholder=f"any of the {len(vocab):,} tags; click a row for its heatmap",
                    elem_id="lookup",
                )
                lookup_table = gr.Dataframe(
                    headers=["tag", "category", "score"],
                    datatype=["str", "str", "str"],
                    interactive=False,
                    elem_id="lookup-table",
                )

    ids = field_ids(controls, "")
    hide_for_mode(controls, DEFAULTS.mode)
    wire_mode_visibility(controls)
    names = list(controls)
    render_config = {
        "view": "tag-view",
        "empty": EMPTY,
        "fields": {n: ids[n] for n in ("category_thresholds", "threshold", "character_threshold", "floor") if n in ids},
    }
    gr.on(
        [payload.change, *(c.change for c in controls.values())],
        None,
        inputs=[payload, *controls.values()],
        outputs=[view, all_tags],
        js=f"(payload, ...values) => TagView.update(payload, {json.dumps(names)}, values, {json.dumps(render_config)})",
        trigger_mode="always_last",
        api_visibility="private",
        show_progress="hidden",
    )

    def tag_image(path: str | None, floor: float | None) -> list:
        if path is None:
            return [None, None, None]
        started = time.perf_counter()
        scores, error = sentence(ctx.scores_for, path)
        if error is not None:
            return [gr.skip(), gr.skip(), error_payload(error)]
        scored = ScoredImage(scores, time.perf_counter() - started, uuid.uuid4().hex)
        return [scored, scores, page_payload(ctx, scored, floor)]

    image.change(
        tag_image,
        inputs=[image, controls["floor"]],
        outputs=[scored_state, scores_state, payload],
        api_visibility="private",
        concurrency_id=TAG_QUEUE,
        show_progress_on=[view],
    )
    # A new image is shown as itself, not under an old heatmap.
    image.change(
        None,
        outputs=[image, heat_panel, heat_caption],
        js="() => [{__type__: 'update', visible: true}, {__type__: 'update', visible: false}, ''];",
        api_visibility="private",
        show_progress="hidden",
    )

    def more_scores(scored: ScoredImage | None, evt: gr.EventData) -> dict:
        floor = getattr(evt, "_data", {}).get("floor")
        if scored is None or not isinstance(floor, (int, float)):
            return gr.skip()
        return page_payload(ctx, scored, floor)

    view.need_scores(more_scores, inputs=scored_state, outputs=payload, queue=False, api_visibility="private")

    def exclude_tag(text: str | None, evt: gr.EventData) -> str:
        return add_to_tag_list(text, str(evt.tag))

    view.tag_exclude(
        exclude_tag,
        inputs=controls["exclude"],
        outputs=controls["exclude"],
        queue=False,
        api_visibility="private",
        show_progress="hidden",
    )

    heat_outputs = [image, heat_panel, heat_image, heat_caption]

    def show_heatmap(path: str | None, tag: str) -> list:
        result, error = sentence(heatmap_view, ctx, path, tag)
        if error is not None:
            return [gr.skip(), gr.skip(), gr.skip(), message(error)]
        overlay, caption = result
        return [gr.update(visible=False), gr.update(visible=True), overlay, caption]

    def heatmap_for_bar(path: str | None, evt: gr.EventData) -> list:
        return show_heatmap(path, str(evt.tag))

    def heatmap_for_row(path: str | None, evt: gr.SelectData) -> list:
        row = evt.row_value or []
        return show_heatmap(path, str(row[0]) if row else None)

    scroll = "() => { document.getElementById('tag-input')?.scrollIntoView({block: 'nearest', behavior: 'smooth'}); }"
    for event, handler in ((view.tag_select, heatmap_for_bar), (lookup_table.select, heatmap_for_row)):
        event(
            handler,
            inputs=image,
            outputs=heat_outputs,
            api_visibility="private",
            concurrency_id=HEAVY_QUEUE,
            show_progress_on=[image, heat_image],
        ).then(None, js=scroll, api_visibility="private", show_progress="hidden")
    back.click(
        None,
        outputs=[image, heat_panel],
        js="() => [{__type__: 'update', visible: true}, {__type__: 'update', visible: false}]",
        api_visibility="private",
        show_progress="hidden",
    )

    def fetch(address: str) -> list:
        path, error = sentence(fetch_image, image, address)
        if error is not None:
            return [gr.skip(), message(error)]
        return [path, ""]

    url.submit(
        fetch,
        inputs=url,
        outputs=[image, url_note],
        api_visibility="private",
        concurrency_id="fetch",
        concurrency_limit=4,
        show_progress_on=[url],
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
    return TagTab(image=image, scores=scores_state)


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
