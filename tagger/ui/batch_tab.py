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
from tagger.runtime import IMAGES_PER_GPU_CALL
from tagger.ui.context import HEAVY_QUEUE, AppContext, user_errors
from tagger.ui.controls import DEFAULTS, build_option_controls, tag_options
from tagger.ui.inputs import SafeFile
from tagger.ui.tag_tab import present_categories

LIMITS = BatchLimits()
CHUNK_SIZE = IMAGES_PER_GPU_CALL  # images per model (GPU) call; see tagger.batch and tagger.runtime

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


def summary_markdown(output: BatchOutput) -> str:
    text = f"**{output.images} image{'s' if output.images != 1 else ''} tagged**"
    text += f" · {output.errors} error{'s' if output.errors != 1 else ''}"
    if output.skipped:
        text += f" · {len(output.skipped)} skipped (not images)"
    text += f" · {output.seconds:.1f} s"
    if output.renamed:
        shown = ", ".join(f"{image} → {caption}" for image, caption in output.renamed[:5])
        more = f" and {len(output.renamed) - 5} more" if len(output.renamed) > 5 else ""
        text += f"\n\nSame name in the same folder, so these captions were renamed: {shown}{more}."
    return text


def build_batch_tab(ctx: AppContext) -> None:
    categories = present_categories(ctx.vocab)

    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            files = SafeFile(
                file_count="multiple",
                # No file_types: Gradio would refuse the whole upload for one stray file (a
                # caption .txt dragged in with its images); the engine skips and counts those.
                type="filepath",
                label="Images and/or zip files (sub-folders of a zip become concepts)",
                elem_id="batch-files",
            )
            run_button = gr.Button("Tag all", variant="primary", elem_id="batch-run")
            gr.Markdown(
                f"Up to {LIMITS.max_files:,} images per run. Captions follow the kohya/sd-scripts "
                "convention: `folder/image.txt` next to `folder/image.png`.",
                elem_id="batch-help",
            )
            option_controls = build_option_controls(
                categories,
                id_prefix="batch-",
                format_title="Caption format",
                format_open=True,
                prepend_example="trigger word, masterpiece",
            )

        with gr.Column(scale=7, min_width=320):
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
                column_widths=["30%", "14%", "8%", "48%"],
                max_height=600,
                elem_id="batch-table",
            )

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
        if categories is not None and not categories:
            # In the Tag tab no ticked box shows nothing; for a batch that would be empty captions.
            raise SelectionError("Tick at least one category.")
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
        paths = [getattr(f, "name", f) for f in files or []]

        def advance(done: int, total: int, name: str) -> None:
            progress((done, total), desc=f"Tagged {name}", unit="images")

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

    event = run_button.click(
        tag_batch,
        inputs=[files, *option_controls.inputs()],
        outputs=[table, captions_file, jsonl_file, summary],
        api_name="tag_batch",
        api_description=API_DESCRIPTION,
        concurrency_id=HEAVY_QUEUE,
    )

    def enable_downloads() -> tuple:
        return gr.DownloadButton(interactive=True), gr.DownloadButton(interactive=True)

    event.success(
        enable_downloads,
        outputs=[captions_file, jsonl_file],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
