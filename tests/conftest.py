"""Shared fixtures: a tiny random checkpoint and vocabulary, written once per test session.

Nothing here downloads anything. The checkpoint has the real key layout (see
``tagger.synthetic``) with ``TaggerConfig.tiny`` sizes, so it loads through exactly the same
code as the real one in a fraction of a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from test apps

from gradio_client import Client

from tagger.model import TaggerConfig
from tagger.predict import Tagger
from tagger.synthetic import write_random_checkpoint, write_random_vocabulary


def pytest_configure(config: pytest.Config) -> None:
    # The test models are tiny: one thread is as fast as two, and it stays fast when other
    # processes share the CPU (with two threads, contention made each forward ~100x slower).
    torch.set_num_threads(1)


# More than 30 tags, so that the default top-30 selection is a real cut.
TINY_NUM_TAGS = 48


@pytest.fixture(scope="session")
def tiny_config() -> TaggerConfig:
    """The config of the ``tiny_files`` checkpoint (dense head with bias)."""
    return TaggerConfig.tiny(num_tags=TINY_NUM_TAGS)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory, tiny_config: TaggerConfig) -> tuple[Path, Path]:
    """``(checkpoint_path, vocab_path)``: bf16 random checkpoint and a vocabulary with categories."""
    folder = tmp_path_factory.mktemp("tiny_model")
    checkpoint = write_random_checkpoint(folder / "tiny.safetensors", tiny_config)
    vocab = write_random_vocabulary(folder / "tiny_vocab.json", tiny_config.num_tags)
    return checkpoint, vocab


@pytest.fixture(scope="session")
def tiny_tagger(tiny_files: tuple[Path, Path]) -> Tagger:
    """A ``Tagger`` on the tiny files, CPU, float32 backbone. Shared: do not mutate it
    (build your own ``Tagger`` when a test needs fresh ``stats`` or other settings)."""
    checkpoint, vocab = tiny_files
    return Tagger(checkpoint, vocab, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def make_image() -> Callable[..., Image.Image]:
    """``make_image(width, height, seed=0)`` → a deterministic random RGB PIL image."""

    def make(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")

    return make


@pytest.fixture
def image_files(tmp_path: Path, make_image: Callable[..., Image.Image]) -> list[Path]:
    """Three PNG files in ``tmp_path``: two of the same size, one of another size."""
    paths = []
    for i, (width, height) in enumerate([(64, 48), (64, 48), (40, 72)]):
        path = tmp_path / f"image_{i}.png"
        make_image(width, height, seed=i).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def app():
    """The real app in demo mode (tiny random model), in this process, one per test module."""
    from app_server import start_app

    running = start_app(["--demo"])
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app.url, verbose=False)
