"""What the app does, as plain functions of the ``AppContext`` (tag a batch, PCA, heatmap,
similarity), for the tabs, the API endpoints and the MCP tools."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import gradio as gr
import numpy as np
import torch

from tagger.datasets.batch import BatchOutput, ImageResult, run_batch
from tagger.datasets.intake import BatchLimits
from tagger.engine.tagger import IMAGES_PER_GPU_CALL
from tagger.errors import ImageError, UploadError, format_bytes
from tagger.features.overlay import pixels_to_image
from tagger.features.pca import FeatureMaps, analyse
from tagger.features.relevance import Relevance, heatmap_images, relevance, resolve_tag, tap_block
from tagger.features.similarity import (
    BatchSimilarity,
    batch_similarity,
    cosine_similarity,
    parse_url_pairs,
    score_pairs,
)
from tagger.tags.options import TagOptions
from tagger.web.context import AppContext, prepare_image
from tagger.web.inputs import check_web_pixels

LIMITS = BatchLimits()
CHUNK_SIZE = IMAGES_PER_GPU_CALL  # images per model (GPU) call; see tagger.engine.tagger

TOP_TAGS = 8  # tags shown per image in the results table
TABLE_HEADERS = ["file", "concept", "tags", "top tags"]


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


def tag_files(
    ctx: AppContext, paths: Sequence[str], options: TagOptions, progress: gr.Progress, max_size: object = None
) -> BatchOutput:
    """Tag the images and zips at ``paths`` (Batch tab, ``/tag_batch``): one model call per ``CHUNK_SIZE``."""
    progress((0, None), desc="Reading the upload")
    return run_batch(
        paths,
        prepare=ctx.preparer(max_size),
        run=ctx.runner.probabilities,
        vocab=ctx.vocab,
        options=options,
        limits=LIMITS,
        chunk_size=CHUNK_SIZE,
        progress=lambda done, total, name: progress((done, total), desc=f"Tagged {name}", unit="images"),
    )


def run_pca(ctx: AppContext, image: str | None, max_size: object = None) -> FeatureMaps:
    pixels = prepare_image(ctx, image, max_size=max_size)
    return FeatureMaps.of(pixels, ctx.runner.call(analyse, [pixels])[0])


def run_heatmap(
    ctx: AppContext, image: str | None, tag: str | None, layers: float, alpha: float, upscale: str, max_size: object
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A tag's relevance ``layers`` blocks from the end, over the image as the model sees it
    (``alpha``) and alone, and its facts, for one upload: one GPU call."""
    tap_block(ctx.tagger.model.config.num_layers, layers)  # arguments first: fail fast
    index = resolve_tag(ctx.vocab, tag)
    pixels = prepare_image(ctx, image, max_size=max_size)
    result: Relevance = ctx.runner.call(relevance, [pixels], index, layers)[0]
    over, heat = heatmap_images(pixels_to_image(pixels), result.map, alpha, upscale)
    h, w = result.map.shape
    info = {
        "tag": ctx.vocab.tags[index],
        "index": index,
        "category": ctx.vocab.category_of(index).name,
        "probability": round(result.probability, 6),
        "block": ctx.tagger.model.config.num_layers - int(layers),  # relevance taken at this block's input (0-based)
        "layers_from_end": int(layers),
        "grid": [h, w],
        "positive": bool(result.map.max() > 0),
        "relevance": np.round(result.map, 4).tolist(),
    }
    return over, heat, info


def compare(ctx: AppContext, image_a: str | None, image_b: str | None, max_size: object = None) -> float:
    """Cosine similarity of two uploads: both decoded here, one GPU call for the pair."""
    pixels = [prepare_image(ctx, image_a, "image A", max_size), prepare_image(ctx, image_b, "image B", max_size)]
    return cosine_similarity(*ctx.runner.descriptors(pixels))


def score_zip(
    ctx: AppContext, path: str | None, progress: Callable[[int, int], None] | None = None, max_size: object = None
) -> BatchSimilarity:
    if path is None:
        raise UploadError("Please upload a zip first.")
    return batch_similarity(path, ctx.preparer(max_size), ctx.runner.descriptors, progress=progress)


def score_url_pairs(
    ctx: AppContext,
    text: str,
    fetch: Callable[[str], str],
    progress: Callable[[int, int], None] | None = None,
    max_size: object = None,
    limits: BatchLimits = LIMITS,
) -> BatchSimilarity:
    """Pairs of image URLs (``[["url_a", "url_b"], ...]``) scored as a zip's pairs, each fetched by ``fetch``
    (the guarded fetcher), at most ``limits.max_files`` images and ``limits.max_upload_bytes``, as an upload."""
    pairs = parse_url_pairs(text, limits.max_files // 2)
    prepare = ctx.preparer(max_size)
    fetched = 0

    def load(url: str, name: str) -> torch.Tensor:
        nonlocal fetched
        path = fetch(url)
        fetched += os.path.getsize(path)
        if fetched > limits.max_upload_bytes:
            raise UploadError(
                f"The images add up to more than {format_bytes(limits.max_upload_bytes)}; send fewer pairs."
            )
        try:
            check_web_pixels(path, url)
        except gr.Error as e:
            raise ImageError(e.message) from None
        return prepare(path, name=name)

    rows = [(str(i + 1), (a, a), (b, b)) for i, (a, b) in enumerate(pairs)]
    return score_pairs(BatchSimilarity(("A", "B")), rows, load, ctx.runner.descriptors, progress)
