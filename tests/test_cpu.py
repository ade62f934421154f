"""CPU tuning and the opt-in int8 precision (``tagger.engine.cpu``).

int8 is checked against fp32 on a random model with the real layout, big enough that
quantization error accumulates through several blocks (4 blocks, width 256, 500 tags) and
small enough to run in about a second. The allocator setting is checked by counting page
faults in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tagger.cli import main as cli_main
from tagger.engine import cpu
from tagger.engine.model import TaggerConfig
from tagger.engine.synthetic import write_random_checkpoint, write_random_vocabulary
from tagger.engine.tagger import Tagger, parse_dtype
from tagger.features.relevance import relevance
from tagger.web.server import load_context, parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]

# The stated tolerance of the int8 precision on this test model (measured: max |Δprob|
# 0.008, mean 0.002, top-30 overlap 29-30 of 30); the README gives the full-size figures.
INT8_MAX_ABS_DPROB = 0.025
INT8_MAX_MEAN_ABS_DPROB = 0.005
INT8_MIN_TOP30_OVERLAP = 26 / 30

needs_int8 = pytest.mark.skipif(
    not torch.cpu._is_avx2_supported() or "x86" not in torch.backends.quantized.supported_engines,
    reason="int8 kernels need an x86-64 CPU with AVX2",
)


@pytest.fixture(scope="module")
def medium_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    config = TaggerConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, num_tags=500)
    folder = tmp_path_factory.mktemp("medium_model")
    checkpoint = write_random_checkpoint(folder / "medium.safetensors", config, seed=3)
    return checkpoint, write_random_vocabulary(folder / "medium_vocab.json", config.num_tags)


@pytest.fixture(scope="module")
def medium_pixels(make_image) -> list[torch.Tensor]:
    from tagger.engine.preprocess import image_to_pixels

    return [image_to_pixels(make_image(w, h, seed=s)) for s, (w, h) in enumerate([(96, 96), (128, 80), (64, 112)])]


@pytest.fixture(scope="module")
def fp32_and_int8(medium_files) -> tuple[Tagger, Tagger]:
    checkpoint, vocab = medium_files
    return (
        Tagger(checkpoint, vocab, device="cpu", dtype="fp32"),
        Tagger(checkpoint, vocab, device="cpu", dtype="int8"),
    )


# ---------------------------------------------------------------------------------------------
# int8


@needs_int8
def test_int8_matches_fp32_within_its_stated_tolerance(fp32_and_int8, medium_pixels):
    reference, quantized = (t.run(medium_pixels) for t in fp32_and_int8)
    delta = np.abs(quantized - reference)
    assert delta.max() <= INT8_MAX_ABS_DPROB, delta.max()
    assert delta.mean() <= INT8_MAX_MEAN_ABS_DPROB, delta.mean()
    assert delta.max() > 0, "int8 gave exactly the fp32 scores: the int8 layers did not run"
    for ref_row, q_row in zip(reference, quantized, strict=True):
        overlap = set(np.argsort(-ref_row)[:30]) & set(np.argsort(-q_row)[:30])
        assert len(overlap) / 30 >= INT8_MIN_TOP30_OVERLAP
    # The probabilities themselves vary more across images than int8 moves them.
    assert np.abs(reference[0] - reference[1]).max() > 3 * delta.max()


@needs_int8
def test_int8_tagger_quantizes_the_backbone_and_leaves_the_head(fp32_and_int8):
    fp32, int8 = fp32_and_int8
    assert int8.dtype == torch.qint8 and parse_dtype("INT8") == torch.qint8
    backbone_linears = [m for name, m in int8.model.named_modules() if not name.startswith("head")]
    assert not any(isinstance(m, nn.Linear) for m in backbone_linears)
    assert sum(isinstance(m, cpu.DynamicInt8Linear) for m in backbone_linears) == 4 * 4  # 4 per block
    for ours, theirs in zip(int8.model.head.layers, fp32.model.head.layers, strict=True):
        assert torch.equal(ours.weight, theirs.weight)  # the head is untouched, in the file's dtype
    params = {name: p.dtype for name, p in int8.model.named_parameters() if not name.startswith("head")}
    assert set(params.values()) == {torch.float32}, params  # norms, layer scales, patch embedding


@needs_int8
def test_int8_linear_close_to_float_for_any_input_layout():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(320, 96, bias=bias)
        layer = cpu.DynamicInt8Linear(linear, cpu.int8_engine())
        x = torch.randn(7, 3, 320).transpose(0, 1)  # 3-D and not contiguous
        with torch.inference_mode():
            expected, got = linear(x), layer(x)
        assert got.shape == expected.shape == (3, 7, 96)
        rms, error = expected.pow(2).mean().sqrt(), got - expected
        assert error.pow(2).mean().sqrt() <= 0.03 * rms  # 7-bit inputs, 8-bit weights: ~1.5 %
        assert 0 < error.abs().max() <= 0.1 * rms


@needs_int8
def test_int8_layer_passes_gradients_to_its_input():
    torch.manual_seed(0)
    layer = cpu.DynamicInt8Linear(nn.Linear(64, 32), cpu.int8_engine())
    x = torch.randn(5, 64, requires_grad=True)
    grad_out = torch.randn(5, 32)
    (grad,) = torch.autograd.grad(layer(x), x, grad_out)
    torch.testing.assert_close(grad, grad_out @ layer.dequantized_weight())


@needs_int8
def test_relevance_runs_on_int8_and_agrees_with_fp32(fp32_and_int8, medium_pixels):
    fp32, int8 = fp32_and_int8
    reference, quantized = (relevance(t, medium_pixels[:1], tag_index=7)[0] for t in (fp32, int8))
    assert np.isfinite(quantized.map).all() and quantized.map.max() == 1.0
    assert np.corrcoef(reference.map.ravel(), quantized.map.ravel())[0, 1] > 0.9
    assert abs(reference.probability - quantized.probability) <= INT8_MAX_ABS_DPROB


@needs_int8
def test_cli_and_app_select_int8(capsys, medium_files, image_files):
    checkpoint, vocab = medium_files
    model = ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu"]
    code = cli_main(["--images", str(image_files[0]), "--format", "json", "--topk", "5", *model, "--dtype", "int8"])
    out, _ = capsys.readouterr()
    assert code == 0 and len(json.loads(out)[0]["tags"]) == 5
    context = load_context(parse_args([*model, "--dtype", "int8"]))
    assert context.tagger.dtype == torch.qint8


def test_app_dtype_from_the_environment(monkeypatch):
    monkeypatch.setenv("TAGGER_DTYPE", "int8")
    assert parse_args([]).dtype == "int8"
    monkeypatch.delenv("TAGGER_DTYPE")
    assert parse_args([]).dtype is None


def test_int8_without_kernels_is_a_clear_error(monkeypatch, capsys, tiny_files, image_files):
    checkpoint, vocab = tiny_files
    monkeypatch.setattr(cpu, "_X86_ENGINES", ("no-such-engine",))
    with pytest.raises(ValueError, match=r"no working x86 int8 kernels.*use fp32"):
        Tagger(checkpoint, vocab, device="cpu", dtype="int8")
    model = ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu", "--dtype", "int8"]
    assert cli_main(["--images", str(image_files[0]), *model]) == 2
    assert "int8 kernels" in capsys.readouterr().err


def test_int8_on_another_architecture_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    with pytest.raises(ValueError, match=r"needs an x86-64 CPU.*aarch64.*use fp32"):
        cpu.int8_engine()


def test_int8_is_a_cpu_precision(monkeypatch, tiny_files):
    checkpoint, vocab = tiny_files
    monkeypatch.setattr("tagger.engine.tagger.resolve_device", lambda device: torch.device("cuda"))
    with pytest.raises(ValueError, match="CPU only"):
        Tagger(checkpoint, vocab, device="cuda", dtype="int8")


# ---------------------------------------------------------------------------------------------
# Allocator

_FAULTS_SCRIPT = textwrap.dedent(
    """
    import json, resource, threading, torch
    from tagger.engine import cpu

    def faults_per_round(out=None):
        counts = []
        for _ in range(4):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            # A 512 px forward's activations (MLP in and out, then qkv), two alive at a time:
            # above the mmap threshold, together more than one 64 MiB thread heap.
            hidden = torch.empty(1029 * 10240).fill_(1.0)
            mlp_out = torch.empty(1029 * 5120).fill_(1.0)
            del hidden
            torch.empty(1029 * 3840).fill_(1.0)
            del mlp_out
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        result = min(counts[1:])
        if out is not None:
            out.append(result)
        return result

    def in_a_thread():  # as in the app, where Gradio's worker threads run the model
        out = []
        thread = threading.Thread(target=faults_per_round, args=(out,))
        thread.start()
        thread.join()
        return out[0]

    default, default_thread = faults_per_round(), in_a_thread()
    tuned = cpu.keep_freed_memory()
    print(json.dumps({"default": default, "default_thread": default_thread, "tuned": tuned,
                      "after": faults_per_round(), "after_thread": in_a_thread(), "again": cpu.keep_freed_memory()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_stops_page_fault_churn():
    proc = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["tuned"]:
        pytest.skip("not glibc")
    # ~10,000 pages faulted in again on every round, then none.
    assert result["default"] > 5_000 and result["default_thread"] > 5_000, result
    assert result["after"] < 100, result
    # In a thread, an arena made before the setting may still hand one block back per round.
    assert result["after_thread"] <= result["default_thread"] / 2, result
    assert result["again"] is True


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(cpu.ENV_DISABLE, "0")
    assert cpu._apply_mallopt() is False


_RELEASE_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from tagger.engine import cpu

    cpu.keep_freed_memory()
    blocks = [torch.empty(8 * 2**20).fill_(1.0) for _ in range(8)]  # 8 x 32 MiB, then freed
    del blocks
    kept = cpu.rss_bytes()
    cpu.release_memory()
    print(json.dumps({"tuned": cpu.keep_freed_memory(), "kept": kept, "released": cpu.rss_bytes()}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_release_memory_gives_back_what_was_kept():
    proc = subprocess.run(
        [sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["tuned"]:
        pytest.skip("not glibc")
    assert result["kept"] - result["released"] > 200 * 2**20, result


# ---------------------------------------------------------------------------------------------
# The benchmark's baseline


def test_the_benchmarks_authors_style_model_computes_what_ours_does(tiny_files):
    """``benchmarks/authors_style.py`` (the authors' way, for speed comparisons) must be the
    same function as our model, or its timings would compare different work."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from authors_style import load_authors_style
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    from tagger.engine.weights import inspect_checkpoint, load_model

    checkpoint, _ = tiny_files
    theirs = load_authors_style(str(checkpoint), inspect_checkpoint(checkpoint).config)
    ours = load_model(checkpoint)
    pixels = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(theirs(pixels), ours(pixels), rtol=1e-4, atol=1e-5)
