"""DINOv3 ViT backbone with a multi-label tag head, in plain PyTorch (see docs/MODEL.md).

Pre-norm blocks with per-channel layer scale, SwiGLU MLP, 2-D RoPE on patch tokens only,
CLS + register tokens after the final norm feeding a float32 head. The q/k/v projections
share one ``[3C, C]`` Linear (k's bias is a zero buffer, as in timm's ``EvaAttention``) and
the SwiGLU gate and up projections one ``[2I, C]`` Linear, so each block runs three large
matrix multiplies instead of six; ``tagger.weights`` fills them from the checkpoint's
separate tensors.

A batch is either one ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]`` images of any sizes.
Images of different sizes are padded to the longest token sequence, each keeps the RoPE
coordinates of its own patch grid, and padded keys are masked out of attention, so every
image's tokens are what it would get alone (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

Pixels = torch.Tensor | Sequence[torch.Tensor]  # [B, 3, H, W], or [3, H_i, W_i] per image
Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin: [B or 1, 1, N, head_dim]


@dataclass(frozen=True)
class TaggerConfig:
    """Model sizes. The defaults describe the real checkpoint (ViT-H/16+ with 74,625 tags)."""

    hidden_size: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    intermediate_size: int = 5120
    num_registers: int = 4
    patch_size: int = 16
    layer_norm_eps: float = 1e-5
    rope_theta: float = 100.0
    # The authors multiply the [-1, 1] patch coordinates by 2 before computing RoPE angles;
    # transformers' DINOv3ViTModel (eval mode) uses 1.0.
    rope_coord_scale: float = 2.0
    num_tags: int = 74625
    head_rank: int | None = None  # None: one dense Linear; else a low-rank pair through `rank`.
    head_bias: tuple[bool, ...] = (True,)  # bias flags of the head Linear(s), in order.

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2-D RoPE.")
        if len(self.head_bias) != (1 if self.head_rank is None else 2):
            raise ValueError("head_bias needs one flag per head Linear.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_registers

    @property
    def descriptor_dim(self) -> int:
        """Size of the head's input: CLS and register tokens, concatenated."""
        return self.hidden_size * self.num_prefix_tokens

    @classmethod
    def tiny(cls, num_tags: int = 64, **overrides: Any) -> TaggerConfig:
        """A small model with the real layout, for tests and the offline demo."""
        base = cls(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, num_tags=num_tags)
        return replace(base, **overrides)


@lru_cache(maxsize=64)
def rope_angles(grid_h: int, grid_w: int, head_dim: int, theta: float, coord_scale: float) -> torch.Tensor:
    """RoPE angles ``[grid_h * grid_w, head_dim]`` of the patches, row-major, float32 on the CPU."""
    coords_y = (torch.arange(grid_h, dtype=torch.float32) + 0.5) / grid_h
    coords_x = (torch.arange(grid_w, dtype=torch.float32) + 0.5) / grid_w
    coords = torch.stack(torch.meshgrid(coords_y, coords_x, indexing="ij"), dim=-1).flatten(0, 1)
    coords = (2.0 * coords - 1.0) * coord_scale  # [-1, 1] per axis (y, x), then scaled
    inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq  # [N, 2, head_dim / 4]
    return angles.flatten(1, 2).tile(2)  # y freqs then x freqs, twice


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(c, 3 * c, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("k_bias", torch.zeros(c), persistent=False)  # DINOv3's k has no bias
        self.v_bias = nn.Parameter(torch.zeros(c))
        self.proj = nn.Linear(c, c)

    def init_buffers(self) -> None:
        """Materialise ``k_bias`` after the parameters were loaded into a meta-built model."""
        self.k_bias = torch.zeros_like(self.q_bias)

    def forward(self, x: torch.Tensor, rope: Rope, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x) + torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=self.head_dim**-0.5)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, channels))


class SwiGLU(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ls1 = nn.Parameter(torch.ones(config.hidden_size))
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SwiGLU(config)
        self.ls2 = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor, rope: Rope, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1 * self.attn(self.norm1(x), rope, key_mask)
        return x + self.ls2 * self.mlp(self.norm2(x))


class TagHead(nn.Module):
    """Dense ``Linear(descriptor_dim → num_tags)`` or a low-rank pair, computed in float32."""

    def __init__(self, config: TaggerConfig):
        super().__init__()
        dims = [config.descriptor_dim, config.num_tags]
        if config.head_rank is not None:
            dims.insert(1, config.head_rank)
        shapes = zip(dims, dims[1:], config.head_bias, strict=False)
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out, bias=bias) for n_in, n_out, bias in shapes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        for layer in self.layers:
            x = layer(x)
        return x


