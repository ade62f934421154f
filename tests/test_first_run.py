"""What a new user runs first, run as they run it: each entry point in its own process.

``--demo`` in the CLI and bulk (and no demo folder left behind by any entry point), bulk
without its optional extra, and an unreachable Hub with nothing cached (``HF_ENDPOINT`` at a
closed loopback port: nothing leaves the machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import assert_sentence, random_image

REPO_ROOT = Path(__file__).resolve().parents[1]
TAGGER_ENV = ("TAGGER_CHECKPOINT", "TAGGER_VOCAB", "TAGGER_REPO", "TAGGER_REVISION", "TAGGER_DEMO")
HUB_BUDGET_S = 10.0

# Makes the named top-level modules (and their submodules) unimportable, as if not installed.
BLOCKER = """
import sys
class _Absent:
    def __init__(self, names):
        self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Absent(sys.argv[1].split(",")))
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
import runpy
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No TAGGER_*/HF_* settings of the machine, an empty private HF cache and temp folder."""
    env = {k: v for k, v in os.environ.items() if k not in TAGGER_ENV and not k.startswith("HF_")}
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        TMPDIR=str(temp),
        OMP_NUM_THREADS="1",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


def _run(tmp_path: Path, argv: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=tmp_path,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def _demo_folders(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("tagger-demo-*"))


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(80, 60, seed=1).save(folder / "a.png")
    random_image(48, 96, seed=2).save(folder / "b.png")
    return folder


# -- --demo ----------------------------------------------------------------------------------------


def test_cli_demo_with_app_options_prints_json(tmp_path: Path, images: Path) -> None:
    # The README's command, with every option of it a /tag option.
    argv = ["-m", "tagger", "--demo", "--images", "a.png", "--mode", "mcut", "--exclude", "x", "--format", "json"]
    done = subprocess.run(
        [sys.executable, *argv], cwd=images, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)
    assert entry["file"] == "a.png" and entry["tags"]
    assert all(0.0 <= t["score"] <= 1.0 for t in entry["tags"])
    assert "meaningless" in done.stderr  # the same warning as the app's
    assert _demo_folders(tmp_path) == []


def test_bulk_demo_writes_captions_and_leaves_no_folder(tmp_path: Path, images: Path) -> None:
    done = _run(tmp_path, ["-m", "tagger.bulk", str(images), "--out", str(tmp_path / "out"), "--demo", "--quiet"])
    assert done.returncode == 0, done.stderr
    for name in ("a", "b"):
        caption = (images / f"{name}.txt").read_text(encoding="utf-8")
        assert caption.strip() and ", " in caption
    assert "meaningless" in done.stderr
    assert _demo_folders(tmp_path) == []


def test_app_demo_leaves_no_folder(tmp_path: Path) -> None:
    code = "from tagger.web.server import create_app\ndemo, context = create_app(['--demo', '--device', 'cpu'])\n"
    code += "assert context.demo_mode and context.tagger.vocab\n"
    done = _run(tmp_path, ["-c", code])
    assert done.returncode == 0, done.stderr
    assert "meaningless" in done.stderr
    assert _demo_folders(tmp_path) == []


@pytest.mark.parametrize(("module", "prog"), [("tagger", "python -m tagger"), ("tagger.bulk", "python -m tagger.bulk")])
def test_python_m_names_itself_in_usage(tmp_path: Path, module: str, prog: str) -> None:
    done = _run(tmp_path, ["-m", module, "--help"])
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {prog} ")


# -- bulk without its extra --------------------------------------------------------------------------


def _without(tmp_path: Path, modules: str, argv: list[str]) -> subprocess.CompletedProcess:
    return _run(tmp_path, ["-c", BLOCKER, modules, "tagger.bulk", *argv])


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    message = errors[0].removeprefix("error: ")
    assert_sentence(message, end=(".",))
    assert 'pip install "dinov3-tagger[bulk]"' in message and "requirements-bulk.txt" in message
    return message


def test_bulk_without_pyarrow_says_what_to_install(tmp_path: Path, images: Path) -> None:
    done = _without(tmp_path, "pyarrow,datasets,ray", [str(images), "--out", str(tmp_path / "out"), "--demo"])
    assert "pyarrow" in _one_error_line(done)
    assert not list(images.glob("*.txt"))  # stopped before any work


def test_bulk_with_a_broken_pyarrow_says_so_in_one_sentence(tmp_path: Path, images: Path) -> None:
    # pyarrow is there but one of its own parts is missing (a half-finished install).
    broken = tmp_path / "site" / "pyarrow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("import pyarrow_native_part_that_is_missing\n")
    site = os.pathsep.join([str(REPO_ROOT), str(broken.parent)])
    done = _run(tmp_path, ["-m", "tagger.bulk", str(images), "--out", str(tmp_path / "out"), "--demo"], PYTHONPATH=site)
    message = _one_error_line(done)
    assert "pyarrow is installed but cannot be imported" in message and "pyarrow_native_part_that_is_missing" in message
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_bulk_without_datasets_says_what_to_install(tmp_path: Path) -> None:
    # pyarrow present: the hf: input is where datasets is needed, and nothing is downloaded.
    done = _without(tmp_path, "datasets,ray", ["hf:owner/name", "--out", str(tmp_path / "out"), "--demo"])
    assert "datasets" in _one_error_line(done)


def test_bulk_engine_ray_without_ray_says_what_to_install(tmp_path: Path, images: Path) -> None:
    done = _without(tmp_path, "ray", [str(images), "--out", str(tmp_path / "out"), "--demo", "--engine", "ray"])
    assert "Ray" in _one_error_line(done)


# -- an unreachable Hub --------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _import_seconds(tmp_path: Path, module: str) -> float:
    """How long this machine takes to start Python and import ``module`` (not the Hub's part)."""
    started = time.monotonic()
    _run(tmp_path, ["-c", f"import {module}"])
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("argv", "imports", "prefix"),
    [
        (["-m", "tagger", "--images", "a.png", "--device", "cpu"], "tagger.cli", "error: "),
        (["-m", "tagger.bulk", ".", "--out", "out", "--device", "cpu"], "tagger.bulk.cli", "error: "),
        ([str(REPO_ROOT / "app.py"), "--device", "cpu"], "tagger.web.server", "Cannot start the tagger: "),
    ],
    ids=["cli", "bulk", "app"],
)
def test_unreachable_hub_stops_fast_with_one_sentence(
    tmp_path: Path, closed_port: int, argv: list[str], imports: str, prefix: str
) -> None:
    random_image(40, 40, seed=3).save(tmp_path / "a.png")
    endpoint = f"http://127.0.0.1:{closed_port}"
    started = time.monotonic()
    done = _run(tmp_path, argv, timeout=120, HF_ENDPOINT=endpoint)
    elapsed = time.monotonic() - started
    assert done.returncode in (1, 2), done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), done.stderr  # nothing repeated (no retry chatter)
    (message,) = [line for line in lines if line.startswith(prefix)]
    message = message.removeprefix(prefix)
    assert_sentence(message, end=(".",))
    for hint in (endpoint, "--checkpoint", "--vocab", "HF_HUB_OFFLINE=1", "--demo"):
        assert hint in message, message
    assert "Traceback" not in done.stderr and "Retrying" not in done.stderr
    # The Hub's part: the time to import the entry point's modules is the machine's, not the Hub's.
    assert elapsed - _import_seconds(tmp_path, imports) < HUB_BUDGET_S, elapsed
