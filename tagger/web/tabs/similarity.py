"""The Similarity tab (two images, a zip of pairs, or pairs of image URLs); ``/similarity`` and
``/similarity_batch`` serve the first two. Decoding stays outside the GPU call; many pairs make
one model call per ``PAIRS_PER_CALL`` pairs, and their scores download as CSV and JSONL.
"""

from __future__ import annotations

import gradio as gr

from tagger.datasets.batch import new_output_dir
from tagger.features.similarity import BatchSimilarity
from tagger.web.context import HEAVY_EVENT, AppContext, attempt, download_button, in_page, warning
from tagger.web.inputs import SafeFile, image_upload
from tagger.web.service import compare, score_url_pairs, score_zip

URL_PAIRS_EXAMPLE = '[["https://example.com/a/cat.png", "https://example.com/b/cat.jpg"]]'


def summary_markdown(result: BatchSimilarity, limit: int = 50) -> str:
    s = result.stats()
    a, b = result.folders
    if s["pairs"]:
        line = (
            f"**{s['pairs']} pairs** (`{a}` ↔ `{b}`) · mean **{s['mean']:.4f}** · "
            f"min {s['min']:.4f} · max {s['max']:.4f}"
        )
    else:
        line = f"**No pair could be scored** (`{a}` ↔ `{b}`)."
    parts = [line]
    for title, items in (
        ("Unmatched files", result.unmatched),
        ("Errors", [f"{f}: {e}" for f, e in result.errors]),
        ("Ignored (not images or outside the folders)", result.ignored),
    ):
        if items:
            shown = "\n".join(f"- `{x}`" for x in items[:limit])
            more = f"\n- … and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{title} ({len(items)}):\n{shown}{more}")
    return "\n\n".join(parts)


# The verbal bands of a similarity (lower bounds, best first) and their bar colours; the
# descriptors of unrelated images still score above zero, so the bands sit high.
BANDS: tuple[tuple[float, str, str], ...] = (
    (0.95, "near-identical", "#15803d"),
    (0.8, "very similar", "#4d7c0f"),
    (0.6, "similar", "#a16207"),
    (0.4, "somewhat similar", "#c2410c"),
    (-1.0, "different", "#b91c1c"),
)


def similarity_band(value: float) -> tuple[str, str]:
    """The band's words and colour for a cosine similarity."""
    return next((words, colour) for bound, words, colour in BANDS if value >= bound)


def similarity_bar(value: float | None) -> str:
    """A bar as long as the similarity (-1 to 1 → 0 to 100 %) in its band's colour."""
    if value is None:
        return ""
    words, colour = similarity_band(value)
    percent = max(0.0, min(100.0, (value + 1) * 50))
    return (
        f'<div class="sim-bar" role="img" aria-label="similarity {value:.4f}: {words}">'
        f'<span style="width:{percent:.1f}%;background:{colour}"></span></div>'
    )


