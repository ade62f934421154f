"""The ONNX export (``tagger.export``), the ONNX Runtime backend and the wd14 package, against
the torch model. One demo export (the tiny random model, the same weights ``demo_files`` writes
each time) serves the module; the ONNX tests are skipped when onnxruntime is not installed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from bulk_support import jsonl_lines, write_images
from PIL import Image
from support import ROOT, assert_sentence, random_image

from tagger.cli import main as cli_main
from tagger.engine.preprocess import normalise
from tagger.engine.synthetic import write_demo_files
from tagger.engine.tagger import Tagger

needs_ort = pytest.mark.skipif(
    find_spec("onnxruntime") is None or find_spec("onnx") is None or find_spec("onnxscript") is None,
    reason="the onnx extra is not installed (pip install -r requirements-onnx.txt)",
)

GRAPH_FILES = ("model.onnx", "model_quantized.onnx", "model_q4.onnx")
SHAPES = [(512, 512), (768, 512), (512, 1024)]  # (height, width)
# Drift of each variant against fp32 torch on the tiny demo model: max |Δp| over every tag of
# the test images, and the least top-30 overlap. Measured 2026-12 on this code (int8 6.6e-3,
# q4 1.2e-2 max |Δp|), bounds with headroom; the benchmark's numbers are in the README.
DRIFT_BOUNDS = {
    "model.onnx": (1e-5, 30),
    "model_quantized.onnx": (0.05, 24),
    "model_q4.onnx": (0.05, 24),
}


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_demo_files(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def torch_tagger(demo_model: tuple[Path, Path]) -> Tagger:
    return Tagger(*demo_model, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m tagger.export --demo --out DIR``, run once for the module."""
    if find_spec("onnxruntime") is None:
        pytest.skip("the onnx extra is not installed")
    from tagger.export import main

    out = tmp_path_factory.mktemp("onnx")
    assert main(["--demo", "--out", str(out)]) == 0
    return out


def _session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _test_images(count: int = 6) -> list[Image.Image]:
    sizes = [(640, 480), (480, 640), (512, 512), (1024, 512), (300, 700), (900, 900)]
    return [
        random_image(*sizes[i % len(sizes)], seed=i).resize((64, 48)).resize(sizes[i % len(sizes)])
        for i in range(count)
    ]


@needs_ort
def test_export_writes_every_file_with_dynamic_batch_and_sides(exported: Path) -> None:
    import onnx

    for graph in ("tagger", "embedding", "backbone"):
        for name in GRAPH_FILES:
            assert (exported / graph / name).is_file()
            assert (exported / graph / (name + ".data")).is_file()  # weights as external data
        proto = onnx.load(str(exported / graph / "model.onnx"), load_external_data=False)
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert proto.graph.input[0].name == "pixel_values"
        # batch, height and width are symbolic: none was fixed to the traced example's size
        assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert (exported / "wd14" / "model.onnx").is_file() and (exported / "wd14" / "selected_tags.csv").is_file()
    assert json.loads((exported / "tagger_vocab.json").read_text())["idx2tag"]


@needs_ort
@pytest.mark.parametrize("graph", ["tagger", "embedding", "backbone"])
def test_graphs_match_torch_at_any_batch_and_size(exported: Path, torch_tagger: Tagger, graph: str) -> None:
    session = _session(exported / graph / "model.onnx")
    model = torch_tagger.model
    reference = {"tagger": model.forward, "embedding": model.descriptor, "backbone": model.tokens}[graph]
    worst = 0.0
    for height, width in SHAPES:
        for batch in (1, 3):
            pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height + batch))
            with torch.inference_mode():
                expected = reference(pixels).float().numpy()
            (got,) = session.run(None, {"pixel_values": pixels.numpy()})
            assert got.shape == expected.shape
            worst = max(worst, float(np.abs(got - expected).max()))
    print(f"{graph}: fp32 max |Δ| {worst:.2e}")
    assert worst < 1e-4


