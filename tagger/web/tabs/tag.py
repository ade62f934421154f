"""The Tag tab and the ``/tag`` API endpoint.

The model runs once per image; the page gets the scores at or above the floor
(``tagger.web.page_scores``, a few kB) and selects, formats and draws the tags itself
(``assets/tag_rules.js``, ``assets/tag_view.js``): a filter change needs no server round trip.
Its rules are those of ``tagger.tags`` (the one definition for the API and the CLI);
``tests/test_rules_parity.py`` holds the two to the same answers. About any value beyond ASCII
text and plain numbers it asks the server once (``page_ruling``, through the view's
``need_scores`` event): no model call. Clicking a tag shows its relevance heatmap over the
image; its ✕ adds it to the excluded tags.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from tagger.engine.resolution import MIN_SIZE, SIZE_STEP
from tagger.engine.vocab import CATEGORIES, Vocabulary, normalize_tag
from tagger.errors import SelectionError
from tagger.features.relevance import DEFAULT_LAYERS_FROM_END
from tagger.tags.options import MODES, OPTION_NAMES, ORDERS, TagOptions
from tagger.tags.selection import IMPLIED, add_to_tag_list, parse_tag_list
from tagger.web.context import HEAVY_EVENT, QUICK_EVENT, TAG_QUEUE, AppContext, attempt, in_page, warning
from tagger.web.controls import CHECKED_FIELDS, OptionControls, build_option_controls
from tagger.web.inputs import SafeImage, image_upload
from tagger.web.page_scores import page_scores
from tagger.web.tabs.features import heatmap_view, image_output

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LOOKUP_ROWS = 12
EMPTY = "Upload an image to see its tags."
HEATMAP_OPACITY = 0.5
DEFAULTS = TagOptions()
# The image shown as itself again (the heatmap panel hidden, its caption cleared).
SHOW_IMAGE = "() => [{__type__: 'update', visible: true}, {__type__: 'update', visible: false}, '']"


def rules_config(vocab: Vocabulary | None = None) -> dict:
    """``TagRules.configure``'s argument: categories, option defaults and choices, and with ``vocab``'s
    relations the aliases of typed tags (old name → the tag it means; sent once per page)."""
    relations = vocab.relations if vocab is not None else None
    return {
        "categories": [[c.id, c.name, c.color] for c in CATEGORIES],
        "defaults": {name: getattr(DEFAULTS, name) for name in OPTION_NAMES},
        "modes": list(MODES),
        "orders": list(ORDERS),
        "implied": list(IMPLIED),
        "aliases": relations.input_aliases if relations is not None else {},
    }


def page_ruling(values: dict) -> dict:
    """The server's reading of option values the page leaves to it (``TagRules.NeedsServer``) as
    ``TagRules.fromRuling`` takes it: the error sentence and its option, or the selection and format."""
    try:
        options = TagOptions.from_values(**values)
    except SelectionError as e:
        return {"error": str(e), "field": error_field(values, str(e))}
    selection = options.selection
    return {
        "selection": {
            "threshold": selection.threshold,
            "floor": selection.floor,
            "mcut": selection.mcut,
            "categoryThresholds": list(selection.category_thresholds.items()),
            "categoryTopk": list(selection.category_topk.items()),
            "categories": None if selection.categories is None else sorted(selection.categories),
            "exclude": sorted(selection.exclude),
            "include": sorted(selection.include),
            "implied": selection.implied,
        },
        "format": {
            "underscores": bool(options.underscores),
            "escapeParentheses": bool(options.escape_parentheses),
            "order": options.order,
            "prepend": parse_tag_list(options.prepend),
        },
    }


def error_field(values: dict, message: str) -> str | None:
    """The option an error is about: the last (top-k before the mode that makes it count)
    whose default makes the sentence go or change."""
    for name in reversed(OPTION_NAMES):
        if values.get(name) is None:
            continue
        try:
            TagOptions.from_values(**{**values, name: None})
        except SelectionError as e:
            if str(e) == message:
                continue
        return name
    return None


def page_script(vocab: Vocabulary | None = None) -> str:
    """The page's rules and view, as one <script> for the document head."""
    code = "\n".join((ASSETS / name).read_text(encoding="utf-8") for name in ("tag_rules.js", "tag_view.js"))
    config = json.dumps(rules_config(vocab)).replace("</", "<\\/")
    assert "</script" not in code.lower()
    return f"<script>\n{code}\nTagView.configure({config});\n</script>"


@dataclass
class ScoredImage:
    """One image's model output, kept server-side for lookups and more scores."""

    scores: np.ndarray
    seconds: float
    key: str  # new for every image: the page scrolls to the results of a new image
    path: str = ""  # the upload these scores are of
    size: int = 0  # the long edge it ran at