class TaggerModel(nn.Module):
    """Backbone + head. Input: normalised float pixels (see ``Pixels``), sides multiples of the patch."""

    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.patch_embed = nn.Conv2d(3, c, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_registers, c))
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.head = TagHead(config)

    def init_buffers(self) -> None:
        """Materialise the non-persistent buffers of a model built on the meta device."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.init_buffers()

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.weight.device

    def grids(self, pixels: Pixels) -> list[tuple[int, int]]:
        """Each image's patch grid ``(rows, columns)``, checking that the input is model input."""
        p = self.config.patch_size
        if isinstance(pixels, torch.Tensor) and pixels.ndim != 4:
            raise ValueError(f"pixels must be [B, 3, H, W] or a list of [3, H, W]; got {tuple(pixels.shape)}.")
        grids = []
        for image in pixels:  # a [B, 3, H, W] tensor iterates as views
            shape = tuple(image.shape)
            if len(shape) != 3 or shape[0] != 3 or 0 in shape or shape[1] % p or shape[2] % p:
                raise ValueError(f"images must be [3, H, W] with H and W multiples of {p}; got {shape}.")
            if not image.is_floating_point():
                raise ValueError("pixels must be normalised floats (tagger.preprocess.normalise), not raw uint8.")
            grids.append((shape[1] // p, shape[2] // p))
        if not grids:
            raise ValueError("pixels hold no image.")
        return grids

    def embed(self, pixels: Pixels) -> tuple[torch.Tensor, Rope, torch.Tensor | None]:
        """Tokens ``[B, N, C]`` (CLS, registers, patches row-major, then padding), their RoPE
        cos/sin, and the attention mask of real keys (None when no image is padded)."""
        grids = self.grids(pixels)
        cfg = self.config
        if isinstance(pixels, torch.Tensor):  # one size: batched patch embedding, one RoPE table
            patches = self.patch_embed(pixels.to(self.dtype)).flatten(2).transpose(1, 2)
            angles = rope_angles(*grids[0], cfg.head_dim, cfg.rope_theta, cfg.rope_coord_scale)[None]
        else:
            embedded = [self.patch_embed(image[None].to(self.dtype)).flatten(2).transpose(1, 2)[0] for image in pixels]
            patches = pad_sequence(embedded, batch_first=True)  # zeros after each image's own patches
            tables = [rope_angles(h, w, cfg.head_dim, cfg.rope_theta, cfg.rope_coord_scale) for h, w in grids]
            angles = pad_sequence(tables, batch_first=True)
        batch, prefix = patches.shape[0], cfg.num_prefix_tokens
        x = torch.cat([self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1), patches], 1)
        # CLS and registers get angle 0 (cos 1, sin 0): RoPE leaves them exactly as they are.
        angles = F.pad(angles, (0, 0, prefix, 0)).to(x.device)[:, None]
        rope = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        lengths = [prefix + h * w for h, w in grids]
        key_mask = None
        if min(lengths) < x.shape[1]:  # [B, 1, 1, N]: True for each image's own keys
            real = torch.arange(x.shape[1], device=x.device) < torch.tensor(lengths, device=x.device)[:, None]
            key_mask = real[:, None, None]
        return x, rope, key_mask

    def tokens(self, pixels: Pixels) -> torch.Tensor:
        """Token states ``[B, N, C]`` after the final norm (padding included, see ``embed``)."""
        x, rope, key_mask = self.embed(pixels)
        for block in self.blocks:
            x = block(x, rope, key_mask)
        return self.norm(x)

    def descriptor_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, : self.config.num_prefix_tokens].flatten(1)

    def patch_grids(self, tokens: torch.Tensor, pixels: Pixels) -> list[torch.Tensor]:
        """Each image's own patch tokens from ``tokens(pixels)`` as a grid ``[h, w, C]``."""
        prefix = self.config.num_prefix_tokens
        grids = self.grids(pixels)
        return [row[prefix : prefix + h * w].view(h, w, -1) for row, (h, w) in zip(tokens, grids, strict=True)]

    def descriptor(self, pixels: Pixels) -> torch.Tensor:
        """CLS + register tokens after the final norm, ``[B, descriptor_dim]`` (model dtype)."""
        return self.descriptor_from_tokens(self.tokens(pixels))

    def forward(self, pixels: Pixels) -> torch.Tensor:
        """Logits ``[B, num_tags]`` in float32."""
        return self.head(self.descriptor(pixels))
