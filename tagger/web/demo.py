"""The Gradio Blocks app: one tab per job, all reading the same loaded model and image, and
the public endpoints (``tagger.web.endpoints``)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tagger.web.context import AppContext
from tagger.web.endpoints import build_endpoints, publish
from tagger.web.tabs.api import build_api_tab, fill_address
from tagger.web.tabs.batch import build_batch_tab
from tagger.web.tabs.features import build_features_tab
from tagger.web.tabs.similarity import build_similarity_tab
from tagger.web.tabs.tag import build_tag_tab

TITLE = "DINOv3 ViT-H/16+ booru tagger"
CSS = (Path(__file__).resolve().parent / "assets" / "app.css").read_text(encoding="utf-8")


def build_demo(ctx: AppContext) -> gr.Blocks:
    endpoints = build_endpoints(ctx)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\n"
            f"{len(ctx.vocab):,} e621 + Danbooru tags · running on **{ctx.tagger.device.type}** "
            f"({str(ctx.tagger.dtype).removeprefix('torch.')}) at **{ctx.default_size} px** by default "
            f"(up to {ctx.size_cap}) · model `lodestones/tagger-experiment`",
            elem_id="title",
        )
        with gr.Tabs():
            with gr.Tab("Tag", id="tag"):
                tag_tab = build_tag_tab(ctx)
            with gr.Tab("Batch", id="batch") as batch:
                build_batch_tab(ctx, tag_tab.controls, tag_tab.size, batch)
            # Features and Similarity start from the Tag tab's image and resolution: one upload, many views.
            with gr.Tab("Features", id="features") as features:
                build_features_tab(ctx, tag_tab.image, features, tag_tab.size)
            with gr.Tab("Similarity", id="similarity") as similarity:
                build_similarity_tab(ctx, tag_tab.image, similarity, tag_tab.size)
            with gr.Tab("API", id="api", elem_id="api-tab"):
                examples = build_api_tab(ctx, endpoints)

        def on_load(request: gr.Request) -> str:
            return fill_address(ctx, request)

        demo.load(on_load, outputs=examples, api_visibility="private", queue=False)
        publish(endpoints)
    return demo
