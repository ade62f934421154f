"""Strict, low-memory loading of tagger checkpoints (safetensors).

The module is built on the meta device (no random weights) and each tensor is read straight
into its final buffer (``readinto`` when the dtypes match, else through a small temporary), so
peak host memory is about one copy of the weights and loading takes about as long as reading.

Checkpoint layout (docs/MODEL.md): backbone keys under ``backbone.`` named as in
transformers' DINOv3ViTModel, blocks under ``backbone.layer.N`` or ``backbone.model.layer.N``;
``rope_embeddings.*`` buffers ignored; every other key belongs to the head, a dense Linear or
a low-rank pair under any name. ``CHECKPOINT_KEYS`` maps the model's own state dict onto it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from tagger.engine import fast_paths
from tagger.engine.model import TaggerConfig, TaggerModel
from tagger.errors import CheckpointError

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_STAGING_BYTES = 64 * 1024 * 1024  # converting reads go through at most this much extra memory
_BACKBONE = "backbone."
_IGNORED_PREFIXES = ("rope_embeddings.",)


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading any tensor data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes).")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{path}: not a safetensors file, or truncated (its header length is {header_len:,} bytes, "
                    f"the file {size:,})."
                )
            raw = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint file not found: {path}.") from None
    except IsADirectoryError:
        raise CheckpointError(f"Checkpoint path is a directory, not a file: {path}.") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError
    except ValueError:  # UnicodeDecodeError included
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON).") from None

    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {key!r}.") from None
        if dtype_name not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype_name}; only float tensors are supported.")
        dtype = _DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {key!r} spans {end - begin} bytes, expected {nbytes}.")
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: file is truncated ({size} bytes; tensor {key!r} ends at byte {data_start + end})."
            )
        tensors[key] = TensorInfo(dtype, shape, data_start + begin, nbytes)
    return tensors


# The checkpoint key layout (docs/MODEL.md): each entry of the model's state dict and the
# tensors it is read from, relative to "backbone." with blocks as "layer.{n}.", concatenated
# along dim 0 in this order (fused q/k/v and gate/up); ``ZEROS``: a block of zeros (k's bias,
# which DINOv3 does not have). Everything else in the file belongs to the head.
ZEROS = "<zeros>"
CHECKPOINT_KEYS: dict[str, tuple[str, ...]] = {
    "cls_token": ("embeddings.cls_token",),
    "register_tokens": ("embeddings.register_tokens",),
    "patch_embed.weight": ("embeddings.patch_embeddings.weight",),
    "patch_embed.bias": ("embeddings.patch_embeddings.bias",),
    "blocks.{n}.norm1.weight": ("layer.{n}.norm1.weight",),
    "blocks.{n}.norm1.bias": ("layer.{n}.norm1.bias",),
    "blocks.{n}.attn.qkv.weight": tuple(f"layer.{{n}}.attention.{x}_proj.weight" for x in "qkv"),
    "blocks.{n}.attn.qkv.bias": ("layer.{n}.attention.q_proj.bias", ZEROS, "layer.{n}.attention.v_proj.bias"),
    "blocks.{n}.attn.proj.weight": ("layer.{n}.attention.o_proj.weight",),
    "blocks.{n}.attn.proj.bias": ("layer.{n}.attention.o_proj.bias",),
    "blocks.{n}.ls1": ("layer.{n}.layer_scale1.lambda1",),
    "blocks.{n}.norm2.weight": ("layer.{n}.norm2.weight",),
    "blocks.{n}.norm2.bias": ("layer.{n}.norm2.bias",),
    "blocks.{n}.mlp.gate_up.weight": ("layer.{n}.mlp.gate_proj.weight", "layer.{n}.mlp.up_proj.weight"),
    "blocks.{n}.mlp.gate_up.bias": ("layer.{n}.mlp.gate_proj.bias", "layer.{n}.mlp.up_proj.bias"),
    "blocks.{n}.mlp.down.weight": ("layer.{n}.mlp.down_proj.weight",),
    "blocks.{n}.mlp.down.bias": ("layer.{n}.mlp.down_proj.bias",),
    "blocks.{n}.ls2": ("layer.{n}.layer_scale2.lambda1",),
    "norm.weight": ("norm.weight",),
    "norm.bias": ("norm.bias",),
}
_UNUSED_KEYS = {"embeddings.mask_token": "embeddings.cls_token"}  # optional; same shape as the value


def checkpoint_keys(name: str) -> tuple[str, ...]:
    """The checkpoint tensors (canonical backbone keys) that fill the model's state-dict entry ``name``."""
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    template = f"blocks.{{n}}.{block[2]}" if block else name
    return tuple(key.format(n=block[1]) if block else key for key in CHECKPOINT_KEYS[template])


def _meta_model(config: TaggerConfig) -> TaggerModel:
    with torch.device("meta"):
        return TaggerModel(config)


def _backbone_sources(model: TaggerModel) -> dict[str, tuple[str, ...]]:
    return {name: checkpoint_keys(name) for name in model.state_dict() if not name.startswith("head.")}


