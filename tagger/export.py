"""``python -m tagger.export --out DIR``: the model as ONNX graphs, quantised variants and a wd14 package.

Writes, under the names of the authors' ``export_onnx.py`` (what their users expect)::

    DIR/tagger/      logits [B, num_tags]          model.onnx (+ model.onnx.data), model_quantized.onnx, model_q4.onnx
    DIR/embedding/   descriptor [B, 6400]           the same three files
    DIR/backbone/    last_hidden_state [B, N, C]    the same three files
    DIR/wd14/        model.onnx + selected_tags.csv (the wd14 tools' convention, see ``tagger.onnx.wd14``)
    DIR/tagger_vocab.json

The three graphs take ``pixel_values`` float32 ``[B, 3, H, W]`` normalised as ``tagger.engine.preprocess``
does, batch, height and width dynamic (sides 16-4096, multiples of 16). The traced example has
batch 2 and unequal sides, so that no dimension is specialised to 1 or to a square.

Variants (README "ONNX" has the measured drift):

* ``model.onnx``: float32, the model's own numbers;
* ``model_quantized.onnx``: dynamic int8, weights per output channel, activations per tensor,
  the backbone's MatMuls only; the head (a Gemm) stays float32, as nothing shows that a
  quantised head keeps the scores;
* ``model_q4.onnx``: 4-bit weight-only ``MatMulNBits`` (blocks of 32, symmetric), backbone
  MatMuls only. ``quantize_dynamic(QUInt4)`` is no 4-bit route (onnxruntime 1.32: weights
  "must be 8-bit before packing as 4-bit values"; there is no 4-bit MatMulInteger).

Needs the ``onnx`` extra (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tagger.engine.hub import DEFAULT_REPO
from tagger.engine.model import TaggerModel
from tagger.engine.vocab import Vocabulary
from tagger.errors import CheckpointError, ResolutionError, TaggerError, VocabularyError

log = logging.getLogger("tagger")

GRAPHS = ("tagger", "embedding", "backbone")
OUTPUT_NAMES = {"tagger": "logits", "embedding": "embedding", "backbone": "last_hidden_state"}
INPUT_NAME = "pixel_values"
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model_quantized.onnx", "q4": "model_q4.onnx"}
WD14 = "wd14"
WD14_INPUT, WD14_OUTPUT = "input", "output"
VOCAB_FILE = "tagger_vocab.json"
MAX_SIDE = 4096
Q4_BLOCK = 32
METADATA_CONFIG = "tagger.config"  # the TaggerConfig as JSON, read back by tagger.onnx.backend

ONNX_HINT = 'pip install "dinov3-tagger[onnx]" (or pip install -r requirements-onnx.txt)'


class OnnxExtraMissing(TaggerError, RuntimeError):
    """A module of the ``onnx`` extra is not installed."""


def require_onnx(purpose: str, modules: Sequence[str] = ("onnx", "onnxruntime", "onnxscript")) -> None:
    """Import the extra's modules now; ``OnnxExtraMissing`` with one sentence if one is missing."""
    for name in modules:
        try:
            __import__(name)
        except ModuleNotFoundError:
            raise OnnxExtraMissing(
                f"{purpose} needs the onnx extra ({name} is not installed); install it with: {ONNX_HINT}."
            ) from None


def _metadata(model: TaggerModel, graph: str, variant: str) -> dict[str, str]:
    return {
        METADATA_CONFIG: json.dumps(dataclasses.asdict(model.config)),
        "tagger.graph": graph,
        "tagger.variant": variant,
    }


def export_graph(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_name: str,
    dynamic: dict[int, Any],
    metadata: dict[str, str],
) -> Path:
    """One module as ``path`` (+ ``path.data``, its weights); ``dynamic``: the free dimensions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=(dynamic,),
            verbose=False,
        )
    assert program is not None  # the dynamo exporter always returns its program
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=True)
    del program
    gc.collect()
    return path


def backbone_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes with a weight (a constant second input) outside the head: the
    nodes both quantisers convert. Listed by name because ``quantize_dynamic`` rewrites a Gemm
    into a MatMul of another name, which an exclusion list would miss."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in proto.graph.initializer if not init.name.startswith("model.head.")}
    return [node.name for node in proto.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def _readable(path: Path) -> Path:
    """The quantisers write through temporary files (mode 0600); give the graph and its data
    the permissions of any file written here."""
    umask = os.umask(0)
    os.umask(umask)
    for file in (path, path.parent / (path.name + ".data")):
        if file.exists():
            file.chmod(0o666 & ~umask)
    return path


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8, per-channel weights, backbone MatMuls only (see the module doc)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=backbone_matmuls(source),
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
    return _readable(target)


def quantize_q4(source: Path, target: Path) -> Path:
    """4-bit weight-only MatMulNBits, backbone MatMuls only (see the module doc)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=4,
        block_size=Q4_BLOCK,
        is_symmetric=True,
        nodes_to_include=backbone_matmuls(source),
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)
    del quantizer
    gc.collect()
    return _readable(target)


QUANTIZERS = {"int8": quantize_int8, "q4": quantize_q4}


