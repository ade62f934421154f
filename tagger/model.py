"""DINOv3 ViT backbone with a multi-label tag head, in plain PyTorch.

Numerics follow the authors' inference (see ``shared/REFERENCE.md``): pre-norm blocks with
per-channel layer scale, SwiGLU MLP, RoPE on patch tokens only, CLS + register tokens
after the final norm feeding a float32 head. Two deliberate layout choices for speed:
q/k/v live in one ``[3C, C]`` projection (k's bias slot is zero) and the SwiGLU gate and
up projections in one ``[2I, C]`` projection, so each block runs three large matrix
multiplies instead of six. The loader (``tagger.weights``) fills these from the
checkpoint's separate tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


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
    def tiny(cls, num_tags: int = 64, **overrides: object) -> TaggerConfig:
        """A small model with the real layout, for tests and the offline demo."""
        base = cls(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, num_tags=num_tags)
        return replace(base, **overrides)


@lru_cache(maxsize=16)
def _rope_angles(grid_h: int, grid_w: int, head_dim: int, theta: float, coord_scale: float) -> torch.Tensor:
    """RoPE angles ``[grid_h * grid_w, head_dim]`` in float32 on the CPU (cached per grid)."""
    coords_y = (torch.arange(grid_h, dtype=torch.float32) + 0.5) / grid_h
    coords_x = (torch.arange(grid_w, dtype=torch.float32) + 0.5) / grid_w
    coords = torch.stack(torch.meshgrid(coords_y, coords_x, indexing="ij"), dim=-1).flatten(0, 1)
    coords = (2.0 * coords - 1.0) * coord_scale  # [-1, 1] per axis, y then x
    inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]  # [N, 2, head_dim / 4]
    return angles.flatten(1, 2).tile(2)


def rope_cos_sin(
    grid_h: int, grid_w: int, config: TaggerConfig, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for all tokens, prefix tokens included as the identity rotation.

    Giving CLS and registers cos=1, sin=0 leaves them exactly unchanged and lets the rotation
    run over the whole sequence without splitting and re-concatenating q and k.
    """
    angles = _rope_angles(grid_h, grid_w, config.head_dim, config.rope_theta, config.rope_coord_scale)
    prefix = torch.zeros(config.num_prefix_tokens, config.head_dim)
    angles = torch.cat([prefix, angles]).to(device)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, ``x·cos + rotate_half(x)·sin``, on ``x`` of shape ``[B, N, ..., head_dim]``.

    ``cos`` and ``sin`` are ``[N, head_dim]`` (from ``rope_cos_sin``) and broadcast over the
    middle dimensions, so q and k can be rotated together as one ``[B, N, 2, heads, head_dim]``
    view of the fused qkv output. ``rotate_half`` is never materialised: each half of the
    product is accumulated in place with one multiply-add, three passes over the data instead
    of five concatenations, negations and products per tensor.
    """
    half = x.shape[-1] // 2
    shape = (cos.shape[0],) + (1,) * (x.ndim - 3) + (cos.shape[-1],)
    cos, sin = cos.view(shape), sin.view(shape)
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


class Attention(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim)
        # q and k rotated in one pass; SDPA takes the strided [B, heads, N, head_dim] views as they are.
        q, k = apply_rope(qkv[:, :, :2], cos, sin).permute(2, 0, 3, 1, 4).unbind(0)
        v = qkv[:, :, 2].transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, channels))


class SwiGLU(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn_swiglu(x):
            try:
                return self.down(self._onednn_gated(x))
            except RuntimeError:  # an op this torch build lacks after all: stay on the eager path
                _ONEDNN_SWIGLU[0] = False
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def _onednn_gated(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` with both elementwise steps fused into the oneDNN matmul epilogues.

        Saves two passes over the ``[N, intermediate]`` activations (about 4 ms of 28 ms per
        block for a 512 px image on two cores). The epilogues work on the float32 accumulator,
        so bf16 results differ from the eager path by rounding only (one rounding fewer).
        """
        size = self.down.in_features
        weight, bias = self.gate_up.weight, self.gate_up.bias
        linear = torch.ops.mkldnn._linear_pointwise
        gate = linear(x, weight[:size], bias[:size], "swish", [], "")
        return linear.binary(x, gate, weight[size:], bias[size:], "mul")


# Whether oneDNN's fused linear kernels can serve the bf16 SwiGLU on CPU (decided on first use).
_ONEDNN_SWIGLU: list[bool | None] = [None]


def _use_onednn_swiglu(x: torch.Tensor) -> bool:
    """Fused path: bf16 CPU inference only (the fused kernels record no gradients)."""
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or torch.is_grad_enabled():
        return False
    if _ONEDNN_SWIGLU[0] is None:
        try:
            _ONEDNN_SWIGLU[0] = bool(
                torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            )
        except (AttributeError, RuntimeError):
            _ONEDNN_SWIGLU[0] = False
    return bool(_ONEDNN_SWIGLU[0])


