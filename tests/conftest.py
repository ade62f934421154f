"""Shared fixtures: a tiny random checkpoint and vocabulary, written once per test session.

Nothing here downloads anything. The checkpoint has the real key layout (see
``tagger.engine.synthetic``) with ``TaggerConfig.tiny`` sizes, so it loads through exactly the same
code as the real one in a fraction of a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from test apps
# A cache folder of this session's own: the app sweeps its cache folder when it starts
# (tagger.web.tempfiles), which must not reach the files of other test runs on the machine.
os.environ["GRADIO_TEMP_DIR"] = os.environ.get("GRADIO_TEMP_DIR") or tempfile.mkdtemp(prefix="tagger-tests-gradio-")

from gradio_client import Client
from support import ForwardPasses, random_image

from tagger.engine.model import Pixels, TaggerConfig
from tagger.engine.synthetic import write_random_checkpoint, write_random_vocabulary
from tagger.engine.tagger import Tagger


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = os.environ["GRADIO_TEMP_DIR"]
    if os.path.basename(folder).startswith("tagger-tests-gradio-"):
        shutil.rmtree(folder, ignore_errors=True)


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
    (build your own ``Tagger`` when a test needs other settings)."""
    checkpoint, vocab = tiny_files
    return Tagger(checkpoint, vocab, device="cpu", dtype="fp32")


@pytest.fixture
def count_passes(monkeypatch: pytest.MonkeyPatch) -> Callable[[Tagger], ForwardPasses]:
    """``count_passes(tagger)`` → a live count of the forward passes its model runs from now
    until the test ends (the app's tagger too: ``count_passes(app.context.tagger)``). Every way
    through the model (tags, descriptors, PCA, relevance) computes its tokens with one call of
    ``TaggerModel.tokens`` per pass: that call is counted, on this model instance only."""
    lock = threading.Lock()  # the app's requests run in worker threads

    def start(tagger: Tagger) -> ForwardPasses:
        counted = ForwardPasses()
        tokens = tagger.model.tokens

        def counting_tokens(pixels: Pixels) -> torch.Tensor:
            with lock:
                counted.passes += 1
                counted.images += len(pixels)
            return tokens(pixels)

        monkeypatch.setitem(vars(tagger.model), "tokens", counting_tokens)
        return counted

    return start


@pytest.fixture(scope="session")
def make_image() -> Callable[..., Image.Image]:
    """``make_image(width, height, seed=0)`` → a deterministic random RGB PIL image."""
    return random_image


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


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright (``browser_support.chromium``), one per test module."""
    from browser_support import chromium

    with chromium() as browser:
        yield browser


@pytest.fixture
def model_calls(app, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the work functions the app runs through ``ModelRunner.call`` (one GPU call
    each on ZeroGPU) during the test."""
    runner = app.context.runner
    original = runner.call
    calls: list[str] = []

    def call(fn, pixels, *args):
        calls.append(getattr(fn, "__name__", str(fn)))
        return original(fn, pixels, *args)

    monkeypatch.setattr(runner, "call", call)
    return calls


@pytest.fixture
def image_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A loopback HTTP server with the example images, allowed by the fetcher's address policy."""
    import functools
    import http.server

    from tagger import fetch
    from tagger.web.inputs import _SafeDownloads

    folder = Path(__file__).resolve().parent.parent / "examples"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]

    def allowed(ip: object, p: int) -> str | None:
        return None if (str(ip) == "127.0.0.1" and p == port) else fetch.public_only(ip, p)  # type: ignore[arg-type]

    monkeypatch.setattr(_SafeDownloads, "address_policy", staticmethod(allowed))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
