"""DINOv3 ViT backbone with a multi-label tag head, in plain PyTorch (see docs/MODEL.md).

Pre-norm blocks with per-channel layer scale, SwiGLU MLP, 2-D RoPE on patch tokens only,
CLS + register tokens after the final norm feeding a float32 head. q/k/v share one ``[3C, C]``
Linear whose k bias is zero (DINOv3's k has none), so the matrix multiply adds every bias in
its epilogue, and the SwiGLU gate and up projections one ``[2I, C]`` Linear: three large matrix
multiplies per block instead of six (``tagger.engine.weights`` fills them from the separate tensors).

ZeroGPU runs every call in a new thread and cuDNN keeps its plans per thread (55-400 ms each to
rebuild), so: the patch embedding is a matrix multiply (``PatchEmbed``), not a convolution;
cuDNN attention is switched off on import (a process-wide flag: SDPA runs flash attention
without a mask, the memory-efficient kernel with one); RoPE cos/sin and the attention mask are
cached per patch grid on the model's device (no host-to-device copy besides the pixels).

A batch is one ``[B, 3, H, W]`` tensor or a list of ``[3, H, W]`` images of any sizes, padded to
the longest token sequence; each keeps its own grid's RoPE and padded keys are masked out of
attention, so every image's tokens are what it would get alone (up to float rounding).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

# cuDNN's attention plans live per thread (see the module doc); flash / memory-efficient don't.
if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):  # torch < 2.2 has no cuDNN attention at all
    torch.backends.cuda.enable_cudnn_sdp(False)

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


class PatchEmbed(nn.Module):
    """``Conv2d(3, C, p, stride=p)`` as a reshape + one matrix multiply (same parameters): a Linear
    over each patch's ``3·p·p`` values in the weight's own order (channel, row, column), with
    the ``[C, 3, p, p]`` weight viewed as ``[C, 3·p·p]``; no cuDNN plan to build per thread."""

    def __init__(self, channels: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.empty(channels, 3, patch_size, patch_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as Conv2d initialises

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → patch tokens ``[B, (H/p)·(W/p), C]``, row-major."""
        b, c, h, w = pixels.shape
        p = self.patch_size
        patches = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return F.linear(patches.reshape(b, (h // p) * (w // p), c * p * p), self.weight.flatten(1), self.bias)


class Attention(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        c = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        # q, k and v in one Linear; k's third of the bias stays zero (tagger.engine.weights fills it so).
        self.qkv = nn.Linear(c, 3 * c)
        with torch.no_grad():
            self.qkv.bias[c : 2 * c] = 0
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor, rope: Rope, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x)
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
        self.patch_embed = PatchEmbed(c, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_registers, c))
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.head = TagHead(config)
        self._positions = _DeviceCache(maxsize=32)

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
                raise ValueError("pixels must be normalised floats (preprocess.normalise), not raw uint8.")
            grids.append((shape[1] // p, shape[2] // p))
        if not grids:
            raise ValueError("pixels hold no image.")
        return grids

    def embed(self, pixels: Pixels) -> tuple[torch.Tensor, Rope, torch.Tensor | None]:
        """Tokens ``[B, N, C]`` (CLS, registers, patches row-major, then padding), their RoPE
        cos/sin, and the attention mask of real keys (None when no image is padded)."""
        grids = self.grids(pixels)
        if isinstance(pixels, torch.Tensor):  # one size: batched patch embedding
            patches = self.patch_embed(pixels.to(self.dtype))
        else:
            embedded = [self.patch_embed(image[None].to(self.dtype))[0] for image in pixels]
            patches = pad_sequence(embedded, batch_first=True)  # zeros after each image's own patches
        batch = patches.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1), patches], 1)
        distinct = list(dict.fromkeys(grids))
        if len(distinct) == 1:  # one table for all: [1, 1, N, head_dim] broadcasts over the batch
            cos, sin = self.rope(distinct[0], x.device, x.dtype)
        else:
            tables = [self.rope(grid, x.device, x.dtype) for grid in grids]
            # Padding gets angle 0 too (cos 1, sin 0); its keys are masked out anyway.
            cos = pad_sequence([t[0][0, 0] for t in tables], batch_first=True, padding_value=1.0)[:, None]
            sin = pad_sequence([t[1][0, 0] for t in tables], batch_first=True)[:, None]
        prefix = self.config.num_prefix_tokens
        lengths = tuple(prefix + h * w for h, w in grids)
        key_mask = None
        if min(lengths) < x.shape[1]:
            key_mask = self._positions.get(("mask", lengths, x.device), lambda: _key_mask(lengths, x.device))
        return x, (cos, sin), key_mask

    def rope(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Rope:
        """RoPE cos and sin ``[1, 1, prefix + h·w, head_dim]`` of one patch grid, on ``device``
        in ``dtype``; computed once per grid and kept (CLS and registers get angle 0: cos 1,
        sin 0, which leaves them exactly as they are)."""
        cfg = self.config

        def build() -> Rope:
            angles = rope_angles(*grid, cfg.head_dim, cfg.rope_theta, cfg.rope_coord_scale)
            angles = F.pad(angles, (0, 0, cfg.num_prefix_tokens, 0)).to(device)[None, None]
            return angles.cos().to(dtype), angles.sin().to(dtype)

        return self._positions.get(("rope", grid, device, dtype), build)

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


def _key_mask(lengths: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``[B, 1, 1, N]``: True for each image's own keys (N = the longest length)."""
    real = torch.arange(max(lengths), device=device) < torch.tensor(lengths, device=device)[:, None]
    return real[:, None, None]


class _DeviceCache:
    """A small LRU of tensors built on demand (per-grid RoPE tables, masks). Built outside inference
    mode, so that they also serve forwards that record gradients (``tagger.features.relevance``);
    a lock keeps threads (ZeroGPU calls) from racing."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return value
