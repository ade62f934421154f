"""The Batch tab: many images or zips in, captions out (``/tag_batch`` serves the same work,
``tagger.datasets.batch.run_batch``), with the Tag tab's controls and resolution, summed up here."""

from __future__ import annotations

import json

import gradio as gr

from tagger.datasets.batch import BatchOutput
from tagger.web.context import HEAVY_EVENT, AppContext, attempt, download_button, in_page, warning
from tagger.web.controls import OptionControls
from tagger.web.inputs import SafeFile
from tagger.web.service import LIMITS, TABLE_HEADERS, result_row, summary_markdown, tag_files


def build_batch_tab(ctx: AppContext, settings: OptionControls, size: gr.Slider, tab: gr.Tab) -> None:
    """Tags with the Tag tab's ``settings`` and ``size`` (tune on one image, tag the folder the same way)."""
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
                settings_note = gr.Markdown(elem_id="batch-settings")

        with gr.Column(scale=7, min_width=320, elem_id="batch-results"):
            summary = gr.Markdown(
                "Upload images or a zip, then press **Tag all**.", label="Summary", elem_id="batch-summary"
            )
            with gr.Row():
                captions_file = download_button("Captions (.zip)", "batch-captions")
                jsonl_file = download_button("Tags (.jsonl)", "batch-jsonl")
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

    names = [*settings.widgets, "max_size"]
    setting_inputs = [*settings.inputs(), size]
    in_page(
        [*(c.change for c in setting_inputs), tab.select],
        f"(...values) => TagView.settingsText({json.dumps(names)}, values)",
        inputs=setting_inputs,
        outputs=settings_note,
    )

    def run(values: dict, progress: gr.Progress) -> BatchOutput:
        paths = [getattr(f, "name", f) for f in values[files] or []]
        return tag_files(ctx, paths, settings.options(values), progress, values[size])

    def on_run(values: dict, progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008 - Gradio's idiom
        output, error = attempt(run, values, progress)
        if error is not None:
            return {run_message: warning(error)}  # the last good results stay
        return {
            table: [result_row(r) for r in output.results],
            captions_file: gr.DownloadButton(value=str(output.captions_zip), interactive=True),
            jsonl_file: gr.DownloadButton(value=str(output.jsonl), interactive=True),
            summary: summary_markdown(output),
            run_message: "",
        }

    run_button.click(
        on_run,
        inputs={files, *setting_inputs},
        outputs=[table, captions_file, jsonl_file, summary, run_message],
        **HEAVY_EVENT,
        show_progress_on=[table],
    )
