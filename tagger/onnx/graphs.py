"""The modules ``tagger.export`` turns into ONNX graphs, written for export rather than serving.

``TaggerModel.forward`` walks the batch in Python (one patch grid per image) and caches RoPE
per grid; a traced export would freeze both to the example's batch and size. These wrappers
take one ``[B, 3, H, W]`` tensor and compute the RoPE tables from its height and width inside
the graph with ``tagger.engine.model.rope_angles`` itself (uncached), so batch, height and
width stay dynamic. They reuse the model's own modules: the numbers are the model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tagger.engine.model import TaggerModel, rope_angles
from tagger.engine.preprocess import IMAGENET_MEAN, IMAGENET_STD


class BackboneGraph(nn.Module):
    """Normalised pixels ``[B, 3, H, W]`` → token states after the final norm ``[B, N, C]``."""

    def __init__(self, model: TaggerModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model, config = self.model, self.model.config
        batch, _, height, width = pixel_values.shape
        patches = model.patch_embed(pixel_values)
        x = torch.cat(
            [model.cls_token.expand(batch, -1, -1), model.register_tokens.expand(batch, -1, -1), patches], dim=1
        )
        # RoPE [1, 1, prefix + h·w, head_dim] from the model's own function without its cache, which
        # cannot hold symbolic sizes; the prefix tokens get angle 0 (cos 1, sin 0), as in TaggerModel.rope.
        grid_h, grid_w, head_dim = height // config.patch_size, width // config.patch_size, config.head_dim
        angles = rope_angles.__wrapped__(grid_h, grid_w, head_dim, config.rope_theta, config.rope_coord_scale)
        prefix = torch.zeros(config.num_prefix_tokens, head_dim, dtype=torch.float32)
        angles = torch.cat([prefix, angles], dim=0)[None, None]
        cos, sin = angles.cos(), angles.sin()
        for block in model.blocks:
            x = block(x, (cos, sin))
        return model.norm(x)


class EmbeddingGraph(BackboneGraph):
    """Normalised pixels → descriptor ``[B, descriptor_dim]`` (CLS + registers, float32), the head's input."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = super().forward(pixel_values)
        return tokens[:, : self.model.config.num_prefix_tokens].flatten(1).float()


class LogitsGraph(EmbeddingGraph):
    """Normalised pixels → logits ``[B, num_tags]`` (the model is exported in float32)."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.head(super().forward(pixel_values))


class Wd14Graph(LogitsGraph):
    """``[B, S, S, 3]`` float32 BGR in 0-255 (what the wd14 tools feed) → probabilities in the
    package order, ImageNet normalisation and sigmoid inside: ``placeholders`` zeros (the rating
    rows), then the tags at ``order`` (see ``tagger.onnx.wd14``)."""

    order: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: TaggerModel, order: Sequence[int], placeholders: int):
        super().__init__(model)
        self.placeholders = placeholders
        self.register_buffer("order", torch.as_tensor(order, dtype=torch.int64), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        rgb = pixel_values.flip(-1).permute(0, 3, 1, 2)  # BGR → RGB, NHWC → NCHW
        normalised = rgb.div(255).sub(self.mean).div(self.std)  # as tagger.engine.preprocess.normalise
        probabilities = torch.sigmoid(super().forward(normalised)).index_select(1, self.order)
        ratings = probabilities.new_zeros(probabilities.shape[0], self.placeholders)
        return torch.cat([ratings, probabilities], dim=1)