def export_all(
    model: TaggerModel,
    vocab: Vocabulary,
    vocab_source: Path,
    out: Path,
    *,
    graphs: Sequence[str] = GRAPHS,
    variants: Sequence[str] = tuple(VARIANT_FILES),
    wd14_size: int | None = 512,
) -> list[Path]:
    """Write every requested file under ``out`` (see the module doc); returns their paths."""
    from torch.export import Dim

    from tagger.onnx.graphs import BackboneGraph, EmbeddingGraph, LogitsGraph, Wd14Graph
    from tagger.onnx.wd14 import RATING_PLACEHOLDERS, wd14_order, write_selected_tags

    model = model.float().eval()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    modules = {"tagger": LogitsGraph, "embedding": EmbeddingGraph, "backbone": BackboneGraph}
    example = torch.zeros(2, 3, 32, 48)
    batch = Dim("batch", min=1, max=1 << 16)
    side = MAX_SIDE // 16
    pixel_dims = {0: batch, 2: 16 * Dim("patch_rows", min=1, max=side), 3: 16 * Dim("patch_cols", min=1, max=side)}
    for graph in graphs:
        started = time.perf_counter()
        fp32 = out / graph / VARIANT_FILES["fp32"]
        export_graph(
            modules[graph](model).eval(),
            example,
            fp32,
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAMES[graph],
            dynamic=pixel_dims,
            metadata=_metadata(model, graph, "fp32"),
        )
        files = [QUANTIZERS[v](fp32, out / graph / VARIANT_FILES[v]) for v in variants if v != "fp32"]
        if "fp32" in variants:
            files.insert(0, fp32)
        else:  # exported only as the quantisers' source
            fp32.unlink()
            (fp32.parent / (fp32.name + ".data")).unlink(missing_ok=True)
        log.info("%s/: %s in %.0f s", graph, ", ".join(f.name for f in files), time.perf_counter() - started)
        written += files
    if wd14_size:
        if wd14_size % model.config.patch_size or not 16 <= wd14_size <= MAX_SIDE:
            raise ValueError(f"--wd14-size must be a multiple of 16 between 16 and {MAX_SIDE}, not {wd14_size}.")
        wd14 = Wd14Graph(model, wd14_order(vocab).tolist(), len(RATING_PLACEHOLDERS)).eval()
        written.append(
            export_graph(
                wd14,
                torch.full((2, wd14_size, wd14_size, 3), 255.0),
                out / WD14 / "model.onnx",
                input_name=WD14_INPUT,
                output_name=WD14_OUTPUT,
                dynamic={0: batch},
                metadata=_metadata(model, WD14, "fp32"),
            )
        )
        written.append(write_selected_tags(out / WD14 / "selected_tags.csv", vocab))
    vocab_copy = out / VOCAB_FILE
    if vocab_source.resolve() != vocab_copy.resolve():
        shutil.copyfile(vocab_source, vocab_copy)
    written.append(vocab_copy)
    return written


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the tagger as ONNX: tagger/, embedding/ and backbone/ graphs (fp32, int8, 4-bit), "
        "a wd14 package and the vocabulary.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--graphs", default=",".join(GRAPHS), help=f"comma-separated, any of {', '.join(GRAPHS)} (default all)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANT_FILES),
        help="comma-separated, any of fp32 (model.onnx), int8 (model_quantized.onnx), q4 (model_q4.onnx) (default all)",
    )
    parser.add_argument(
        "--wd14-size",
        type=int,
        default=512,
        help="side of the wd14 package's square input (default 512; kohya's script always feeds 448); 0: no package",
    )
    model = parser.add_argument_group("model (as in the tagger command)")
    model.add_argument("--checkpoint", help="local .safetensors checkpoint (default: download from the Hub)")
    model.add_argument("--vocab", help="local vocabulary JSON (default: download from the Hub)")
    model.add_argument("--repo", help=f"Hub model repo (default: $TAGGER_REPO or {DEFAULT_REPO})")
    model.add_argument("--revision", help="Hub revision: branch, tag or commit (default: $TAGGER_REVISION or main)")
    model.add_argument("--demo", action="store_true", help="export a tiny random model (no download; tags meaningless)")
    return parser


def _choices(parser: argparse.ArgumentParser, flag: str, text: str, allowed: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not chosen or any(part not in allowed for part in chosen):
        parser.error(f"argument {flag}: choose from {', '.join(allowed)} (comma-separated)")
    return chosen


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    # Our progress lines only: onnxscript's optimiser logs every initializer it merges at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    graphs = _choices(parser, "--graphs", args.graphs, GRAPHS)
    variants = _choices(parser, "--variants", args.variants, tuple(VARIANT_FILES))
    try:
        require_onnx("Exporting to ONNX")
        return _export(args, Path(args.out).expanduser(), graphs, variants)
    except (OnnxExtraMissing, ResolutionError, CheckpointError, VocabularyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: could not write {e.filename or args.out}: {e.strerror or e}.", file=sys.stderr)
        return 1


def _export(args: argparse.Namespace, out: Path, graphs: list[str], variants: list[str]) -> int:
    from tagger.engine.hub import model_files
    from tagger.engine.synthetic import DEMO_WARNING
    from tagger.engine.weights import load_model

    if args.demo:
        print(f"warning: {DEMO_WARNING}", file=sys.stderr)
    with model_files(args) as (checkpoint, vocab_path):
        vocab = Vocabulary.load(vocab_path)
        model = load_model(checkpoint, dtype=torch.float32, head_dtype=torch.float32, expected_num_tags=len(vocab))
        written = export_all(model, vocab, vocab_path, out, graphs=graphs, variants=variants, wd14_size=args.wd14_size)
    for path in written:
        data = path.parent / (path.name + ".data")
        size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
        print(f"{path}  {size / 2**20:,.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
