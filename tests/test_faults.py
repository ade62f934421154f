"""Faults: broken model files stop the app at start-up with one sentence, and a model that
fails during a request (CUDA out of memory, anything else) costs that request only.

Start-up faults run the real entry point, ``python app.py``, in subprocesses (all at once,
each with a time limit and its own free loopback port, offline); more variants go through
``load_context`` in-process, which is what ``app.py`` calls.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import RunningApp, free_port
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from safetensors.torch import save_file
from support import assert_sentence

from tagger.engine.model import TaggerConfig
from tagger.engine.synthetic import write_random_checkpoint, write_random_vocabulary
from tagger.engine.tagger import Tagger
from tagger.web.runtime import ModelRunError, ModelRunner
from tagger.web.server import load_context, parse_args

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from test apps

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 90
REQUEST_TIMEOUT_S = 60
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+: ")  # server.py's logging format


@dataclass(frozen=True)
class BadFiles:
    checkpoint: Path
    vocab: Path
    expect: str  # a piece of the one sentence


def make_bad_files(folder: Path, good: tuple[Path, Path], config: TaggerConfig) -> dict[str, BadFiles]:
    checkpoint, vocab = good
    folder.mkdir(parents=True, exist_ok=True)
    data = checkpoint.read_bytes()
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.safetensors"
    empty.write_bytes(b"")
    text = folder / "text.safetensors"
    text.write_text("this is not a checkpoint\n" * 10)
    other_model = folder / "other_model.safetensors"
    save_file({"encoder.weight": torch.randn(8, 4), "encoder.bias": torch.zeros(8)}, str(other_model))
    integers = folder / "integers.safetensors"
    save_file({"backbone.embeddings.cls_token": torch.zeros(1, 1, 4, dtype=torch.int64)}, str(integers))
    wrong_head = write_random_checkpoint(
        folder / "wrong_head.safetensors", TaggerConfig.tiny(num_tags=config.num_tags - 8)
    )
    short_vocab = write_random_vocabulary(folder / "short_vocab.json", config.num_tags - 1)
    malformed = folder / "malformed.json"
    malformed.write_text('{"idx2tag": ["a", "b"')
    not_vocab = folder / "not_vocab.json"
    not_vocab.write_text(json.dumps(["a", "b"]))
    bad_category = folder / "bad_category.json"
    tags = json.loads(vocab.read_text())["idx2tag"]
    bad_category.write_text(json.dumps({"idx2tag": tags, "tag2category": {tags[0]: "artist"}}))
    binary_vocab = folder / "binary.json"
    binary_vocab.write_bytes(b"\xff\xfe\x00garbage")
    return {
        "checkpoint_missing": BadFiles(folder / "missing.safetensors", vocab, "does not exist"),
        "checkpoint_truncated": BadFiles(truncated, vocab, "truncated"),
        "checkpoint_other_model": BadFiles(other_model, vocab, "not a DINOv3 tagger checkpoint"),
        "checkpoint_wrong_head": BadFiles(wrong_head, vocab, "do not belong together"),
        "vocab_wrong_length": BadFiles(checkpoint, short_vocab, "do not belong together"),
        "vocab_malformed": BadFiles(checkpoint, malformed, "not valid JSON"),
        # In-process only (same code path as above, cheaper than a Python start-up each):
        "checkpoint_empty": BadFiles(empty, vocab, "empty.safetensors"),
        "checkpoint_text": BadFiles(text, vocab, "not a safetensors file"),
        "checkpoint_directory": BadFiles(folder, vocab, str(folder)),
        "checkpoint_integers": BadFiles(integers, vocab, "only float tensors"),
        "vocab_missing": BadFiles(checkpoint, folder / "missing.json", "missing.json"),
        "vocab_not_a_vocabulary": BadFiles(checkpoint, not_vocab, "not a tagger vocabulary"),
        "vocab_bad_category": BadFiles(checkpoint, bad_category, "not an integer"),
        "vocab_binary": BadFiles(checkpoint, binary_vocab, "binary.json"),
    }


SUBPROCESS_CASES = [
    "checkpoint_missing",
    "checkpoint_truncated",
    "checkpoint_other_model",
    "checkpoint_wrong_head",
    "vocab_wrong_length",
    "vocab_malformed",
]


@pytest.fixture(scope="module")
def bad_files(
    tmp_path_factory: pytest.TempPathFactory, tiny_files: tuple[Path, Path], tiny_config: TaggerConfig
) -> dict[str, BadFiles]:
    return make_bad_files(tmp_path_factory.mktemp("bad_files"), tiny_files, tiny_config)


@pytest.fixture(scope="module")
def startups(bad_files: dict[str, BadFiles], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """``python app.py`` once per subprocess case, all started together: (returncode, stderr)."""
    home = tmp_path_factory.mktemp("hf_home")
    processes = {}
    for name in SUBPROCESS_CASES:
        files = bad_files[name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGGER_", "HF_", "GRADIO_"))}
        env.update(
            TAGGER_CHECKPOINT=str(files.checkpoint),
            TAGGER_VOCAB=str(files.vocab),
            TAGGER_DEVICE="cpu",
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(free_port()),
            GRADIO_ANALYTICS_ENABLED="False",
            HF_HUB_OFFLINE="1",
            HF_HOME=str(home),
            OMP_NUM_THREADS="1",
        )
        processes[name] = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    for name, process in processes.items():
        try:
            _, err = process.communicate(timeout=STARTUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            results[name] = (None, err)  # it started serving (or hung): a failure below
            continue
        results[name] = (process.returncode, err)
    return results


def the_sentence(stderr: str) -> str:
    """The one line that is not a log line; fails unless there is exactly one."""
    lines = [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, f"expected one sentence on stderr, got:\n{stderr}"
    return lines[0]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_model_files_stop_app_py(name: str, startups: dict[str, tuple], bad_files: dict[str, BadFiles]) -> None:
    returncode, stderr = startups[name]
    assert returncode not in (0, None), f"app.py did not exit on {name}:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    sentence = the_sentence(stderr)
    assert sentence.startswith("Cannot start the tagger: "), sentence
    assert_sentence(sentence, end=(".",))
    assert bad_files[name].expect in sentence, sentence


IN_PROCESS_CASES = [
    "checkpoint_empty",
    "checkpoint_text",
    "checkpoint_directory",
    "checkpoint_integers",
    "vocab_missing",
    "vocab_not_a_vocabulary",
    "vocab_bad_category",
    "vocab_binary",
    *SUBPROCESS_CASES,
]


@pytest.mark.parametrize("name", IN_PROCESS_CASES)
def test_bad_model_files_in_process(name: str, bad_files: dict[str, BadFiles], monkeypatch: pytest.MonkeyPatch) -> None:
    files = bad_files[name]
    for variable in ("TAGGER_CHECKPOINT", "TAGGER_VOCAB", "TAGGER_DEMO"):
        monkeypatch.delenv(variable, raising=False)
    args = parse_args(["--checkpoint", str(files.checkpoint), "--vocab", str(files.vocab), "--device", "cpu"])
    with pytest.raises(SystemExit) as info:
        load_context(args)
    message = str(info.value.code)
    assert message.startswith("Cannot start the tagger: ") and "\n" not in message, message
    assert files.expect in message, message


# ---------------------------------------------------------------------------------------------
# Faults during a request


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fault_image") / "image.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


class FailOnce:
    """Replaces ``Tagger.run``: raises ``error`` on the first call, then runs the real model."""

    def __init__(self, error: BaseException):
        self.error = error
        self.real = Tagger.run
        self.calls = 0

    def __call__(self, tagger: Tagger, pixels: list[torch.Tensor]) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.real(tagger, pixels)


def tag(client: Client, image: Path) -> dict:
    return client.submit(handle_file(str(image)), api_name="/tag").result(timeout=REQUEST_TIMEOUT_S)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "ran out of memory"),
        (MemoryError(), "ran out of memory"),
        (RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"), "Something went wrong"),
    ],
    ids=["cuda_oom", "host_oom", "other"],
)
def test_model_failure_costs_one_request(
    error: BaseException,
    message: str,
    client: Client,
    image: Path,
    app: RunningApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = tag(client, image)
    failing = FailOnce(error)
    # ModelRunner.probabilities looks Tagger.run up on the class at each call.
    monkeypatch.setattr(Tagger, "run", failing)
    with pytest.raises(AppError) as info:
        tag(client, image)
    assert message in info.value.message, info.value.message
    assert_sentence(info.value.message)
    assert "CUDA" not in info.value.message
    assert tag(client, image) == expected  # the next request works, with the same answer
    assert failing.calls == 2


def test_runner_frees_memory_on_oom(tiny_tagger: Tagger, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ModelRunner(tiny_tagger)
    collected: list[int] = []
    monkeypatch.setattr("tagger.engine.cpu.gc.collect", lambda *a: collected.append(1) or 0)
    monkeypatch.setattr(Tagger, "run", FailOnce(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    pixels = [tiny_tagger.prepare(Image.new("RGB", (32, 32)))]
    with pytest.raises(ModelRunError, match="ran out of memory"):
        runner.probabilities(pixels)
    assert collected
    assert runner.probabilities(pixels).shape == (1, len(tiny_tagger.vocab))
