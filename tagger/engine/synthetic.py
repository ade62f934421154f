"""Random-weight checkpoints and vocabularies in the real file layouts.

Used by the offline demo mode, the tests and the benchmark: the Hub is not always
reachable, and a checkpoint written here goes through exactly the same loader as the real
one. The weights are random, so the tags such a model predicts mean nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tagger.engine.model import TaggerConfig
from tagger.engine.vocab import CATEGORIES
from tagger.engine.weights import backbone_shapes, head_shapes


def random_state_dict(
    config: TaggerConfig,
    *,
    dtype: torch.dtype = torch.bfloat16,
    layout: str = "layer",
    head_names: tuple[str, ...] = ("head", "head_up"),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Tensors keyed as in a real checkpoint (``layout``: ``"layer"`` or ``"model.layer"``), each
    one's values depending only on ``seed`` and its key, not on the order of the keys."""
    if layout not in ("layer", "model.layer"):
        raise ValueError(f"layout must be 'layer' or 'model.layer', not {layout!r}")
    state: dict[str, torch.Tensor] = {}
    shapes = {"backbone." + k: v for k, v in backbone_shapes(config).items()}
    shapes.update(head_shapes(config, head_names))
    for key, shape in shapes.items():
        generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(key.encode()))
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            tensor = torch.ones(shape)
        elif key.endswith("lambda1"):
            tensor = torch.full(shape, 0.1)  # DINOv3-like layer scale keeps the residual stream stable
        elif key.endswith("bias"):
            tensor = torch.randn(shape, generator=generator) * 0.01
        else:
            tensor = torch.randn(shape, generator=generator) * 0.02
        if layout == "model.layer":
            key = key.replace("backbone.layer.", "backbone.model.layer.")
        state[key] = tensor.to(dtype)
    return state


def write_random_checkpoint(path: str | os.PathLike, config: TaggerConfig, **kwargs: Any) -> Path:
    """Write a random checkpoint with the real key layout (see ``random_state_dict``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(random_state_dict(config, **kwargs), str(path))
    return path


def write_random_vocabulary(path: str | os.PathLike, num_tags: int, with_categories: bool = True) -> Path:
    """A vocabulary file: readable fake tags spread over every category."""
    generator = torch.Generator().manual_seed(0)
    tags: list[str] = []
    tag2category: dict[str, int] = {}
    for i in range(num_tags):
        category = CATEGORIES[i % len(CATEGORIES)]
        if category.name == "artist":
            tag = f"by artist {i}"
        elif int(torch.randint(4, (1,), generator=generator)) == 0:  # real tags often carry a qualifier
            tag = f"{category.name} {i} (series)"
        else:
            tag = f"{category.name} {i}"
        tags.append(tag)
        if category.id != 0:  # unassigned tags are simply absent from the map
            tag2category[tag] = category.id - 1  # files store e621 ids, unshifted
    data: dict = {"idx2tag": tags}
    if with_categories:
        data["tag2category"] = tag2category
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_demo_files(directory: str | os.PathLike, num_tags: int = 600) -> tuple[Path, Path]:
    """A tiny random model and vocabulary for the offline demo mode: (checkpoint, vocab)."""
    directory = Path(directory)
    config = TaggerConfig.tiny(num_tags=num_tags)
    state = random_state_dict(config, dtype=torch.float32)
    # Negative head biases spread over a range so that, like the real model, only a few
    # dozen tags clear the default thresholds instead of half the vocabulary.
    generator = torch.Generator().manual_seed(1)
    state["head.bias"] = torch.linspace(0.0, -12.0, num_tags)[torch.randperm(num_tags, generator=generator)]
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = directory / "demo_tagger.safetensors"
    save_file(state, str(checkpoint))
    vocab = write_random_vocabulary(directory / "demo_vocab.json", num_tags)
    return checkpoint, vocab


# Shown wherever the demo model runs (app log, CLI, bulk): its tags must not be mistaken for real ones.
DEMO_WARNING = "Demo mode: a tiny random model stands in for the real one; its tags are meaningless."


@contextmanager
def demo_files() -> Iterator[tuple[Path, Path]]:
    """The demo model's (checkpoint, vocab) in a temporary folder removed on leaving the block
    (generating it takes well under a second, so nothing is kept between runs)."""
    with tempfile.TemporaryDirectory(prefix="tagger-demo-") as directory:
        yield write_demo_files(directory)