@needs_ort
@pytest.mark.parametrize("name", GRAPH_FILES)
def test_each_variant_stays_within_its_drift_bound(exported: Path, torch_tagger: Tagger, name: str) -> None:
    from tagger.onnx.backend import OnnxTagger

    onnx = OnnxTagger(exported / "tagger" / name)
    pixels = [torch_tagger.prepare(image) for image in _test_images()]
    expected, got = torch_tagger.run(pixels), onnx.run(pixels)
    drift = np.abs(got - expected)
    overlap = min(len(set(np.argsort(-e)[:30]) & set(np.argsort(-g)[:30])) for e, g in zip(expected, got, strict=True))
    print(f"{name}: max |Δp| {drift.max():.2e}, mean |Δp| {drift.mean():.2e}, top-30 overlap ≥ {overlap}")
    max_drift, min_overlap = DRIFT_BOUNDS[name]
    assert drift.max() <= max_drift and overlap >= min_overlap


@needs_ort
def test_4bit_graph_runs_matmulnbits_and_int8_is_per_channel(exported: Path) -> None:
    import onnx

    q4 = onnx.load(str(exported / "tagger" / "model_q4.onnx"), load_external_data=False)
    assert any(node.op_type == "MatMulNBits" for node in q4.graph.node)
    int8 = onnx.load(str(exported / "tagger" / "model_quantized.onnx"))
    scales = [i for i in int8.graph.initializer if i.name.endswith("_scale") and "head" not in i.name]
    assert scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)  # one scale per output channel
    # The head is left in float32 in both quantised graphs (int8's preprocessing turns its Gemm
    # into a MatMul and an Add, on the same float32 weight).
    for proto in (q4, int8):
        head = [i for i in proto.graph.initializer if i.name.startswith("model.head.layers.0.weight")]
        assert len(head) == 1 and head[0].data_type == onnx.TensorProto.FLOAT


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_ort
@pytest.mark.parametrize("fmt", ["json", "tags", "pretty"])
def test_cli_onnxruntime_prints_what_torch_prints(
    exported: Path, demo_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    paths = []
    for i, image in enumerate(_test_images(3)):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    checkpoint, vocab = demo_model
    torch_run = _cli(
        capsys,
        "--images",
        *paths,
        "--format",
        fmt,
        "--checkpoint",
        str(checkpoint),
        "--vocab",
        str(vocab),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
    )
    onnx_run = _cli(capsys, "--images", *paths, "--format", fmt, "--backend", "onnxruntime", "--onnx", str(exported))
    assert torch_run[0] == onnx_run[0] == 0
    if fmt != "json":  # scores printed to 3 decimals: the very same text
        assert onnx_run[1] == torch_run[1]
        return
    # JSON scores have 6 decimals, where float rounding between the two runtimes can show.
    ours, theirs = json.loads(onnx_run[1]), json.loads(torch_run[1])
    assert [e["file"] for e in ours] == [e["file"] for e in theirs] == paths
    for mine, reference in zip(ours, theirs, strict=True):
        _same_tags(mine["tags"], reference["tags"])


def _same_tags(ours: list[dict], theirs: list[dict]) -> None:
    """The same tags in the same order with the same fields; scores (6 decimals) equal up to
    the float rounding that differs between the two runtimes."""
    assert [{k: v for k, v in t.items() if k != "score"} for t in ours] == [
        {k: v for k, v in t.items() if k != "score"} for t in theirs
    ]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs, strict=True)) < 1e-5


