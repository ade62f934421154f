"""``--backend onnxruntime``: the exported graphs (``tagger.export``) run by ONNX Runtime on the CPU.

``OnnxTagger`` offers what the CLI and the bulk tool use of ``Tagger``, with the same
preprocessing and probabilities (sigmoid of the graph's logits, as ``Tagger.run``), so outputs
do not change with the backend. A graph takes one size per call, so only images of the same
shape share a forward pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagger.engine.decode import ImageSource
from tagger.engine.hub import ModelFiles
from tagger.engine.model import TaggerConfig
from tagger.engine.preprocess import Preprocessor, normalise
from tagger.engine.tagger import Batch
from tagger.engine.vocab import Vocabulary
from tagger.errors import CheckpointError
from tagger.export import GRAPHS, INPUT_NAME, METADATA_CONFIG, VARIANT_FILES, VOCAB_FILE, require_onnx


@dataclass(frozen=True)
class GraphModel:
    """What callers read of ``Tagger.model`` without running it: the model's sizes."""

    config: TaggerConfig


def resolve_graph(path: str | os.PathLike[str]) -> Path:
    """``--onnx``: an export folder (its ``tagger/model.onnx``), a graph folder (its
    ``model.onnx``) or a ``.onnx`` file such as ``tagger/model_quantized.onnx``."""
    path = Path(path).expanduser()
    candidates = [path] if path.suffix == ".onnx" else [path / "tagger" / VARIANT_FILES["fp32"], path / "model.onnx"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"No ONNX graph at {path}: give the folder written by python -m tagger.export --out DIR, "
        "or one of its .onnx files."
    )


def export_root(graph: Path) -> Path:
    """The export folder a graph file belongs to (where the vocabulary is)."""
    return graph.parent.parent if graph.parent.name in GRAPHS else graph.parent


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {first[:300]}.") from None


def _config(session: Any, path: Path) -> TaggerConfig:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_CONFIG)
    if raw is None:
        raise CheckpointError(f"{path} was not written by python -m tagger.export (it has no {METADATA_CONFIG}).")
    values = json.loads(raw)
    known = {f.name for f in fields(TaggerConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return TaggerConfig(**values)


class OnnxTagger:
    """``OnnxTagger("export/")`` or ``OnnxTagger("export/tagger/model_q4.onnx")``; ``vocab_path``
    defaults to the export's ``tagger_vocab.json``. ONNX Runtime's intra-op threads: torch's
    thread count (the CLI and bulk tool set it)."""

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        vocab_path: str | os.PathLike[str] | None = None,
        max_size: int = 1024,
        max_batch_size: int | None = None,
        reduced_decode: bool = False,
    ):
        require_onnx("--backend onnxruntime", ("onnxruntime",))
        if max_size < 16:
            raise ValueError(f"max_size must be at least 16 pixels, not {max_size}.")
        self.graph_path = resolve_graph(onnx_path)
        self.root = export_root(self.graph_path)
        self.vocab = Vocabulary.load(vocab_path or self.root / VOCAB_FILE)
        self.threads = torch.get_num_threads()
        self.session = _session(self.graph_path, self.threads)
        self.model = GraphModel(_config(self.session, self.graph_path))
        if self.session.get_outputs()[0].shape[-1] != len(self.vocab):
            raise CheckpointError(
                f"{self.graph_path} is not a tagger graph for this vocabulary: its output is "
                f"{self.session.get_outputs()[0].shape}, the vocabulary has {len(self.vocab)} tags."
            )
        self.device = torch.device("cpu")
        self.max_size = max_size
        self.max_batch_size = max_batch_size or 4
        self.reduced_decode = reduced_decode
        self._embedding: Any = None

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor(self.max_size, self.model.config.patch_size, self.reduced_decode)

    def prepare(self, image: ImageSource, *, name: str | None = None) -> torch.Tensor:
        """Decode and resize one image → uint8 ``[3, H, W]``, exactly as ``Tagger.prepare``."""
        return self.preprocessor(image, name)

    def plan(self, pixels: Sequence[torch.Tensor]) -> list[Batch]:
        """One forward pass per run of equal shapes (a graph call has one size), at most
        ``max_batch_size`` images each; nothing is padded."""
        prefix, p = self.model.config.num_prefix_tokens, self.model.config.patch_size
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(pixels):
            by_shape.setdefault(tuple(image.shape), []).append(i)
        batches = []
        for shape, indices in by_shape.items():
            tokens = prefix + (shape[-2] // p) * (shape[-1] // p)
            for start in range(0, len(indices), self.max_batch_size):
                part = indices[start : start + self.max_batch_size]
                batches.append(Batch(part, tokens * len(part), tokens * len(part)))
        return batches

    def _forward(self, session: Any, pixels: Sequence[torch.Tensor], width: int) -> np.ndarray:
        out = np.zeros((len(pixels), width), dtype=np.float32)
        for batch in self.plan(pixels):
            images = normalise(torch.stack([pixels[i] for i in batch.indices])).numpy()
            out[batch.indices] = session.run(None, {INPUT_NAME: images})[0]
        return out

    def run(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Probabilities ``[B, num_tags]`` (float32) for prepared images."""
        logits = self._forward(self.session, pixels, len(self.vocab))
        return torch.sigmoid(torch.from_numpy(logits)).numpy()

    def run_descriptors(self, pixels: Sequence[torch.Tensor]) -> np.ndarray:
        """Descriptors ``[B, descriptor_dim]`` from the export's ``embedding/`` graph of the same variant."""
        if self._embedding is None:
            path = self.root / "embedding" / self.graph_path.name
            if not path.is_file():
                raise CheckpointError(f"Descriptors need the embedding graph {path}, which is missing.")
            self._embedding = _session(path, self.threads)
        return self._forward(self._embedding, pixels, self.model.config.descriptor_dim)

    def run_with_descriptors(self, pixels: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and descriptors: two graphs, so two forward passes."""
        return self.run(pixels), self.run_descriptors(pixels)


def onnx_model_files(args: Any) -> ModelFiles:
    """The graph and vocabulary ``--onnx`` (and ``--vocab``) name, as the bulk tool records model
    files; ``ValueError`` with one sentence for a flag ``--backend onnxruntime`` cannot combine with."""
    if not args.onnx:
        raise ValueError("--backend onnxruntime needs --onnx DIR (the folder python -m tagger.export --out DIR wrote).")
    if args.demo:
        raise ValueError(
            "--demo runs the torch model; for a demo ONNX export run python -m tagger.export --demo --out DIR, "
            "then --backend onnxruntime --onnx DIR."
        )
    if args.checkpoint:
        raise ValueError("--checkpoint is for the torch backend; with --backend onnxruntime the model is --onnx.")
    if str(args.device) not in ("auto", "cpu") or args.dtype:
        raise ValueError(
            "--backend onnxruntime runs on the CPU at the precision of the file given to --onnx "
            "(model.onnx, model_quantized.onnx or model_q4.onnx); leave out --device and --dtype."
        )
    require_onnx("--backend onnxruntime", ("onnxruntime",))
    graph = resolve_graph(args.onnx)
    vocab = Path(args.vocab).expanduser() if args.vocab else export_root(graph) / VOCAB_FILE
    if not vocab.is_file():
        raise CheckpointError(f"No vocabulary at {vocab}; give it with --vocab.")
    return ModelFiles(checkpoint=graph, vocab=vocab, source="local files")