class Block(nn.Module):
    def __init__(self, config: TaggerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ls1 = nn.Parameter(torch.ones(config.hidden_size))
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SwiGLU(config)
        self.ls2 = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # Residual and layer scale in one pass each (x + branch · ls).
        x = torch.addcmul(x, self.attn(self.norm1(x), cos, sin), self.ls1)
        return torch.addcmul(x, self.mlp(self.norm2(x)), self.ls2)


class TagHead(nn.Module):
    """Dense ``Linear(descriptor_dim → num_tags)`` or a low-rank pair, always computed in float32.

    The weights may be stored in a narrower dtype to save memory (bf16 on CPU); they are
    widened to float32 one slab of rows at a time, which is exact for bf16. The slab is small
    enough to stay in cache between being widened and being multiplied, so the head costs
    little more than one read of its bf16 weights (a 74,625-row head: about 0.13 s on two
    cores, against 0.5 s with slabs too large for the cache).
    """

    _rows_per_slab = 512

    def __init__(self, config: TaggerConfig):
        super().__init__()
        if config.head_rank is None:
            self.layers = nn.ModuleList([nn.Linear(config.descriptor_dim, config.num_tags, bias=config.head_bias[0])])
        else:
            self.layers = nn.ModuleList(
                [
                    nn.Linear(config.descriptor_dim, config.head_rank, bias=config.head_bias[0]),
                    nn.Linear(config.head_rank, config.num_tags, bias=config.head_bias[1]),
                ]
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float()
        for layer in self.layers:
            x = _linear_fp32(x, layer.weight, layer.bias, self._rows_per_slab)
        return x


def _linear_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    """``F.linear`` in float32 for a float32 ``x`` and a weight stored in float32 or narrower."""
    if weight.dtype == torch.float32:
        return F.linear(x, weight, bias)
    num_out = weight.shape[0]
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # Autograd path (relevance maps): ``out=`` kernels do not record gradients.
        out = x.new_empty(*x.shape[:-1], num_out)
        for start in range(0, num_out, rows):
            stop = start + rows
            b = None if bias is None else bias[start:stop].float()
            out[..., start:stop] = F.linear(x, weight[start:stop].float(), b)
        return out
    # Inference: widen each slab into one reused buffer and multiply straight into the output.
    x2 = x.reshape(-1, x.shape[-1])
    out = x2.new_empty(x2.shape[0], num_out)
    rows = min(rows, num_out)
    w_buf = x2.new_empty(rows, weight.shape[1])
    b_buf = None if bias is None else x2.new_empty(rows)
    for start in range(0, num_out, rows):
        stop = min(start + rows, num_out)
        w = w_buf[: stop - start]
        w.copy_(weight[start:stop])
        if b_buf is None:
            torch.mm(x2, w.t(), out=out[:, start:stop])
        else:
            b = b_buf[: stop - start]
            b.copy_(bias[start:stop])
            torch.addmm(b, x2, w.t(), out=out[:, start:stop])
    return out.view(*x.shape[:-1], num_out)


class TaggerModel(nn.Module):
    """Backbone + head. Input: normalised pixels ``[B, 3, H, W]`` with H, W multiples of the patch."""

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

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embed.weight.device

    def tokens(
        self,
        pixels: torch.Tensor,
        tap_block: int | None = None,
        tap: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token states ``[B, prefix + patches, C]`` after the final norm.

        ``tap`` (with ``tap_block=n``) sees, and may replace, the input of block ``n``; the
        relevance maps use it to take gradients with respect to intermediate activations.
        """
        p = self.config.patch_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2] % p or pixels.shape[3] % p:
            raise ValueError(f"pixels must be [B, 3, H, W] with H and W multiples of {p}; got {tuple(pixels.shape)}.")
        grid_h, grid_w = pixels.shape[2] // p, pixels.shape[3] // p
        patches = self.patch_embed(pixels.to(self.dtype)).flatten(2).transpose(1, 2)
        batch = patches.shape[0]
        x = torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.register_tokens.expand(batch, -1, -1), patches], dim=1
        )
        cos, sin = rope_cos_sin(grid_h, grid_w, self.config, x.device, x.dtype)
        for i, block in enumerate(self.blocks):
            if tap is not None and i == tap_block:
                x = tap(x)
            x = block(x, cos, sin)
        return self.norm(x)

    def descriptor_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, : self.config.num_prefix_tokens].flatten(1)

    def descriptor(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLS + register tokens after the final norm, ``[B, descriptor_dim]`` (model dtype)."""
        return self.descriptor_from_tokens(self.tokens(pixels))

    def patch_grid(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the final norm as a grid ``[B, H/p, W/p, C]``."""
        p = self.config.patch_size
        tokens = self.tokens(pixels)[:, self.config.num_prefix_tokens :]
        return tokens.reshape(tokens.shape[0], pixels.shape[2] // p, pixels.shape[3] // p, -1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_tags]`` in float32."""
        return self.head(self.descriptor(pixels))
