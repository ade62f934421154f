"""The checkpoint loader: layouts, head shapes, inferred sizes, dtypes and every bad-file case."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tagger.engine.model import TaggerConfig, TaggerModel
from tagger.engine.synthetic import random_state_dict, write_random_checkpoint
from tagger.engine.weights import CheckpointError, inspect_checkpoint, load_model

NUM_TAGS = 24


def _pixels(batch: int = 2, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _logits(model: TaggerModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(pixels)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    """A valid float32 state dict (dense head ``head.weight`` + ``head.bias``) to break."""
    return random_state_dict(TaggerConfig.tiny(num_tags=NUM_TAGS), dtype=torch.float32)


# -- layouts and optional keys -----------------------------------------------------------------


def test_both_block_layouts_give_identical_logits(tmp_path):
    config = TaggerConfig.tiny(num_tags=NUM_TAGS)
    flat = write_random_checkpoint(tmp_path / "flat.safetensors", config, layout="layer")
    nested = write_random_checkpoint(tmp_path / "nested.safetensors", config, layout="model.layer")
    assert any(k.startswith("backbone.model.layer.") for k in load_file(str(nested)))

    pixels = _pixels()
    a, b = _logits(load_model(flat), pixels), _logits(load_model(nested), pixels)
    assert a.shape == (2, NUM_TAGS)
    assert torch.equal(a, b)


def test_rope_buffers_are_ignored_and_mask_token_is_optional(tmp_path, state):
    reference = load_model(_save(state, tmp_path / "ref.safetensors"))

    with_rope = dict(state)
    with_rope["backbone.rope_embeddings.inv_freq"] = torch.ones(16)
    with_rope["backbone.rope_embeddings.something_else"] = torch.ones(3, 5)
    without_mask = {k: v for k, v in state.items() if k != "backbone.embeddings.mask_token"}

    pixels = _pixels()
    expected = _logits(reference, pixels)
    for name, variant in [("rope", with_rope), ("nomask", without_mask)]:
        model = load_model(_save(variant, tmp_path / f"{name}.safetensors"))
        assert torch.equal(_logits(model, pixels), expected), name


def test_safetensors_metadata_is_accepted(tmp_path, state):
    path = tmp_path / "meta.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "note": "trained somewhere"})
    assert load_model(path).config.num_tags == NUM_TAGS


# -- heads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", ["head", "classifier.fc", "tagger_head"])
def test_dense_head_any_name_with_and_without_bias(tmp_path, name, bias):
    config = TaggerConfig.tiny(num_tags=NUM_TAGS, head_bias=(bias,))
    state = random_state_dict(config, dtype=torch.float32, head_names=(name,))
    assert (f"{name}.bias" in state) is bias
    model = load_model(_save(state, tmp_path / "c.safetensors"))
    assert model.config.head_rank is None
    assert model.config.head_bias == (bias,)

    pixels = _pixels()
    with torch.inference_mode():
        descriptor = model.descriptor(pixels).float()
        logits = model(pixels)
    expected = descriptor @ state[f"{name}.weight"].T
    if bias:
        expected = expected + state[f"{name}.bias"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [(True, True), (False, True), (True, False), (False, False)])
# The first names sort before the second ones and the other way round: the loader must find
# which Linear comes first from the shapes, not from the names or the order in the file.
@pytest.mark.parametrize("names", [("a_down", "b_up"), ("z_down", "b_up"), ("head.1", "head.0")])
def test_low_rank_head_matches_manual_computation(tmp_path, names, bias):
    rank = 8
    config = TaggerConfig.tiny(num_tags=NUM_TAGS, head_rank=rank, head_bias=bias)
    state = random_state_dict(config, dtype=torch.float32, head_names=names)
    model = load_model(_save(state, tmp_path / "lowrank.safetensors"))
    assert model.config.head_rank == rank
    assert model.config.head_bias == bias
    assert model.config.num_tags == NUM_TAGS

    first, second = names
    w1, w2 = state[f"{first}.weight"], state[f"{second}.weight"]
    assert w1.shape == (rank, config.descriptor_dim) and w2.shape == (NUM_TAGS, rank)
    pixels = _pixels()
    with torch.inference_mode():
        x = model.descriptor(pixels).float()
        logits = model(pixels)
    hidden = x @ w1.T + (state[f"{first}.bias"] if bias[0] else 0)
    expected = hidden @ w2.T + (state[f"{second}.bias"] if bias[1] else 0)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


# -- sizes inferred from the file --------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        TaggerConfig(
            hidden_size=192,
            num_layers=3,
            num_heads=3,
            intermediate_size=320,
            num_registers=2,
            patch_size=8,
            num_tags=17,
            head_rank=5,
            head_bias=(False, True),
        ),
        TaggerConfig(
            hidden_size=64,
            num_layers=1,
            num_heads=1,
            intermediate_size=96,
            num_registers=0,
            num_tags=40,
            head_bias=(True,),
        ),
    ],
    ids=["lowrank-192", "dense-64"],
)
def test_config_is_inferred_from_shapes(tmp_path, config):
    path = write_random_checkpoint(tmp_path / "c.safetensors", config, head_names=("x", "y"))
    assert inspect_checkpoint(path).config == config
    model = load_model(path)
    assert model.config == config
    logits = _logits(model, _pixels(1, 2 * config.patch_size, 3 * config.patch_size))
    assert logits.shape == (1, config.num_tags)
    assert torch.isfinite(logits).all()


def test_rope_coord_scale_is_passed_through(tiny_files):
    checkpoint, _ = tiny_files
    assert load_model(checkpoint).config.rope_coord_scale == 2.0
    assert load_model(checkpoint, rope_coord_scale=1.0).config.rope_coord_scale == 1.0


# -- the loaded values are exactly the file's --------------------------------------------------


@pytest.mark.parametrize("layout", ["layer", "model.layer"])
def test_loaded_parameters_are_exactly_the_file_tensors(tmp_path, layout):
    config = TaggerConfig.tiny(num_tags=NUM_TAGS, num_layers=2)
    path = write_random_checkpoint(tmp_path / "c.safetensors", config, layout=layout, dtype=torch.bfloat16)
    file = {k.replace("backbone.model.layer.", "backbone.layer."): v.float() for k, v in load_file(str(path)).items()}
    model = load_model(path, dtype=torch.float32)
    params = dict(model.named_parameters())
    c, i = config.hidden_size, config.intermediate_size

    assert all(p.device.type == "cpu" and not p.is_meta for p in params.values())
    assert torch.equal(params["cls_token"], file["backbone.embeddings.cls_token"])
    assert torch.equal(params["register_tokens"], file["backbone.embeddings.register_tokens"])
    assert torch.equal(params["patch_embed.weight"], file["backbone.embeddings.patch_embeddings.weight"])
    assert torch.equal(params["patch_embed.bias"], file["backbone.embeddings.patch_embeddings.bias"])
    assert torch.equal(params["norm.weight"], file["backbone.norm.weight"])
    assert torch.equal(params["norm.bias"], file["backbone.norm.bias"])
    for n in range(config.num_layers):
        src, dst = f"backbone.layer.{n}.", f"blocks.{n}."
        qkv_w = params[dst + "attn.qkv.weight"]
        assert torch.equal(qkv_w[:c], file[src + "attention.q_proj.weight"])
        assert torch.equal(qkv_w[c : 2 * c], file[src + "attention.k_proj.weight"])
        assert torch.equal(qkv_w[2 * c :], file[src + "attention.v_proj.weight"])
        qkv_b = params[dst + "attn.qkv.bias"]  # one bias for the fused matmul to add
        assert torch.equal(qkv_b[:c], file[src + "attention.q_proj.bias"])
        assert torch.equal(qkv_b[c : 2 * c], torch.zeros(c))  # DINOv3's k has no bias
        assert torch.equal(qkv_b[2 * c :], file[src + "attention.v_proj.bias"])
        assert torch.equal(params[dst + "attn.proj.weight"], file[src + "attention.o_proj.weight"])
        assert torch.equal(params[dst + "attn.proj.bias"], file[src + "attention.o_proj.bias"])
        gate_up_w, gate_up_b = params[dst + "mlp.gate_up.weight"], params[dst + "mlp.gate_up.bias"]
        assert torch.equal(gate_up_w[:i], file[src + "mlp.gate_proj.weight"])
        assert torch.equal(gate_up_w[i:], file[src + "mlp.up_proj.weight"])
        assert torch.equal(gate_up_b[:i], file[src + "mlp.gate_proj.bias"])
        assert torch.equal(gate_up_b[i:], file[src + "mlp.up_proj.bias"])
        assert torch.equal(params[dst + "mlp.down.weight"], file[src + "mlp.down_proj.weight"])
        assert torch.equal(params[dst + "mlp.down.bias"], file[src + "mlp.down_proj.bias"])
        for norm in ("norm1", "norm2"):
            assert torch.equal(params[f"{dst}{norm}.weight"], file[f"{src}{norm}.weight"])
            assert torch.equal(params[f"{dst}{norm}.bias"], file[f"{src}{norm}.bias"])
        assert torch.equal(params[dst + "ls1"], file[src + "layer_scale1.lambda1"])
        assert torch.equal(params[dst + "ls2"], file[src + "layer_scale2.lambda1"])
    assert torch.equal(params["head.layers.0.weight"], file["head.weight"])
    assert torch.equal(params["head.layers.0.bias"], file["head.bias"])


def test_model_is_built_without_random_initialisation(tmp_path, tiny_files, monkeypatch):
    """No weight is ever materialised with random values: every init call sees a meta tensor."""
    devices: list[str] = []
    for name in ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "zeros_", "ones_"):
        original = getattr(torch.nn.init, name)

        def spy(tensor, *args, _original=original, **kwargs):
            devices.append(tensor.device.type)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, spy)
    checkpoint, _ = tiny_files
    model = load_model(checkpoint)
    assert set(devices) <= {"meta"}
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


# -- dtypes -------------------------------------------------------------------------------------


def test_bf16_backbone_with_float32_head_by_default(tiny_files):
    checkpoint, _ = tiny_files
    model = load_model(checkpoint, dtype=torch.bfloat16)
    head = {n: p for n, p in model.named_parameters() if n.startswith("head.")}
    backbone = {n: p for n, p in model.named_parameters() if not n.startswith("head.")}
    assert {p.dtype for p in backbone.values()} == {torch.bfloat16}
    assert {p.dtype for p in head.values()} == {torch.float32}
    logits = _logits(model, _pixels())
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("file_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_head_dtype_none_keeps_the_file_dtype(tmp_path, file_dtype):
    config = TaggerConfig.tiny(num_tags=NUM_TAGS)
    path = write_random_checkpoint(tmp_path / "c.safetensors", config, dtype=file_dtype)
    model = load_model(path, dtype=torch.float32, head_dtype=None)
    assert model.head.layers[0].weight.dtype == file_dtype
    assert model.head.layers[0].bias.dtype == file_dtype
    assert model.patch_embed.weight.dtype == torch.float32
    assert _logits(model, _pixels()).dtype == torch.float32


@pytest.mark.parametrize("rank", [None, 8])
def test_bf16_stored_head_equals_float32_math_on_the_same_values(tmp_path, rank):
    bias = (True,) if rank is None else (True, True)
    config = TaggerConfig.tiny(num_tags=NUM_TAGS, head_rank=rank, head_bias=bias)
    path = write_random_checkpoint(tmp_path / "c.safetensors", config, dtype=torch.bfloat16)
    narrow = load_model(path, head_dtype=None)
    wide = load_model(path, head_dtype=torch.float32)
    assert narrow.head.layers[0].weight.dtype == torch.bfloat16

    pixels = _pixels()
    with torch.inference_mode():
        descriptor = narrow.descriptor(pixels)
        out = narrow.head(descriptor)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _logits(wide, pixels), rtol=1e-6, atol=1e-6)
    expected = descriptor.float()
    for layer in narrow.head.layers:
        expected = expected @ layer.weight.float().T + layer.bias.float()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_backbone_dtype_casts_file_values(tmp_path):
    config = TaggerConfig.tiny(num_tags=NUM_TAGS)
    path = write_random_checkpoint(tmp_path / "c.safetensors", config, dtype=torch.float32)
    model = load_model(path, dtype=torch.bfloat16)
    expected = load_file(str(path))["backbone.layer.0.mlp.down_proj.weight"].to(torch.bfloat16)
    assert torch.equal(model.blocks[0].mlp.down.weight, expected)


# -- bad files: each one a CheckpointError naming the file and what is wrong ------------------


def _raises(path: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.safetensors", "not found")


def test_directory(tmp_path):
    _raises(tmp_path, "directory")


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _raises(path, "0 bytes")


def test_text_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("These are not the weights you are looking for.\n" * 10)
    _raises(path, "not a safetensors file")


def test_header_length_larger_than_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b'{"a": 1}')
    _raises(path, "header length")


@pytest.mark.parametrize("header", [b"this is not json", b"[1, 2, 3]", b"\xff\xfe\xfd"])
def test_header_not_json(tmp_path, header):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    _raises(path, "not JSON")


def test_malformed_header_entry(tmp_path):
    header = json.dumps({"head.weight": {"dtype": "F32", "shape": [2, 2]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    _raises(path, "head.weight")


def test_truncated_file(tmp_path, state):
    path = _save(state, tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _raises(path, "truncated")


def test_file_cut_inside_the_header(tmp_path, state):
    path = _save(state, tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[:200])
    _raises(path)


def test_pytorch_pickle_given_as_checkpoint(tmp_path, state):
    path = tmp_path / "model.safetensors"
    torch.save(state, path)
    _raises(path, "not a safetensors file")


@pytest.mark.parametrize(
    "key",
    [
        "backbone.embeddings.cls_token",
        "backbone.embeddings.register_tokens",
        "backbone.layer.0.mlp.gate_proj.weight",
        "backbone.layer.1.attention.v_proj.bias",
        "backbone.layer.0.layer_scale2.lambda1",
        "backbone.norm.bias",
    ],
)
def test_missing_backbone_tensor_is_named(tmp_path, state, key):
    del state[key]
    _raises(_save(state, tmp_path / "c.safetensors"), key, "missing")


def test_missing_middle_block_is_named(tmp_path):
    state = random_state_dict(TaggerConfig.tiny(num_tags=NUM_TAGS, num_layers=3), dtype=torch.float32)
    state = {k: v for k, v in state.items() if not k.startswith("backbone.layer.1.")}
    _raises(_save(state, tmp_path / "c.safetensors"), "backbone.layer.1.")


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("backbone.layer.0.attention.k_proj.bias", (128,)),  # DINOv3's k projection has no bias
        ("backbone.layer.0.attention.qkv.weight", (384, 128)),  # a fused layout from another codebase
        ("backbone.embeddings.position_embeddings", (1, 5, 128)),
    ],
)
def test_unexpected_backbone_tensor_is_named(tmp_path, state, key, shape):
    state[key] = torch.zeros(shape)
    _raises(_save(state, tmp_path / "c.safetensors"), key)


def test_misshaped_tensor_names_key_and_both_shapes(tmp_path, state):
    key = "backbone.layer.1.attention.q_proj.weight"
    state[key] = torch.zeros(128, 64)
    _raises(_save(state, tmp_path / "c.safetensors"), key, "[128, 64]", "[128, 128]")


def test_misshaped_intermediate_tensor(tmp_path, state):
    key = "backbone.layer.1.mlp.up_proj.weight"
    state[key] = torch.zeros(200, 128)
    _raises(_save(state, tmp_path / "c.safetensors"), key, "[200, 128]", "[256, 128]")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_float_dtype(tmp_path, state, dtype):
    state["backbone.layer.0.norm1.weight"] = torch.ones(128, dtype=dtype)
    _raises(_save(state, tmp_path / "c.safetensors"), "backbone.layer.0.norm1.weight", "dtype")


def test_head_with_three_linears(tmp_path, state):
    state["extra.weight"] = torch.zeros(NUM_TAGS, NUM_TAGS)
    state["more.weight"] = torch.zeros(NUM_TAGS, NUM_TAGS)
    _raises(_save(state, tmp_path / "c.safetensors"), "head", "extra.weight", "more.weight")


def test_low_rank_pair_whose_shapes_do_not_chain(tmp_path, state):
    del state["head.weight"], state["head.bias"]
    state["down.weight"] = torch.zeros(8, 640)
    state["up.weight"] = torch.zeros(NUM_TAGS, 9)
    _raises(_save(state, tmp_path / "c.safetensors"), "down.weight [8, 640]", f"up.weight [{NUM_TAGS}, 9]")


def test_head_weight_3d(tmp_path, state):
    state["head.weight"] = state["head.weight"].reshape(NUM_TAGS, 640, 1)
    _raises(_save(state, tmp_path / "c.safetensors"), "head.weight", "2-D")


def test_head_weight_with_wrong_input_size(tmp_path, state):
    state["head.weight"] = torch.zeros(NUM_TAGS, 512)
    _raises(_save(state, tmp_path / "c.safetensors"), "head.weight", "[24, 512]", "640")


def test_head_bias_of_wrong_length(tmp_path, state):
    state["head.bias"] = torch.zeros(NUM_TAGS + 1)
    _raises(_save(state, tmp_path / "c.safetensors"), "head.bias", f"[{NUM_TAGS + 1}]", f"[{NUM_TAGS}]")


def test_head_bias_without_weight(tmp_path, state):
    state["orphan.bias"] = torch.zeros(NUM_TAGS)
    _raises(_save(state, tmp_path / "c.safetensors"), "orphan.bias")


def test_no_head(tmp_path, state):
    del state["head.weight"], state["head.bias"]
    _raises(_save(state, tmp_path / "c.safetensors"), "head")


def test_num_tags_must_match_the_vocabulary(tiny_files, tiny_config):
    checkpoint, _ = tiny_files
    n = tiny_config.num_tags
    _raises(checkpoint, str(n), str(n + 5), expected_num_tags=n + 5)
    assert load_model(checkpoint, expected_num_tags=n).config.num_tags == n


def test_hidden_size_not_multiple_of_head_dim(tmp_path):
    config = TaggerConfig(hidden_size=96, num_layers=1, num_heads=1, intermediate_size=64, num_registers=1, num_tags=5)
    path = write_random_checkpoint(tmp_path / "c.safetensors", config)
    _raises(path, "96", "64")


@pytest.mark.parametrize(
    ("weight_dtype", "bias_dtype"), [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]
)
def test_head_with_mixed_file_dtypes_runs_when_kept_as_stored(tmp_path, state, weight_dtype, bias_dtype):
    state["head.weight"] = state["head.weight"].to(weight_dtype)
    state["head.bias"] = state["head.bias"].to(bias_dtype)
    model = load_model(_save(state, tmp_path / "c.safetensors"), head_dtype=None)
    pixels = _pixels()
    with torch.inference_mode():
        descriptor = model.descriptor(pixels)
        logits = model(pixels)
    expected = descriptor @ state["head.weight"].float().T + state["head.bias"].to(weight_dtype).float()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


# -- what other code may rely on ---------------------------------------------------------------


def test_every_projection_is_an_nn_linear_the_forward_calls(tiny_files):
    """A generic swap of ``nn.Linear`` modules (e.g. dynamic int8) reaches every projection:
    replaced by modules holding their own copy of the weights, the model computes the same."""

    class Swapped(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            self.weight, self.bias = linear.weight.clone(), None if linear.bias is None else linear.bias.clone()
            linear.weight.fill_(float("nan"))  # any path reading the original weight now shows

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.weight, self.bias)

    checkpoint, _ = tiny_files
    model = load_model(checkpoint, dtype=torch.float32)
    pixels = _pixels()
    expected = _logits(model, pixels)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 * model.config.num_layers + len(model.head.layers)  # qkv, proj, gate_up, down
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Swapped(linear))
    torch.testing.assert_close(_logits(model, pixels), expected, rtol=0, atol=0)


def test_key_layout_covers_the_model_state_dict_once(tiny_config):
    """``CHECKPOINT_KEYS`` maps every backbone entry of the model's state dict, and every
    checkpoint key (``backbone_shapes``, used by the loader and ``tagger.engine.synthetic``) fills one."""
    from tagger.engine.weights import CHECKPOINT_KEYS, ZEROS, backbone_shapes, checkpoint_keys

    model = TaggerModel(tiny_config)
    names = [n for n in model.state_dict() if not n.startswith("head.")]
    assert checkpoint_keys("blocks.0.attn.qkv.bias")[1] == ZEROS  # k's bias: zeros, not a checkpoint tensor
    sources = [key for name in names for key in checkpoint_keys(name) if key != ZEROS]
    assert len(sources) == len(set(sources))
    assert set(backbone_shapes(tiny_config)) == {*sources, "embeddings.mask_token"}
    templates = {n if not n.startswith("blocks.") else "blocks.{n}." + n.split(".", 2)[2] for n in names}
    assert templates == set(CHECKPOINT_KEYS)


def test_converting_reads_go_slice_by_slice_through_a_small_buffer(tmp_path, monkeypatch):
    import tagger.engine.weights as weights

    monkeypatch.setattr(weights, "_STAGING_BYTES", 1000)  # slices end mid-row and mid-tensor
    config = TaggerConfig.tiny(num_tags=NUM_TAGS)
    path = write_random_checkpoint(tmp_path / "c.safetensors", config, dtype=torch.bfloat16)
    file = load_file(str(path))
    model = load_model(path, dtype=torch.float32, head_dtype=torch.float32)
    assert torch.equal(model.head.layers[0].weight, file["head.weight"].float())
    assert torch.equal(model.blocks[1].mlp.down.weight, file["backbone.layer.1.mlp.down_proj.weight"].float())
    gate_up = model.blocks[0].mlp.gate_up.weight
    assert torch.equal(gate_up[config.intermediate_size :], file["backbone.layer.0.mlp.up_proj.weight"].float())
