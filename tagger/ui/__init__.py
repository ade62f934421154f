"""The Gradio Blocks app: one tab per job, all reading the same loaded model, and the public
endpoints (``tagger.ui.endpoints``)."""

from __future__ import annotations

import gradio as gr

from tagger.ui.api_tab import build_api_tab, fill_address
from tagger.ui.batch_tab import build_batch_tab
from tagger.ui.context import AppContext
from tagger.ui.endpoints import build_endpoints, publish
from tagger.ui.features_tab import build_features_tab
from tagger.ui.similarity_tab import build_similarity_tab
from tagger.ui.tag_tab import LABEL_CSS, build_tag_tab

TITLE = "DINOv3 ViT-H/16+ booru tagger"
CSS = """
#summary p { margin: 0; }
.gradio-container { max-width: 1400px !important; }
"""
CSS += LABEL_CSS


def build_demo(ctx: AppContext) -> gr.Blocks:
    endpoints = build_endpoints(ctx)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            f"{len(ctx.vocab):,} e621 + Danbooru tags · running on **{ctx.tagger.device.type}** "
            f"({str(ctx.tagger.dtype).removeprefix('torch.')}) · model `lodestones/tagger-experiment`"
        )
        with gr.Tabs():
            with gr.Tab("Tag", id="tag"):
                build_tag_tab(ctx)
            with gr.Tab("Batch", id="batch"):
                build_batch_tab(ctx)
            with gr.Tab("Features", id="features"):
                build_features_tab(ctx)
            with gr.Tab("Similarity", id="similarity"):
                build_similarity_tab(ctx)
            with gr.Tab("API", id="api"):
                examples = build_api_tab(ctx, endpoints)

        def on_load(request: gr.Request) -> str:
            return fill_address(ctx, request)

        demo.load(on_load, outputs=examples, api_visibility="private", queue=False)
        publish(endpoints)
    return demo