def page_payload(ctx: AppContext, scored: ScoredImage, floor: float | None) -> dict:
    """The scores the page needs for floors down to ``floor`` (at most the default floor, so
    that lowering it a little needs no second trip), plus the summary's facts."""
    try:
        cutoff = DEFAULTS.floor if floor is None else min(max(float(floor), 0.0), DEFAULTS.floor)
    except (TypeError, ValueError):
        cutoff = DEFAULTS.floor
    payload = page_scores(scored.scores, ctx.vocab, cutoff)
    payload.update(id=scored.key, seconds=round(scored.seconds, 3), device=ctx.tagger.device.type, size=scored.size)
    return payload


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
    return [
        [vocab.tags[i], vocab.category_of(i).name, "—" if scores is None else f"{float(scores[i]):.4f}"]
        for i in [*exact, *others][:limit]
    ]


@dataclass
class TagTab:
    image: SafeImage  # the image the other tabs reuse
    controls: OptionControls  # the tagging settings, which the Batch tab uses too
    size: gr.Slider  # the resolution


def build_tag_tab(ctx: AppContext) -> TagTab:
    vocab = ctx.vocab
    scored_state = gr.State(None)
    scores_state = gr.State(None)  # the scores alone, for the lookup

    with gr.Row(equal_height=False, elem_id="tag-layout"):
        with gr.Column(scale=5, min_width=320, elem_id="tag-left"):
            with gr.Column(elem_id="tag-input"):
                image = image_upload("tag-image")
                with gr.Column(visible=False, elem_id="tag-heatmap-panel") as heat_panel:
                    heat_image = image_output("Where the tag comes from", elem_id="tag-heatmap", height=380)
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
                size = gr.Slider(
                    MIN_SIZE,
                    ctx.size_cap,
                    ctx.default_size,
                    step=SIZE_STEP,
                    label="Resolution (px)",
                    info=f"The long edge the model sees; larger is slower (trained at 512; this server allows up "
                    f"to {ctx.size_cap}).",
                    elem_id="tag-size",
                )
                if ctx.examples:
                    gr.Examples(ctx.examples, inputs=image, label="Examples")
            with gr.Column(elem_id="tag-controls"):
                # Per-category thresholds are set on the cards; the typed box is shown on request.
                option_controls = build_option_controls(vocab, typed=("category_thresholds",))
                typed_toggle = gr.Button(
                    "Type per-category thresholds", size="sm", variant="secondary", elem_id="typed-toggle"
                )

        with gr.Column(scale=7, min_width=320, elem_id="tag-results"):
            if ctx.demo_mode:
                gr.Markdown(
                    "⚠️ **Demo mode**: a tiny random-weight model and a made-up vocabulary. "
                    "The tags below are meaningless; start without `--demo` for the real model.",
                    elem_id="demo-warning",
                )
            payload = gr.JSON(None, visible=False, elem_id="tag-payload")
            # The cards' order and per-card top k (JSON, written by the page): in the DOM, out of sight.
            cards = gr.Textbox("", show_label=False, container=False, elem_id="tag-cards", elem_classes=["tv-offstage"])
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
                head=page_script(vocab),
                js_on_load=(
                    "TagView.bind(element, trigger, 'tag-view');"
                    # The view's custom events, named here so that Gradio offers them in Python:
                    " void ['tag_select', 'tag_exclude', 'tag_unexclude', 'need_scores'];"
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

    controls = option_controls.widgets
    option_controls.wire_mode_visibility()
    names = list(controls)
    render_config = {
        "view": "tag-view",
        "empty": EMPTY,
        "fields": {name: str(controls[name].elem_id) for name in CHECKED_FIELDS},  # mistakes shown beside them
        "cards": "tag-cards",
        "quick": option_controls.quick_bar(),
    }
    in_page(
        [payload.change, cards.change, *(c.change for c in controls.values())],
        f"(payload, cards, ...values) => TagView.update(payload, {json.dumps(names)}, values, "
        f"{json.dumps(render_config)}, cards)",
        inputs=[payload, cards, *controls.values()],
        outputs=[view, all_tags],
        trigger_mode="always_last",
    )

    def tag_image(path: str | None, floor: float | None, max_size: float | None) -> dict:
        if path is None:
            return {scored_state: None, scores_state: None, payload: None}
        started = time.perf_counter()
        scores, error = attempt(ctx.scores_for, path, max_size)
        if error is not None:
            return {payload: {"id": uuid.uuid4().hex, "error": error}}  # the last image's scores stay
        scored = ScoredImage(scores, time.perf_counter() - started, uuid.uuid4().hex, path, ctx.resolution(max_size))
        return {scored_state: scored, scores_state: scores, payload: page_payload(ctx, scored, floor)}

    def resize(path: str | None, floor: float | None, max_size: float | None, scored: ScoredImage | None) -> dict:
        size_now, _ = attempt(ctx.resolution, max_size)
        if path is None or (scored is not None and scored.path == path and scored.size == size_now):
            return gr.skip()  # a release without a change (the slider's blur, its reset at the same value)
        return tag_image(path, floor, max_size)

    for listen, tag_with, extra in ((image.change, tag_image, []), (size.release, resize, [scored_state])):
        listen(
            tag_with,
            inputs=[image, controls["floor"], size, *extra],
            outputs=[scored_state, scores_state, payload],
            api_visibility="private",
            concurrency_id=TAG_QUEUE,
            show_progress_on=[view],
        )
    in_page([image.change, back.click], SHOW_IMAGE, outputs=[image, heat_panel, heat_caption])

    def more_scores(scored: ScoredImage | None, evt: gr.EventData) -> dict:
        floor = getattr(evt, "floor", None)  # the page sends {floor}
        if scored is None or not isinstance(floor, (int, float)):
            return gr.skip()
        payload = page_payload(ctx, scored, floor)
        asked = getattr(evt, "values", None)  # settings the page leaves to the server
        if isinstance(asked, dict):
            payload["ruling"] = {"key": getattr(evt, "key", None), **page_ruling(asked)}
        return payload

    # "multiple": Gradio's default ("once") drops a request made while another is pending, and
    # its "always_last" re-sends the first one's data; the page keys each answer itself.
    view.need_scores(more_scores, inputs=scored_state, outputs=payload, **QUICK_EVENT, trigger_mode="multiple")

    def exclude_tag(text: str | None, evt: gr.EventData) -> str:
        return add_to_tag_list(text, str(evt.tag))

    def unexclude_tag(text: str | None, evt: gr.EventData) -> str:
        key = normalize_tag(str(evt.tag))  # compared as ``Selection`` compares tags
        return ", ".join(t for t in parse_tag_list(text or "") if normalize_tag(t) != key)

    for list_event, list_change in ((view.tag_exclude, exclude_tag), (view.tag_unexclude, unexclude_tag)):
        list_event(list_change, inputs=controls["exclude"], outputs=controls["exclude"], **QUICK_EVENT)

    in_page(typed_toggle.click, "() => { document.getElementById('tag-controls').classList.toggle('tv-typing'); }")

    def show_heatmap(path: str | None, tag: str | None, max_size: float | None) -> dict:
        layers = min(DEFAULT_LAYERS_FROM_END, ctx.tagger.model.config.num_layers)
        result, error = attempt(heatmap_view, ctx, path, tag, layers, HEATMAP_OPACITY, max_size)
        if error is not None:
            return {heat_caption: warning(error)}  # the last heatmap (or the image) stays
        overlay, _, caption = result
        return {
            image: gr.update(visible=False),
            heat_panel: gr.update(visible=True),
            heat_image: overlay,
            heat_caption: caption,
        }

    def heatmap_for_bar(path: str | None, max_size: float | None, evt: gr.EventData) -> dict:
        return show_heatmap(path, str(evt.tag), max_size)

    def heatmap_for_row(path: str | None, max_size: float | None, evt: gr.SelectData) -> dict:
        row = evt.row_value or []
        return show_heatmap(path, str(row[0]) if row else None, max_size)

    scroll = "() => { document.getElementById('tag-input')?.scrollIntoView({block: 'nearest', behavior: 'smooth'}); }"
    for event, handler in ((view.tag_select, heatmap_for_bar), (lookup_table.select, heatmap_for_row)):
        shown = event(
            handler,
            inputs=[image, size],
            outputs=[image, heat_panel, heat_image, heat_caption],
            **HEAVY_EVENT,
            show_progress_on=[image, heat_image],
        )
        in_page(shown.then, scroll)

    def fetch(address: str) -> dict:
        # Downloaded as the image input downloads URLs (its limits, public addresses only).
        url = (address or "").strip()
        if not url:
            return {url_note: warning("Paste the address of an image (http or https) first.")}
        path, error = attempt(image.fetch_into_cache, url if "://" in url else "https://" + url)
        if error is not None:
            return {url_note: warning(error)}
        return {image: path, url_note: ""}

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
        **QUICK_EVENT,
        trigger_mode="always_last",
    )
    return TagTab(image=image, controls=option_controls, size=size)
