"""The Batch tab and the ``/tag_batch`` API endpoint: many images or zips in, captions out.

The work itself is ``tagger.batch.run_batch``; this module only lays out the controls (the
same selection and tag-string controls as the Tag tab, with the same defaults) and turns
the result into table rows, two downloads and a summary line.
"""

from __future__ import annotations

import gradio as gr

from tagger.batch import BatchOutput, ImageResult, run_batch
from tagger.errors import SelectionError
from tagger.intake import BatchLimits
from tagger.options import MODES, ORDERS, TagOptions
from tagger.ui.context import HEAVY_QUEUE, AppContext, user_errors
from tagger.ui.controls import DEFAULTS, build_option_controls
from tagger.ui.inputs import SafeFile
from tagger.ui.tag_tab import (
    add_missing_controls,
    field_ids,
    hide_for_mode,
    option_components,
    present_categories,
    wire_field_checks,
    wire_mode_visibility,
)

LIMITS = BatchLimits()
CHUNK_SIZE = 32  # images per model (GPU) call; see tagger.batch for why

TOP_TAGS = 8  # tags shown per image in the results table
TABLE_HEADERS = ["file", "concept", "tags", "top tags"]

API_DESCRIPTION = (
    "Tag many images at once. `files`: image files and/or zip archives (sub-folders of a zip are "
    "recorded as the concept). Every other parameter is optional, with the UI's defaults, and means "
    "what it means for `/tag`. Returns the results table, a zip of kohya-style `.txt` captions (same "
    "folders and stems as the images), a JSONL file (one line per image: sha256, filename, concept, "
    "tags or error) and a summary line. "
    f"Limits: {LIMITS.max_files} images, {LIMITS.max_upload_bytes // 2**20} MiB uploaded, "
    f"{LIMITS.max_total_bytes // 2**20} MiB unpacked per request."
)


def result_row(result: ImageResult) -> list:
    """One results-table row (``TABLE_HEADERS``)."""
    if result.error is not None:
        return [result.filename, result.concept, 0, f"⚠ {result.error}"]
    return [result.filename, result.concept, len(result.tags), ", ".join(t.tag for t in result.tags[:TOP_TAGS])]


def summary_markdown(output: BatchOutput, limit: int = 10) -> str:
    text = f"**{output.images} image{'s' if output.images != 1 else ''} tagged**"
    text += f" · {output.errors} error{'s' if output.errors != 1 else ''}"
    if output.skipped:
        text += f" · {len(output.skipped)} skipped (not images)"
    text += f" · {output.seconds:.1f} s"
    if output.skipped:
        shown = ", ".join(f"`{name.replace('`', chr(39))}`" for name in output.skipped[:limit])
        more = f" and {len(output.skipped) - limit} more" if len(output.skipped) > limit else ""
        text += f"\n\nSkipped: {shown}{more}."
    if output.renamed:
        shown = ", ".join(f"{image} → {caption}" for image, caption in output.renamed[:5])
        more = f" and {len(output.renamed) - 5} more" if len(output.renamed) > 5 else ""
        text += f"\n\nSame name in the same folder, so these captions were renamed: {shown}{more}."
    return text


def batch_outputs(
    ctx: AppContext, files: list[str] | None, options: TagOptions, progress: gr.Progress | None = None
) -> tuple[list[list], str, str, str]:
    """(table rows, captions zip path, JSONL path, summary) for an upload: the UI's and the API's work."""
    paths = [getattr(f, "name", f) for f in files or []]

    def advance(done: int, total: int, name: str) -> None:
        if progress is not None:
            progress((done, total), desc=f"Tagged {name}", unit="images")

    if progress is not None:
        progress((0, None), desc="Reading the upload")
    output = run_batch(
        paths,
        prepare=ctx.tagger.prepare,
        run=ctx.runner.probabilities,  # one GPU call per chunk of CHUNK_SIZE images
        vocab=ctx.vocab,
        options=options,
        limits=LIMITS,
        chunk_size=CHUNK_SIZE,
        progress=advance,
    )
    # Plain paths (not component updates), so that API clients receive the files themselves.
    rows = [result_row(r) for r in output.results]
    return rows, str(output.captions_zip), str(output.jsonl), summary_markdown(output)


def ui_options(values: dict) -> TagOptions:
    # In the Tag tab no ticked box shows nothing; for a batch that would be empty captions.
    if values.get("categories") is not None and not values["categories"]:
        raise SelectionError("Tick at least one category.")
    return TagOptions.from_values(**values)


