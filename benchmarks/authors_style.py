"""The authors' way of running the tagger, rebuilt for comparison in the benchmarks.

Nothing here is used by the app. It follows what ``shared/REFERENCE.md`` says of the authors'
inference script: a plain eager PyTorch module whose parameter names are the checkpoint's
keys, built in float32 with random initialisation on the CPU, ``safetensors.torch.load_file``
of the whole file, ``load_state_dict``, then a cast (bf16 backbone on a GPU; float32 on a
CPU without native bf16) and a plain forward per image. Projections are separate
(q, k, v, o; gate, up, down) as the key names imply; RoPE is computed per forward and applied
with ``rotate_half`` to the patch tokens only. The numerics are the same function as
``tagger.engine.model`` (a test checks it), so timing differences are implementation differences.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tagger.engine.model import TaggerConfig


class _Embeddings(nn.Module):
    def __init__(self, c: TaggerConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.register_tokens = nn.Parameter(torch.randn(1, c.num_registers, c.hidden_size))
        self.patch_embeddings = nn.Conv2d(3, c.hidden_size, c.patch_size, stride=c.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embeddings(pixels).flatten(2).transpose(1, 2)
        b = patches.shape[0]
        return torch.cat([self.cls_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), patches], dim=1)


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class _Attention(nn.Module):
    def __init__(self, c: TaggerConfig):
        super().__init__()
        self.heads, self.head_dim, self.prefix = c.num_heads, c.head_dim, c.num_prefix_tokens
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.k_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.hidden_size)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        p = self.prefix
        q = torch.cat([q[:, :, :p], q[:, :, p:] * cos + _rotate_half(q[:, :, p:]) * sin], dim=2)
        k = torch.cat([k[:, :, :p], k[:, :, p:] * cos + _rotate_half(k[:, :, p:]) * sin], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class _MLP(nn.Module):
    def __init__(self, c: TaggerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, c: TaggerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.attention = _Attention(c)
        self.layer_scale1 = _LayerScale(c.hidden_size)
        self.norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = _MLP(c)
        self.layer_scale2 = _LayerScale(c.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale1(self.attention(self.norm1(x), cos, sin))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class _Backbone(nn.Module):
    def __init__(self, c: TaggerConfig):
        super().__init__()
        self.config = c
        self.embeddings = _Embeddings(c)
        self.layer = nn.ModuleList([_Layer(c) for _ in range(c.num_layers)])
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def rope(self, grid_h: int, grid_w: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        c = self.config
        ys = (torch.arange(grid_h, dtype=torch.float32, device=device) + 0.5) / grid_h
        xs = (torch.arange(grid_w, dtype=torch.float32, device=device) + 0.5) / grid_w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)
        coords = (2.0 * coords - 1.0) * c.rope_coord_scale
        inv_freq = 1.0 / c.rope_theta ** torch.arange(0, 1, 4 / c.head_dim, dtype=torch.float32, device=device)
        angles = (2 * math.pi * coords[:, :, None] * inv_freq).flatten(1, 2).tile(2)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        x = self.embeddings(pixels)
        cos, sin = self.rope(pixels.shape[2] // p, pixels.shape[3] // p, x.device, x.dtype)
        for layer in self.layer:
            x = layer(x, cos, sin)
        return self.norm(x)


class AuthorsStyleTagger(nn.Module):
    """Backbone + a dense head named ``head`` (the benchmark checkpoint's layout)."""

    def __init__(self, c: TaggerConfig):
        super().__init__()
        if c.head_rank is not None:
            raise ValueError("the authors-style model has a dense head only")
        self.backbone = _Backbone(c)
        self.head = nn.Linear(c.descriptor_dim, c.num_tags, bias=c.head_bias[0])
        self.prefix = c.num_prefix_tokens

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(pixels.to(self.backbone.norm.weight.dtype))
        return self.head(tokens[:, : self.prefix].flatten(1).float())


def load_authors_style(
    path: str, config: TaggerConfig, device: str | torch.device = "cpu", backbone_dtype: torch.dtype = torch.float32
) -> AuthorsStyleTagger:
    """fp32 random init on the CPU, ``load_file`` of the whole file, ``load_state_dict``, cast, move."""
    model = AuthorsStyleTagger(config)
    state = load_file(path)
    state = {k.replace("backbone.model.layer.", "backbone.layer."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("backbone.rope_embeddings.")}
    model.load_state_dict(state, strict=True)
    del state
    model.backbone.to(backbone_dtype)
    return model.to(device).eval()


def timed_load(path: str, config: TaggerConfig, device: str, backbone_dtype: torch.dtype) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    model = load_authors_style(path, config, device, backbone_dtype)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - start
