"""The Batch tab: many images or zips in, captions out (``/tag_batch`` serves the same work).

The work itself is ``tagger.batch.run_batch``; this module only lays out the controls (the
same selection and tag-string controls as the Tag tab, with the same defaults) and turns
the result into table rows, two downloads and a summary line.
"""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from tagger.batch import BatchOutput, ImageResult, run_batch
from tagger.errors import SelectionError
from tagger.intake import BatchLimits
from tagger.options import TagOptions
from tagger.runtime import IMAGES_PER_GPU_CALL
from tagger.ui.context import HEAVY_QUEUE, AppContext, user_errors
from tagger.ui.controls import build_option_controls
from tagger.ui.inputs import SafeFile

LIMITS = BatchLimits()
CHUNK_SIZE = IMAGES_PER_GPU_CALL  # images per model (GPU) call; see tagger.batch and tagger.runtime

TOP_TAGS = 8  # tags shown per image in the results table
TABLE_HEADERS = ["file", "concept", "tags", "top tags"]


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
                ctx.vocab, id_prefix="batch-", format_title="Caption format", format_open=True
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
    def on_run(values: dict, progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008 - Gradio's idiom
        if not values[option_controls.widgets["categories"]]:
            # In the Tag tab no ticked box shows nothing; for a batch that would be empty captions.
            raise SelectionError("Tick at least one category.")
        paths = [getattr(f, "name", f) for f in values[files] or []]
        output = tag_files(ctx, paths, option_controls.options(values), progress)
        return {
            table: [result_row(r) for r in output.results],
            captions_file: gr.DownloadButton(value=str(output.captions_zip), interactive=True),
            jsonl_file: gr.DownloadButton(value=str(output.jsonl), interactive=True),
            summary: summary_markdown(output),
        }

    run_button.click(
        on_run,
        inputs={files, *option_controls.inputs()},
        outputs=[table, captions_file, jsonl_file, summary],
        api_visibility="private",
        concurrency_id=HEAVY_QUEUE,
    )


def tag_files(ctx: AppContext, paths: Sequence[str], options: TagOptions, progress: gr.Progress) -> BatchOutput:
    """Tag the images and zips at ``paths``: one model call per ``CHUNK_SIZE`` images."""

    def advance(done: int, total: int, name: str) -> None:
        progress((done, total), desc=f"Tagged {name}", unit="images")

    progress((0, None), desc="Reading the upload")
    return run_batch(
        paths,
        prepare=ctx.tagger.prepare,
        run=ctx.runner.probabilities,
        vocab=ctx.vocab,
        options=options,
        limits=LIMITS,
        chunk_size=CHUNK_SIZE,
        progress=advance,
    )