def build_batch_tab(ctx: AppContext) -> None:
    categories = present_categories(ctx.vocab)

    with gr.Row(equal_height=False, elem_id="batch-layout"):
        with gr.Column(scale=5, min_width=320, elem_id="batch-left"):
            with gr.Column(elem_id="batch-input"):
                files = SafeFile(
                    file_count="multiple",
                    # No file_types: Gradio would refuse the whole upload for one stray file (a
                    # caption .txt dragged in with its images); the engine skips and names those.
                    type="filepath",
                    label="Images and/or zip files (sub-folders of a zip become concepts)",
                    elem_id="batch-files",
                )
                run_button = gr.Button("Tag all", variant="primary", elem_id="batch-run")
                run_message = gr.Markdown(elem_id="batch-message", elem_classes=["ui-message"])
                gr.Markdown(
                    f"Up to {LIMITS.max_files:,} images per run. Captions follow the kohya/sd-scripts "
                    "convention: `folder/image.txt` next to `folder/image.png`.",
                    elem_id="batch-help",
                )
            with gr.Column(elem_id="batch-controls"):
                option_controls = build_option_controls(
                    categories,
                    id_prefix="batch-",
                    format_title="Caption format",
                    format_open=True,
                    prepend_example="trigger word, masterpiece",
                )
                controls = option_components(option_controls)
                add_missing_controls(controls, "batch-")

        with gr.Column(scale=7, min_width=320, elem_id="batch-results"):
            summary = gr.Markdown(
                "Upload images or a zip, then press **Tag all**.", label="Summary", elem_id="batch-summary"
            )
            with gr.Row():
                captions_file = gr.DownloadButton(
                    "Captions (.zip)", value=None, interactive=False, elem_id="batch-captions"
                )
                jsonl_file = gr.DownloadButton("Tags (.jsonl)", value=None, interactive=False, elem_id="batch-jsonl")
            table = gr.Dataframe(
                label="Results",
                headers=TABLE_HEADERS,
                datatype=["str", "str", "number", "str"],
                interactive=False,
                wrap=True,
                # Fixed widths: a narrow screen scrolls the table sideways instead of breaking "29" in two.
                column_widths=["180px", "110px", "64px", "360px"],
                max_height=600,
                elem_id="batch-table",
            )

    ids = field_ids(controls, "batch-")
    hide_for_mode(controls, DEFAULTS.mode)
    wire_mode_visibility(controls)
    wire_field_checks(controls, ids)
    names = list(controls)

    def tag_all(files: list[str] | None, *values: object, progress: gr.Progress = gr.Progress()) -> list:  # noqa: B008
        try:
            options = user_errors(ui_options)(dict(zip(names, values, strict=True)))
            rows, captions, jsonl, text = user_errors(batch_outputs)(ctx, files, options, progress)
        except gr.Error as e:
            # The last good results stay; the sentence goes under the button.
            return [gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"⚠️ {e.message}"]
        return [
            rows,
            gr.DownloadButton(value=captions, interactive=True),
            gr.DownloadButton(value=jsonl, interactive=True),
            text,
            "",
        ]

    run_button.click(
        tag_all,
        inputs=[files, *controls.values()],
        outputs=[table, captions_file, jsonl_file, summary, run_message],
        api_visibility="private",
        concurrency_id=HEAVY_QUEUE,
        show_progress_on=[table],
    )

    build_batch_api(ctx, [c.name for c in categories])


def build_batch_api(ctx: AppContext, category_names: list[str]) -> None:
    """``/tag_batch``: hidden components give every parameter a type and the UI's default."""
    with gr.Column(visible=False):
        files_in = SafeFile(file_count="multiple", type="filepath", label="files")
        mode_in = gr.Dropdown(list(MODES), value=DEFAULTS.mode, label="mode")
        threshold_in = gr.Slider(0, 1, DEFAULTS.threshold, label="threshold")
        character_threshold_in = gr.Slider(0, 1, DEFAULTS.character_threshold, label="character_threshold")
        topk_in = gr.Number(DEFAULTS.topk_per_category, precision=0, minimum=1, label="topk_per_category")
        floor_in = gr.Slider(0, 1, DEFAULTS.floor, label="floor")
        categories_in = gr.CheckboxGroup(category_names, value=category_names, label="categories")
        category_thresholds_in = gr.Textbox("", label="category_thresholds")
        exclude_in = gr.Textbox("", label="exclude")
        prepend_in = gr.Textbox("", label="prepend")
        underscores_in = gr.Checkbox(False, label="underscores")
        escape_in = gr.Checkbox(False, label="escape_parentheses")
        order_in = gr.Dropdown(list(ORDERS), value=DEFAULTS.order, label="order")
        table_out = gr.Dataframe(headers=TABLE_HEADERS, label="table")
        captions_out = gr.File(label="captions")
        jsonl_out = gr.File(label="jsonl")
        summary_out = gr.Markdown(label="summary")
        trigger = gr.Button(visible=False)

    @user_errors
    def tag_batch(
        files: list[str] | None,
        mode: str = DEFAULTS.mode,
        threshold: float = DEFAULTS.threshold,
        character_threshold: float = DEFAULTS.character_threshold,
        topk_per_category: float = DEFAULTS.topk_per_category,
        floor: float = DEFAULTS.floor,
        categories: list[str] | None = None,
        category_thresholds: str = "",
        exclude: str = "",
        prepend: str = "",
        underscores: bool = False,
        escape_parentheses: bool = False,
        order: str = DEFAULTS.order,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's documented idiom
    ):
        # Parameter names are the API's keyword names, the same as /tag's.
        options = ui_options(
            {
                "mode": mode,
                "threshold": threshold,
                "character_threshold": character_threshold,
                "topk_per_category": topk_per_category,
                "floor": floor,
                "categories": categories,
                "category_thresholds": category_thresholds,
                "exclude": exclude,
                "prepend": prepend,
                "underscores": underscores,
                "escape_parentheses": escape_parentheses,
                "order": order,
            }
        )
        return batch_outputs(ctx, files, options, progress)

    trigger.click(
        tag_batch,
        inputs=[
            files_in,
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
        outputs=[table_out, captions_out, jsonl_out, summary_out],
        api_name="tag_batch",
        api_description=API_DESCRIPTION,
        concurrency_id=HEAVY_QUEUE,
    )
