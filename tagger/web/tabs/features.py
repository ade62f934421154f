"""The Features tab (PCA false colour, per-tag heatmaps); ``/pca`` and ``/heatmap`` serve the
same work. Each request makes one ``ctx.runner.call`` (decoding stays outside it); colour and
opacity changes re-render from the stored analysis without the model.
"""

from __future__ import annotations

import json

import gradio as gr
import numpy as np

from tagger.features.pca import DEFAULT_COLOURS, pca_images
from tagger.features.relevance import DEFAULT_LAYERS_FROM_END, MAX_LAYERS_FROM_END
from tagger.tags.selection import top_tags
from tagger.web.context import HEAVY_EVENT, QUICK_EVENT, AppContext, attempt, in_page, user_errors, warning
from tagger.web.inputs import image_upload
from tagger.web.service import run_heatmap, run_pca

TOP_TAGS = 25  # choices offered in the heatmap's tag dropdown
# On a phone the maps come under the image and its controls: bring them into view once drawn.
SCROLL_TO_MAPS = (
    "() => { if (window.matchMedia('(max-width: 768px)').matches) "
    "document.getElementById('features-summary')?.scrollIntoView({block: 'start', behavior: 'smooth'}); }"
)
UPSCALE_CHOICES = [("Patches (nearest)", "nearest"), ("Smooth (bilinear)", "bilinear")]


def heatmap_view(
    ctx: AppContext, path: str | None, tag: str | None, layers_from_end: int, opacity: float, max_size: object
) -> tuple[np.ndarray, np.ndarray, str]:
    """A tag's relevance over the image as the model sees it, alone, and its caption: one model call."""
    over, heat, info = run_heatmap(ctx, path, tag, layers_from_end, opacity, "bilinear", max_size)
    caption = (
        f"**{info['tag']}** ({info['category']}) · probability **{info['probability']:.3f}** · "
        f"gradient × activation at the input of block {info['block']} "
        f"({info['layers_from_end']} from the end)"
    )
    if not info["positive"]:
        caption += "\n\nNo patch raises this tag's score at this depth: every contribution is negative."
    return over, heat, caption


def image_output(label: str, elem_id: str, height: int | None = None) -> gr.Image:
    """An image the app draws (a map, a heatmap), shown as it is."""
    # PNG: the maps are flat colour fields that lossy WebP (Gradio's default) would smear.
    return gr.Image(label=label, type="numpy", format="png", interactive=False, height=height, elem_id=elem_id)