def build_similarity_tab(ctx: AppContext, source: gr.Image, tab: gr.Tab, resolution: gr.Slider) -> None:
    """``source``, ``resolution``: the Tag tab's image (copied to image A when it changes) and resolution.
    A pair is scored on an upload here, or when the tab is opened on a pair (or size) it has not scored."""
    gr.Markdown(
        "Cosine similarity of the images' descriptors (CLS + register tokens after the final norm, "
        "L2-normalised): 1 for the same image, lower the more they differ."
    )
    scored_pair = gr.State(None)  # the (A, B, long edge) of the similarity shown
    with gr.Row():
        image_a = image_upload("similarity-a", label="Image A (the Tag tab's, or upload another)", height=300)
        image_b = image_upload("similarity-b", label="Image B", height=300)
    result = gr.Markdown("Upload two images to compare them.", elem_id="similarity-result")
    bar = gr.HTML("", elem_id="similarity-bar")

    gr.Markdown(
        "### Many pairs\nA zip with two top-level folders; files with the same name (without extension, "
        "e.g. `a/cat.png` and `b/cat.jpg`) are paired. `__MACOSX` and hidden files are skipped."
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=280):
            archive = SafeFile(
                label="Zip of two folders", file_types=[".zip"], type="filepath", elem_id="similarity-zip"
            )
            run = gr.Button("Score pairs", variant="primary", elem_id="similarity-batch-button")
            url_pairs = gr.Textbox(
                label="…or pairs of image addresses (JSON)",
                placeholder=URL_PAIRS_EXAMPLE,
                info="Fetched like the Tag tab's image address: public http(s) addresses, the same size limits.",
                lines=3,
                elem_id="similarity-urls",
            )
            run_urls = gr.Button("Score URL pairs", elem_id="similarity-urls-button")
        with gr.Column(scale=8, min_width=320):
            batch_summary = gr.Markdown(elem_id="similarity-batch-summary")
            with gr.Row():
                csv_file = download_button("Scores (.csv)", "similarity-csv", size="sm")
                jsonl_file = download_button("Scores (.jsonl)", "similarity-jsonl", size="sm")
            table = gr.Dataframe(
                headers=["stem", "file A", "file B", "similarity"],
                datatype=["str", "str", "str", "number"],
                interactive=False,
                buttons=["copy", "fullscreen"],
                elem_id="similarity-batch-table",
            )

    def on_pair(path_a: str | None, path_b: str | None, max_size: object, shown: tuple | None) -> dict:
        if path_a is None or path_b is None:
            return {
                scored_pair: None,
                result: "Upload two images to compare them (image A can come from the Tag tab).",
                bar: "",
            }
        key, error = attempt(lambda: (path_a, path_b, ctx.resolution(max_size)))
        if error is None and shown == key:
            return gr.skip()  # this pair at this size is on the page already
        value, error = attempt(compare, ctx, path_a, path_b, max_size)
        if error is not None:
            return {result: warning(error)}
        return {
            scored_pair: key,
            result: f"Similarity **{value:.4f}** · {similarity_band(value)[0]} "
            "(cosine of the L2-normalised descriptors)",
            bar: similarity_bar(value),
        }

    def shown_batch(outcome: BatchSimilarity | None, error: str | None) -> dict:
        if error is not None or outcome is None:
            return {batch_summary: warning(error or "")}  # the last good table stays
        csv_path, jsonl_path = outcome.write_downloads(new_output_dir())
        return {
            table: [[s, a, b, round(v, 4)] for s, a, b, v in outcome.rows],
            batch_summary: summary_markdown(outcome),
            csv_file: gr.DownloadButton(value=str(csv_path), interactive=True),
            jsonl_file: gr.DownloadButton(value=str(jsonl_path), interactive=True),
        }

    def on_batch(path: str | None, max_size: object, progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008
        report = lambda done, total: progress((done, total), desc="Scoring pairs")  # noqa: E731
        return shown_batch(*attempt(score_zip, ctx, path, report, max_size))

    def on_urls(text: str, max_size: object, progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008
        report = lambda done, total: progress((done, total), desc="Scoring pairs")  # noqa: E731
        return shown_batch(*attempt(score_url_pairs, ctx, text, image_a.fetch_into_cache, report, max_size))

    # One upload, many views: the Tag tab's image is image A (in the page, no model call).
    in_page(source.change, "(value) => value", inputs=source, outputs=image_a)
    gr.on(
        [image_a.input, image_b.input, tab.select],
        on_pair,
        inputs=[image_a, image_b, resolution, scored_pair],
        outputs=[scored_pair, result, bar],
        **HEAVY_EVENT,
        trigger_mode="always_last",
    )
    for button, handler, source_input in ((run, on_batch, archive), (run_urls, on_urls, url_pairs)):
        button.click(
            handler,
            inputs=[source_input, resolution],
            outputs=[table, batch_summary, csv_file, jsonl_file],
            **HEAVY_EVENT,
            show_progress_on=[batch_summary],
        )
