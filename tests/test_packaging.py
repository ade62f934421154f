"""`pip install .` gives a working package: the modules, the page's assets, the console scripts
and the dependencies read from the same requirement files the Space installs."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path_factory.mktemp("source")
    for name in (
        "pyproject.toml",
        "README.md",
        "requirements.txt",
        "requirements-bulk.txt",
        "requirements-test.txt",
        "requirements-onnx.txt",
    ):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tagger", source / "tagger", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples", source / "examples")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("dinov3_tagger-*.whl")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def installed(wheel: zipfile.ZipFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (without its dependencies: they are this interpreter's) into a folder."""
    target = tmp_path_factory.mktemp("installed")
    assert wheel.filename
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(target),
            wheel.filename,
        ],
        check=True,
        timeout=300,
    )
    return target


def _run_installed(installed: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)
    # Run from elsewhere, so that nothing comes from the checkout.
    return subprocess.run(
        list(argv), cwd=installed.parent, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _metadata(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(member).decode()


def test_wheel_holds_the_package_and_the_page_assets(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for module in (
        "tagger/engine/tagger.py",
        "tagger/web/tabs/tag.py",
        "tagger/bulk/cli.py",
        "tagger/bulk/__main__.py",
    ):
        assert module in names
    for asset in (ROOT / "tagger/web/assets").iterdir():
        assert f"tagger/web/assets/{asset.name}" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    for module in (ROOT / "tagger").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names, f"{module} is not in the wheel"


def test_wheel_holds_the_example_images(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    images = [p for p in (ROOT / "examples").iterdir() if p.suffix in (".jpg", ".png")]
    assert images
    for image in images:
        assert f"tagger/examples/{image.name}" in names


def test_the_installed_app_finds_its_examples(installed: Path) -> None:
    code = "from tagger.web.server import EXAMPLES_DIR; import tagger; print(EXAMPLES_DIR); print(tagger.__file__)"
    done = _run_installed(installed, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    examples, module = done.stdout.split()
    assert Path(module).is_relative_to(installed)  # the installed copy, not the checkout
    assert Path(examples) == installed / "tagger" / "examples"
    assert sorted(p.name for p in Path(examples).glob("*.jpg"))


@pytest.mark.parametrize("script", ["tagger", "tagger-bulk"])
def test_console_scripts_name_themselves_in_usage(installed: Path, script: str) -> None:
    done = _run_installed(installed, str(installed / "bin" / script), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script} ")


def test_build_leftovers_are_ignored() -> None:
    # `pip install .` writes build/ beside the sources; git (and so ruff) must not see it.
    done = subprocess.run(["git", "check-ignore", "-q", "build/lib/tagger/cli.py"], cwd=ROOT, check=False)
    assert done.returncode == 0


def test_console_scripts(wheel: zipfile.ZipFile) -> None:
    entry_points = _metadata(wheel, "entry_points.txt")
    scripts = dict(line.split(" = ") for line in entry_points.splitlines() if " = " in line)
    assert scripts == {
        "tagger": "tagger.cli:main",
        "tagger-bulk": "tagger.bulk.cli:main",
        "tagger-app": "tagger.web.server:main",
    }
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def _requirements(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def test_dependencies_are_the_requirement_files(wheel: zipfile.ZipFile) -> None:
    metadata = _metadata(wheel, "METADATA")
    requires = [
        line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist:")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    assert len(runtime) == len(_requirements(ROOT / "requirements.txt"))
    assert any(r.startswith("torch") for r in runtime) and any(r.startswith("gradio") for r in runtime)
    assert "Provides-Extra: bulk" in metadata and "Provides-Extra: dev" in metadata
    bulk = [r for r in requires if 'extra == "bulk"' in r]
    assert len(bulk) == len(_requirements(ROOT / "requirements-bulk.txt"))
    onnx = [r for r in requires if 'extra == "onnx"' in r]
    assert len(onnx) == len(_requirements(ROOT / "requirements-onnx.txt"))