def build_features_tab(ctx: AppContext, source: gr.Image, tab: gr.Tab, resolution: gr.Slider) -> None:
    """``source``, ``resolution``: the Tag tab's image (copied here when it changes; this tab can take
    its own) and resolution. The analysis runs on an upload here, or when the tab is opened on an
    image (or at a resolution) it has not analysed: never for a tab nobody looks at."""
    num_layers = ctx.tagger.model.config.num_layers
    low_depth = min(2, num_layers)
    maps_state = gr.State(None)  # ((image path, long edge), FeatureMaps) of the analysis shown

    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=300):
            image = image_upload("features-image", label="Image (the Tag tab's, or upload another)", height=320)
            if ctx.examples:
                gr.Examples(ctx.examples, inputs=image, label="Examples")
            with gr.Accordion("Colours and overlay", open=True):
                with gr.Row():
                    colours = [
                        gr.ColorPicker(colour, label=f"Component {i + 1}", elem_id=f"pca-colour-{i + 1}")
                        for i, colour in enumerate(DEFAULT_COLOURS)
                    ]
                # The blend's colour stops: one per component, the first 1 to 3 of them.
                stops = gr.Number(len(colours), precision=0, visible=False, elem_id="pca-stops")
                with gr.Row():
                    add_stop = gr.Button("Add a colour", size="sm", elem_id="pca-add-stop")
                    remove_stop = gr.Button("Remove a colour", size="sm", elem_id="pca-remove-stop")
                alpha = gr.Slider(0, 1, 0.5, step=0.05, label="Overlay opacity", elem_id="features-alpha")
                upscale = gr.Radio(UPSCALE_CHOICES, value="nearest", label="PCA upscaling")
        with gr.Column(scale=8, min_width=320):
            if ctx.demo_mode:
                gr.Markdown("⚠️ **Demo mode**: random weights, so these maps show structure but no meaning.")
            summary = gr.Markdown(
                "Upload an image (here or on the Tag tab) to see its patch features: the first three "
                "principal components of the final patch tokens as red, green and blue.",
                elem_id="features-summary",
            )
            with gr.Row():
                seen = image_output("What the model sees", elem_id="features-seen")
                pca = image_output("PCA: components 1-3 → RGB", elem_id="features-pca")
            with gr.Row():
                overlay = image_output("PCA over the image", elem_id="features-overlay")
                blend = image_output("Your colours, weighted by components 1-3", elem_id="features-blend")

            gr.Markdown("### Where does a tag come from?")
            with gr.Row(equal_height=True):
                tag = gr.Dropdown(
                    choices=[],
                    value=None,
                    allow_custom_value=True,
                    label="Tag",
                    info="This image's top tags, or type any tag of the vocabulary",
                    scale=3,
                    elem_id="heatmap-tag",
                )
                depth_default = min(DEFAULT_LAYERS_FROM_END, num_layers)
                depth: gr.Slider | gr.Number
                if num_layers > low_depth:
                    depth = gr.Slider(
                        low_depth,
                        min(num_layers, MAX_LAYERS_FROM_END),
                        depth_default,
                        step=1,
                        label="Blocks from the end",
                        info="Relevance is taken at the input of this block, counted from the end",
                        scale=2,
                    )
                else:  # a one- or two-block model (the demo) has a single usable depth
                    depth = gr.Number(depth_default, precision=0, visible=False)
                show = gr.Button("Show heatmap", variant="primary", scale=1, elem_id="heatmap-button")
            heat_summary = gr.Markdown(elem_id="heatmap-summary")
            with gr.Row():
                heat_overlay = image_output("Heatmap over the image", elem_id="heatmap-overlay")
                heat = image_output("Relevance (inferno: dark = none, yellow = most)", elem_id="heatmap")

    style: list[gr.Number | gr.ColorPicker | gr.Slider | gr.Radio] = [stops, *colours, alpha, upscale]
    analysis_outputs = [maps_state, seen, pca, overlay, blend, tag, summary, heat_overlay, heat, heat_summary]

    def maps_and_views(path: str, max_size: object, colours: tuple[str, ...], opacity: float, resample: str) -> tuple:
        maps = run_pca(ctx, path, max_size)
        return maps, pca_images(maps, colours, opacity, resample)

    def analysis(path: str | None, max_size: object, k: float, *style_values) -> dict:
        *palette, opacity, resample = style_values
        cleared = {heat_overlay: None, heat: None, heat_summary: ""}
        if path is None:
            empty = {maps_state: None, seen: None, pca: None, overlay: None, blend: None}
            prompt = "Upload an image here or on the Tag tab."
            return {**empty, tag: gr.Dropdown(choices=[], value=None), summary: prompt, **cleared}
        result, error = attempt(maps_and_views, path, max_size, tuple(palette[: int(k)]), opacity, resample)
        if error is not None:
            return {summary: warning(error)}  # the last good maps stay; the sentence says why
        maps, (pca_map, pca_overlay, colour_blend) = result
        top = top_tags(maps.probabilities, ctx.vocab, TOP_TAGS)
        choices = [(f"{t.tag} · {t.score:.2f}", t.tag) for t in top]
        height, width = maps.image.shape[:2]
        info = f"**{width}×{height}** as the model sees it · {maps.pca.shape[1]}×{maps.pca.shape[0]} patches"
        if top:
            info += f" · top tag **{top[0].tag}** ({top[0].score:.2f})"
        return {
            maps_state: ((path, ctx.resolution(max_size)), maps),
            seen: maps.image,
            pca: pca_map,
            overlay: pca_overlay,
            blend: colour_blend,
            tag: gr.Dropdown(choices=choices, value=top[0].tag if top else None),
            summary: info,
            **cleared,
        }

    def on_open(path: str | None, max_size: object, shown: tuple | None, *style_values) -> dict:
        key, error = attempt(lambda: (path, ctx.resolution(max_size)))
        if (shown is None and path is None) or (shown is not None and error is None and shown[0] == key):
            return gr.skip()  # nothing to show, or this image at this size is on the page already
        return analysis(path, max_size, *style_values)

    @user_errors
    def restyle(shown: tuple | None, k: float, *style_values) -> list:
        *palette, opacity, resample = style_values
        if shown is None:
            return [None, None, None]
        return list(pca_images(shown[1], tuple(palette[: int(k)]), opacity, resample))

    def on_heatmap(path: str | None, name: str | None, layers: float, opacity: float, max_size: object) -> dict:
        found, error = attempt(heatmap_view, ctx, path, name, int(layers), opacity, max_size)
        if error is not None:
            return {heat_summary: warning(error)}  # the last good heatmap stays
        return dict(zip((heat_overlay, heat, heat_summary), found, strict=True))

    for button, step in ((add_stop, "Math.min(k + 1, 3)"), (remove_stop, "Math.max(k - 1, 1)")):
        in_page(button.click, f"(k) => {step}", inputs=stops, outputs=stops)
    pickers = json.dumps(list(range(1, len(colours) + 1)))
    visible = f"(k) => {pickers}.map((i) => ({{__type__: 'update', visible: i <= k}}))"
    in_page(stops.change, visible, inputs=stops, outputs=colours)
    # One upload, many views: the Tag tab's image is this tab's image too (in the page).
    in_page(source.change, "(value) => value", inputs=source, outputs=image)
    for listen, handler, state_inputs in ((image.input, analysis, []), (tab.select, on_open, [maps_state])):
        inputs = [image, resolution, *state_inputs, *style]
        analysed = listen(handler, inputs=inputs, outputs=analysis_outputs, **HEAVY_EVENT)
        in_page(analysed.success, SCROLL_TO_MAPS)
    gr.on(
        [c.change for c in style],
        restyle,
        inputs=[maps_state, *style],
        outputs=[pca, overlay, blend],
        **QUICK_EVENT,
        trigger_mode="always_last",
    )
    gr.on(
        [show.click, tag.select],
        on_heatmap,
        inputs=[image, tag, depth, alpha, resolution],
        outputs=[heat_overlay, heat, heat_summary],
        **HEAVY_EVENT,
    )
