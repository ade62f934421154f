"""Per-tag relevance: where in the image a tag's evidence sits (gradient × activation).

``relevance`` is model work, a function of ``(tagger, pixels, ...)`` so that
``ModelRunner.call`` runs it inside one GPU call; the heatmap colouring is numpy on the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch

from tagger.engine.model import TaggerModel
from tagger.engine.tagger import Tagger, gpu_cost
from tagger.engine.vocab import Vocabulary
from tagger.errors import FeatureError
from tagger.features.overlay import alpha_blend, colormap, upscale

# Relevance is taken at the input of this many blocks from the end (block 28 of 32 for the real
# model). Not the last block: every path from its input to the head goes through its norm1 (the
# patch's own output is never read by the head), and LayerNorm is invariant to scaling its input,
# so Σ_c grad_c · x_c there is exactly zero up to eps. Four blocks back the tokens are already
# semantic and still tied to their patch, and the prefix tokens have read from the patches.
DEFAULT_LAYERS_FROM_END = 4
# Deepest tap a request may ask for: memory grows with every block the gradient goes back
# through (~390 MiB per block at 1024 px on CPU), and the early blocks carry little tag meaning.
MAX_LAYERS_FROM_END = 8


def tap_block(num_layers: int, layers_from_end: float = DEFAULT_LAYERS_FROM_END) -> int:
    """Index of the block whose input the relevance is taken at."""
    if isinstance(layers_from_end, float) and layers_from_end.is_integer():
        layers_from_end = int(layers_from_end)
    if not isinstance(layers_from_end, int) or isinstance(layers_from_end, bool):
        raise FeatureError(f"layers_from_end must be a whole number, not {layers_from_end!r}.")
    low, high = min(2, num_layers), min(num_layers, MAX_LAYERS_FROM_END)
    if not low <= layers_from_end <= high:
        raise FeatureError(
            f"layers_from_end must be between {low} and {high} (the last block's input carries no "
            f"relevance; deeper taps cost too much memory), not {layers_from_end}."
        )
    return num_layers - layers_from_end


class _HeadLayer(Protocol):
    """What ``tag_logits`` reads of a head layer: an ``nn.Linear`` or a ``fast_paths.WidenedLinear``."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def tag_logits(model: TaggerModel, descriptor: torch.Tensor, tag_index: int) -> torch.Tensor:
    """The head's logit ``[B]`` for one tag, in float32, without computing all 74,625 logits."""
    x = descriptor.float()
    layers = cast(list[_HeadLayer], list(model.head.layers))  # a ModuleList's items are plain Modules
    for layer in layers[:-1]:  # the low-rank head's first projection
        bias = None if layer.bias is None else layer.bias.float()
        x = torch.nn.functional.linear(x, layer.weight.float(), bias)
    last = layers[-1]
    logit = x @ last.weight[tag_index].float()
    return logit if last.bias is None else logit + last.bias[tag_index].float()


@contextmanager
def capture_block_input(model: TaggerModel, block: int) -> Iterator[list[torch.Tensor]]:
    """While active, the input of ``model.blocks[block]`` is detached, made the one tensor that
    needs a gradient and appended to the yielded list (a forward pre-hook). The model is shared
    by request threads, so the hook acts only in the thread that installed it."""
    captured: list[torch.Tensor] = []
    owner = threading.get_ident()

    def hook(module: torch.nn.Module, args: tuple) -> tuple | None:
        if threading.get_ident() != owner:
            return None
        x = args[0].detach().requires_grad_(True)
        captured.append(x)
        return (x, *args[1:])

    handle = model.blocks[block].register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@dataclass
class Relevance:
    """One image's relevance map for a tag, and the tag's probability on that image."""

    map: np.ndarray  # float32 [H/16, W/16] in [0, 1]
    probability: float


@gpu_cost(3.0)  # forward keeping activations, then backward (up to every block: ~2x)
def relevance(
    tagger: Tagger, pixels: Sequence[torch.Tensor], tag_index: int, layers_from_end: float = DEFAULT_LAYERS_FROM_END
) -> list[Relevance]:
    """Where each image's evidence for a tag sits, and the tag's probability: gradient × activation
    of the tag's logit on the patch tokens at a late block's input (``DEFAULT_LAYERS_FROM_END``),
    summed over channels, ReLU, divided by the maximum. ``autograd.grad`` differentiates by the
    captured block input only, so no parameter's ``.grad`` is touched."""
    model = tagger.model
    config = model.config
    if not 0 <= int(tag_index) < config.num_tags:
        raise FeatureError(f"Tag index {tag_index} is out of range; the model has {config.num_tags} tags.")
    block = tap_block(config.num_layers, layers_from_end)
    prefix = config.num_prefix_tokens
    out: list[Relevance | None] = [None] * len(pixels)
    # The rest of the app runs under inference_mode, which forbids autograd: leave it here.
    with torch.inference_mode(False), torch.enable_grad(), capture_block_input(model, block) as captured:
        for idx, images in tagger.batches(pixels):
            captured.clear()
            logits = tag_logits(model, model.descriptor(images), int(tag_index))
            # Images in a batch are independent, so the gradient of the sum is each image's own.
            (grad,) = torch.autograd.grad(logits.sum(), captured[0])
            contribution = (grad.float() * captured[0].detach().float()).sum(dim=-1).clamp_min(0)
            probabilities = torch.sigmoid(logits.detach()).cpu().tolist()
            for row, (h, w), i, probability in zip(contribution, model.grids(images), idx, probabilities, strict=True):
                scores = row[prefix : prefix + h * w].view(h, w)
                peak = scores.max()
                scores = torch.where(peak > 0, scores / peak.clamp_min(1e-30), torch.zeros_like(scores))
                out[i] = Relevance(scores.cpu().numpy().astype(np.float32), float(probability))
            del logits, grad, contribution
    return cast(list[Relevance], out)  # every image is in one of the batches


def resolve_tag(vocab: Vocabulary, name: str | None) -> int:
    """The output index of a tag typed by a person (any case, ``_`` or space, escaped or not)."""
    if name is None or not str(name).strip():
        raise FeatureError("Choose a tag first: pick one of this image's top tags or type any tag.")
    found = vocab.find(str(name))
    if not found:
        raise FeatureError(
            f"Unknown tag {str(name).strip()!r}: it is not one of the model's {len(vocab):,} tags. "
            "Check the spelling, or search for it under 'Look up any tag' in the Tag tab."
        )
    return found[0]


def heatmap_images(
    image: np.ndarray, relevance: np.ndarray, alpha: float = 0.5, resample: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray]:
    """(heatmap over the image, heatmap alone), uint8 at the image's size."""
    heat = colormap(upscale(relevance, (image.shape[1], image.shape[0]), resample))
    return alpha_blend(image, heat, alpha), heat
