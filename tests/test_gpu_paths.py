"""What keeps the GPU paths right on every GPU, proved on the CPU.

* The precision follows the compute capability of the device actually used (mocked here):
  bf16 from 8.0 (Ampere) on, fp32 below, never ``is_bf16_supported``'s emulation answer.
* Nothing per-thread is rebuilt by a new thread (ZeroGPU runs each call in one): no Conv2d
  (cuDNN convolution plans), cuDNN attention off once the model module is imported.
* Per-forward work that need not be: the fused qkv carries one bias with a zero k part (added
  by the matmul), RoPE cos/sin and the mask are cached per grid on the device.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tagger.engine import model as model_module
from tagger.engine.model import PatchEmbed, TaggerConfig, TaggerModel
from tagger.engine.tagger import Tagger, default_dtype
from tagger.engine.weights import load_model
from tagger.features.relevance import relevance


# -- 1. precision by compute capability -------------------------------------------------------
@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> dict[int, tuple[int, int]]:
    """Two mocked GPUs: 0 is a T4 (sm75), 1 an A100 (sm80); the current device is 0."""
    capabilities = {0: (7, 5), 1: (8, 0)}
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capabilities[index])

    def emulated(including_emulation: bool = True) -> bool:
        raise AssertionError("is_bf16_supported says yes on a T4 by emulation; it must not decide")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated)
    return capabilities


def test_bf16_only_on_compute_capability_8_and_up(gpus: dict[int, tuple[int, int]]) -> None:
    assert default_dtype(torch.device("cuda:0")) == torch.float32  # T4: no fused bf16 attention
    assert default_dtype(torch.device("cuda:1")) == torch.bfloat16
    assert default_dtype(torch.device("cuda")) == torch.float32  # the current device, 0
    gpus[0] = (9, 0)  # H100 / H200
    assert default_dtype(torch.device("cuda")) == torch.bfloat16
    gpus[1] = (6, 1)  # a Pascal card next to it: the index decides, not the first GPU
    assert default_dtype(torch.device("cuda:1")) == torch.float32


def test_zero_gpu_keeps_bf16_without_querying_cuda(gpus: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: pytest.fail("queried"))
    assert default_dtype(torch.device("cuda")) == torch.bfloat16


# -- 2. nothing per-thread ---------------------------------------------------------------------
def test_importing_the_model_turns_cudnn_attention_off() -> None:
    code = (
        "import torch; before = torch.backends.cuda.cudnn_sdp_enabled(); import tagger.engine.model; "
        "print(before, torch.backends.cuda.cudnn_sdp_enabled())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["True", "False"]


def test_the_model_has_no_convolution(tiny_config: TaggerConfig) -> None:
    model = TaggerModel(tiny_config)
    assert not [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert model.patch_embed.weight.shape == (tiny_config.hidden_size, 3, 16, 16)  # the checkpoint's layout


@pytest.mark.parametrize("size", [(16, 16), (48, 80), (96, 32)])
def test_patch_embedding_is_exactly_the_convolution(size: tuple[int, int]) -> None:
    embed = PatchEmbed(64, 16)
    # Small integers: every product and sum is exact in float32, whatever the summation order,
    # so the reshape + matmul and the convolution must agree bit for bit.
    generator = torch.Generator().manual_seed(size[0])
    with torch.no_grad():
        embed.weight.copy_(torch.randint(-3, 4, embed.weight.shape, generator=generator).float())
        embed.bias.copy_(torch.randint(-3, 4, embed.bias.shape, generator=generator).float())
    pixels = torch.randint(-4, 5, (2, 3, *size), generator=generator).float()
    with torch.no_grad():
        ours = embed(pixels)
        conv = F.conv2d(pixels, embed.weight, embed.bias, stride=16).flatten(2).transpose(1, 2)
    assert torch.equal(ours, conv)
    # Real-valued: equal up to float32 rounding.
    pixels = torch.randn(2, 3, *size, generator=generator)
    with torch.no_grad():
        nn.init.normal_(embed.weight, std=0.05)
        ours = embed(pixels)
        conv = F.conv2d(pixels, embed.weight, embed.bias, stride=16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, conv, rtol=1e-5, atol=1e-5)


# -- 4. per-forward work -----------------------------------------------------------------------
def test_fused_qkv_bias_has_a_zero_k_part_and_equals_separate_projections(tiny_files) -> None:
    checkpoint, _ = tiny_files
    model = load_model(checkpoint, dtype=torch.float32)
    c = model.config.hidden_size
    x = torch.randn(2, 7, c, generator=torch.Generator().manual_seed(3))
    for block in model.blocks:
        qkv = block.attn.qkv
        assert qkv.bias is not None and torch.equal(qkv.bias[c : 2 * c], torch.zeros(c))
        w, b = qkv.weight, qkv.bias
        with torch.no_grad():
            separate = torch.cat([x @ w[:c].T + b[:c], x @ w[c : 2 * c].T, x @ w[2 * c :].T + b[2 * c :]], -1)
            torch.testing.assert_close(qkv(x), separate, rtol=0, atol=1e-5)
    assert torch.equal(TaggerModel(model.config).blocks[0].attn.qkv.bias[c : 2 * c], torch.zeros(c))


def test_rope_and_mask_are_built_once_per_grid(tiny_tagger: Tagger, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(tiny_tagger.checkpoint_path, dtype=torch.float32)
    built: list[object] = []
    rope_angles, key_mask = model_module.rope_angles, model_module._key_mask
    monkeypatch.setattr(model_module, "rope_angles", lambda *a: built.append(a[:2]) or rope_angles(*a))
    monkeypatch.setattr(model_module, "_key_mask", lambda *a: built.append(a[0]) or key_mask(*a))
    same = torch.randn(2, 3, 48, 64)
    mixed = [torch.randn(3, 48, 64), torch.randn(3, 32, 32)]
    with torch.inference_mode():
        first = [model(same), model(mixed)]
        assert built == [(3, 4), (2, 2), (5 + 12, 5 + 4)]
        again = [model(same), model(mixed)]
    assert built == [(3, 4), (2, 2), (5 + 12, 5 + 4)]  # nothing rebuilt, nothing copied again
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    cos, _ = model.rope((3, 4), model.device, model.dtype)
    assert cos.device == model.device and cos.shape == (1, 1, 5 + 12, model.config.head_dim)
    assert not cos.is_inference() and torch.equal(cos[0, 0, :5], torch.ones(5, model.config.head_dim))


def test_cached_tables_serve_a_gradient_forward_after_inference(tiny_tagger: Tagger, make_image) -> None:
    """Tables first built under inference mode must still work where autograd records
    (the heatmap), and give the same map as a model that never cached anything."""
    pixels = [tiny_tagger.prepare(make_image(64, 48, seed=5))]
    tiny_tagger.run(pixels)  # builds the tables under inference_mode
    cached = relevance(tiny_tagger, pixels, 3, 2)[0].map
    fresh = Tagger(tiny_tagger.checkpoint_path, tiny_tagger.vocab, device="cpu", dtype="fp32")
    assert np.allclose(cached, relevance(fresh, pixels, 3, 2)[0].map, atol=1e-6)