@needs_ort
def test_bulk_onnxruntime_writes_what_torch_writes(
    exported: Path, demo_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tagger.bulk.cli import main as bulk_main

    folder = tmp_path / "images"
    write_images(folder, ["a.png", "b.jpg", "c.webp", "d.png"])
    checkpoint, vocab = demo_model
    common = ["--format", "jsonl", "--workers", "0", "--quiet", "--descriptors"]
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    torch_args = ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu", "--dtype", "fp32"]
    assert bulk_main([str(folder), "--out", str(torch_out), *common, *torch_args]) == 0
    assert (
        bulk_main([str(folder), "--out", str(onnx_out), *common, "--backend", "onnxruntime", "--onnx", str(exported)])
        == 0
    )
    ours = {line["filename"]: line for line in jsonl_lines(onnx_out)}
    theirs = {line["filename"]: line for line in jsonl_lines(torch_out)}
    assert ours.keys() == theirs.keys() and len(ours) == 4
    for name, line in theirs.items():
        _same_tags(ours[name]["tags"], line["tags"])


@needs_ort
def test_wd14_package_loaded_as_the_wd14_tools_load_it(exported: Path, torch_tagger: Tagger) -> None:
    session = _session(exported / "wd14" / "model.onnx")
    model_input = session.get_inputs()[0]
    size = model_input.shape[1]  # wd14-tagger-standalone and ComfyUI-WD14-Tagger read it so
    assert model_input.shape[1:] == [512, 512, 3] and isinstance(model_input.shape[0], str)
    with (exported / "wd14" / "selected_tags.csv").open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["tag_id", "name", "category", "count"]
    rows = rows[1:]
    codes = [row[2] for row in rows]
    # Four rating rows first, then one block of general rows, then one block of character rows.
    assert codes[:4] == ["9"] * 4
    assert codes[4:] == sorted(codes[4:], key=lambda c: c == "4") and set(codes[4:]) == {"0", "4"}

    images = []
    for image in _test_images(3):  # the tools' preprocessing: white square padding, resize, BGR
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        images.append(square.resize((size, size), Image.Resampling.LANCZOS))
    bgr = np.stack([np.asarray(image)[:, :, ::-1] for image in images]).astype(np.float32)
    (probs,) = session.run(None, {model_input.name: bgr})
    assert probs.shape == (3, len(rows)) and (probs[:, :4] == 0).all()

    pixels = torch.stack([torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in images])
    with torch.inference_mode():
        expected = torch.sigmoid(torch_tagger.model(normalise(pixels))).numpy()
    vocab = torch_tagger.vocab
    # kohya's reading: after the four ratings, the general names in file order, then the character names.
    general = [row for row in rows if row[2] == "0"]
    character = [row for row in rows if row[2] == "4"]
    for k, row in enumerate(general + character):
        index = int(row[0])
        assert row[1] == vocab.tags[index].replace(" ", "_")
        assert abs(probs[:, 4 + k] - expected[:, index]).max() < 1e-5, row


def _blocked(module: str, code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``module`` cannot be imported."""
    prelude = f"import sys; sys.modules[{module!r}] = None; sys.path.insert(0, {str(ROOT)!r}); "
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "onnxscript"])
def test_export_without_the_extra_says_what_to_install(module: str, tmp_path: Path) -> None:
    done = _blocked(
        module, f"from tagger.export import main; sys.exit(main(['--demo', '--out', {str(tmp_path)!r}]))", tmp_path
    )
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert_sentence(message)
    assert "pip install" in message and "onnx" in message and module in message
    assert not (tmp_path / "tagger").exists()


def test_onnxruntime_backend_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "tagger").mkdir()
    (tmp_path / "tagger" / "model.onnx").write_bytes(b"")
    code = (
        "from tagger.cli import main; "
        f"sys.exit(main(['--images', 'x.png', '--backend', 'onnxruntime', '--onnx', {str(tmp_path)!r}]))"
    )
    done = _blocked("onnxruntime", code, tmp_path)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert_sentence(message)
    assert 'pip install "dinov3-tagger[onnx]"' in message


@pytest.mark.parametrize(
    "flags",
    [
        ["--backend", "onnxruntime"],
        ["--backend", "onnxruntime", "--onnx", "nowhere", "--demo"],
        ["--backend", "onnxruntime", "--onnx", "nowhere", "--dtype", "bf16"],
        ["--backend", "onnxruntime", "--onnx", "nowhere"],
    ],
)
def test_onnxruntime_backend_flag_mistakes_are_one_sentence(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "--images", "x.png", *flags)
    assert code == 2 and not out
    assert_sentence(err.strip().splitlines()[-1].removeprefix("error: "))


@pytest.mark.parametrize(
    "flags",
    [
        ["--backend", "onnxruntime", "--demo"],
        ["--backend", "onnxruntime", "--onnx", "nowhere"],
        ["--backend", "onnxruntime", "--onnx", "nowhere", "--engine", "ray"],
    ],
)
def test_bulk_onnxruntime_flag_mistakes_are_one_sentence(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tagger.bulk.cli import main as bulk_main

    write_images(tmp_path / "images", ["a.png"])
    code = bulk_main([str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--quiet", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert_sentence(err.strip().splitlines()[-1].removeprefix("error: "))