def backbone_shapes(config: TaggerConfig) -> dict[str, tuple[int, ...]]:
    """Canonical backbone keys (without ``backbone.``, blocks as ``layer.N``) and their shapes."""
    model = _meta_model(config)
    state = model.state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    for name, keys in _backbone_sources(model).items():
        rows, *rest = state[name].shape
        shapes.update({key: (rows // len(keys), *rest) for key in keys if key != ZEROS})
    shapes.update({key: shapes[like] for key, like in _UNUSED_KEYS.items()})
    return shapes


def head_shapes(config: TaggerConfig, names: tuple[str, ...] = ("head", "head_up")) -> dict[str, tuple[int, ...]]:
    """Head keys and shapes, one ``NAME.weight`` (+ ``NAME.bias``) per head Linear."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, layer in zip(names, _meta_model(config).head.layers, strict=False):
        shapes.update({f"{name}.{leaf}": tuple(t.shape) for leaf, t in layer.named_parameters()})
    return shapes


def _require(tensors: dict[str, TensorInfo], key: str, ndim: int, path: Path) -> tuple[int, ...]:
    info = tensors.get(key)
    if info is None:
        raise CheckpointError(f"{path}: missing tensor backbone.{key}; this is not a DINOv3 tagger checkpoint.")
    if len(info.shape) != ndim:
        raise CheckpointError(f"{path}: backbone.{key} has shape {list(info.shape)}, expected {ndim} dimensions.")
    return info.shape


def _split_head(head: dict[str, TensorInfo], descriptor_dim: int, path: Path) -> list[tuple[str, str | None]]:
    """Order the head's Linear(s) input → output; returns ``[(weight_key, bias_key | None)]``."""
    groups: dict[str, dict[str, str]] = {}
    for key, info in head.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "bias"):
            raise CheckpointError(f"{path}: unexpected tensor {key!r} (shape {list(info.shape)}).")
        groups.setdefault(module, {})[leaf] = key
    linears = []
    for leaves in groups.values():
        if "weight" not in leaves:
            raise CheckpointError(f"{path}: head tensor {leaves['bias']!r} has no matching weight.")
        weight = head[leaves["weight"]].shape
        if len(weight) != 2:
            raise CheckpointError(f"{path}: head weight {leaves['weight']!r} has shape {list(weight)}; expected 2-D.")
        bias_key = leaves.get("bias")
        if bias_key is not None and head[bias_key].shape != (weight[0],):
            raise CheckpointError(
                f"{path}: head bias {bias_key!r} has shape {list(head[bias_key].shape)}, expected [{weight[0]}]."
            )
        linears.append((leaves["weight"], bias_key, weight))

    if not linears:
        raise CheckpointError(f"{path}: no head tensors found (only backbone weights).")
    first = [lin for lin in linears if lin[2][1] == descriptor_dim]
    if len(first) == 1 and len(linears) <= 2:
        rest = [lin for lin in linears if lin is not first[0]]
        if not rest or rest[0][2][1] == first[0][2][0]:  # a low-rank pair: rank → num_tags
            return [(weight, bias) for weight, bias, _ in first + rest]
    shapes = ", ".join(f"{w} {list(s)}" for w, _, s in linears)
    raise CheckpointError(
        f"{path}: the head must be one Linear [num_tags, {descriptor_dim}] or a low-rank pair "
        f"[rank, {descriptor_dim}] → [num_tags, rank]; found {shapes}."
    )


@dataclass(frozen=True)
class CheckpointPlan:
    """What a checkpoint holds, validated: the model config and where each tensor lives."""

    path: Path
    config: TaggerConfig
    tensors: dict[str, TensorInfo]  # canonical backbone keys and original head keys
    head_keys: list[tuple[str, str | None]]


def inspect_checkpoint(path: str | os.PathLike, rope_coord_scale: float | None = None) -> CheckpointPlan:
    """Read a checkpoint's header, infer the model sizes and check every tensor strictly. The file
    records neither the head dim nor ``rope_coord_scale``: ``TaggerConfig``'s (by default) then."""
    path = Path(path)
    head_dim = TaggerConfig().head_dim
    if rope_coord_scale is None:
        rope_coord_scale = TaggerConfig.rope_coord_scale
    raw = read_header(path)
    tensors: dict[str, TensorInfo] = {}
    head: dict[str, TensorInfo] = {}
    for key, info in raw.items():
        if not key.startswith(_BACKBONE):
            head[key] = info
            continue
        canonical = re.sub(r"^model\.(?=layer\.)", "", key[len(_BACKBONE) :])  # both block layouts as layer.N
        if canonical.startswith(_IGNORED_PREFIXES):
            continue
        if canonical in tensors:
            raise CheckpointError(f"{path}: tensor {key!r} appears under both block layouts.")
        tensors[canonical] = info

    hidden = _require(tensors, "embeddings.cls_token", 3, path)[-1]
    registers = _require(tensors, "embeddings.register_tokens", 3, path)[1]
    patch = _require(tensors, "embeddings.patch_embeddings.weight", 4, path)[-1]
    intermediate = _require(tensors, "layer.0.mlp.gate_proj.weight", 2, path)[0]
    layer_ids = {int(m.group(1)) for k in tensors if (m := re.match(r"layer\.(\d+)\.", k))}
    if hidden % head_dim:
        raise CheckpointError(f"{path}: hidden size {hidden} is not a multiple of the head dim {head_dim}.")

    head_keys = _split_head(head, hidden * (1 + registers), path)
    head_weights = [raw[w].shape for w, _ in head_keys]
    try:
        config = TaggerConfig(
            hidden_size=hidden,
            num_layers=max(layer_ids) + 1,
            num_heads=hidden // head_dim,
            intermediate_size=intermediate,
            num_registers=registers,
            patch_size=patch,
            rope_coord_scale=rope_coord_scale,
            num_tags=head_weights[-1][0],
            head_rank=head_weights[0][0] if len(head_keys) == 2 else None,
            head_bias=tuple(b is not None for _, b in head_keys),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None

    expected = backbone_shapes(config)
    for key, shape in expected.items():
        found = tensors.get(key)
        if found is None:
            if key not in _UNUSED_KEYS:
                raise CheckpointError(f"{path}: missing tensor backbone.{key} (expected shape {list(shape)}).")
        elif found.shape != shape:
            raise CheckpointError(f"{path}: backbone.{key} has shape {list(found.shape)}, expected {list(shape)}.")
    for key in tensors:
        if key not in expected:
            raise CheckpointError(f"{path}: unexpected tensor backbone.{key} {list(tensors[key].shape)}.")
    tensors.update({k: head[k] for pair in head_keys for k in pair if k is not None})
    return CheckpointPlan(path, config, tensors, head_keys)


def _read_into(f: io.BufferedReader, offset: int, out: torch.Tensor) -> None:
    """Fill ``out`` (contiguous, CPU) with the file's bytes from ``offset`` on."""
    buffer = out.view(-1).view(torch.uint8).numpy().data
    f.seek(offset)
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            raise CheckpointError(f"{f.name}: file ended while reading tensor data.")
        done += n


def _read_tensor(f: io.BufferedReader, info: TensorInfo, out: torch.Tensor) -> None:
    """Fill ``out`` (contiguous, any dtype and device) with one tensor of the file: in place when
    the dtype matches on the CPU, else through a small staging buffer, a slice at a time (a bf16
    head widened to float32 never has a second full-size copy in flight)."""
    if info.dtype == out.dtype and out.device.type == "cpu":
        _read_into(f, info.offset, out)
        return
    flat, step = out.view(-1), max(1, _STAGING_BYTES // info.dtype.itemsize)
    staging = torch.empty(min(step, flat.numel()), dtype=info.dtype)
    for start in range(0, flat.numel(), step):
        chunk = staging[: min(step, flat.numel() - start)]
        _read_into(f, info.offset + start * info.dtype.itemsize, chunk)
        flat[start : start + len(chunk)].copy_(chunk)


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    head_dtype: torch.dtype | None = torch.float32,
    expected_num_tags: int | None = None,
    rope_coord_scale: float | None = None,
) -> TaggerModel:
    """A ready ``TaggerModel`` in eval mode on ``device``: the backbone stored in ``dtype``, the
    head in ``head_dtype`` (``None``: as in the file; it always computes in float32).
    ``expected_num_tags``: the vocabulary length, checked against the head."""
    plan = inspect_checkpoint(path, rope_coord_scale=rope_coord_scale)
    config = plan.config
    if expected_num_tags is not None and config.num_tags != expected_num_tags:
        raise CheckpointError(
            f"{plan.path}: the head predicts {config.num_tags} tags but the vocabulary has "
            f"{expected_num_tags}; checkpoint and vocabulary do not belong together."
        )
    device = torch.device(device)
    model = _meta_model(config)  # no weight is allocated, let alone randomly initialised
    sources = _backbone_sources(model)
    target_dtypes = dict.fromkeys(sources, dtype)
    for n, (weight_key, bias_key) in enumerate(plan.head_keys):
        # A bias follows its weight's dtype: F.linear needs both in one dtype.
        head = head_dtype or plan.tensors[weight_key].dtype
        for leaf, key in (("weight", weight_key), ("bias", bias_key)):
            if key is not None:
                sources[f"head.layers.{n}.{leaf}"] = (key,)
                target_dtypes[f"head.layers.{n}.{leaf}"] = head

    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    with open(plan.path, "rb") as f:
        # Read in file order so that a cold file is read sequentially.
        for name in sorted(sources, key=lambda name: min(plan.tensors[k].offset for k in sources[name] if k != ZEROS)):
            out = torch.empty(shapes[name], dtype=target_dtypes[name], device=device)
            rows = out.view(len(sources[name]), -1)  # one row block per source tensor
            for key, block in zip(sources[name], rows, strict=True):
                if key == ZEROS:
                    block.zero_()
                else:
                    _read_tensor(f, plan.tensors[key], block)
            state[name] = out
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return fast_paths.apply(model.eval())
