"""Helpers for the bulk command's tests: images, every input kind, running the command, reading outputs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from support import image_bytes, write_zip

from tagger.bulk.cli import main

# Small and of different shapes, so batches mix sizes; a few share a shape.
SIZES = [(64, 48), (40, 72), (96, 32), (64, 48), (48, 48), (33, 70)]


def write_images(folder: Path, names: list[str], seed: int = 0) -> dict[str, bytes]:
    """Write PNGs (``.jpg`` names get JPEGs) of mixed sizes; returns name → bytes."""
    written = {}
    for i, name in enumerate(names):
        width, height = SIZES[(seed + i) % len(SIZES)]
        data = image_bytes(width, height, seed * 100 + i, "JPEG" if name.endswith(".jpg") else "PNG")
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[name] = data
    return written


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def image_struct_table(images: list[bytes], ids: list[str]) -> pa.Table:
    """A table as ``datasets`` writes an Image column: ``{bytes, path}`` structs."""
    structs = [{"bytes": data, "path": f"{i}.png"} for i, data in zip(ids, images, strict=True)]
    return pa.table({"image": pa.array(structs), "id": ids})


@dataclass
class AllInputs:
    """One input of every kind, and the keys the bulk command should give their images."""

    paths: list[str]
    keys: list[str]
    bytes_by_key: dict[str, bytes]


def every_input_kind(root: Path) -> AllInputs:
    """A folder, an image file, a zip, a tar (webdataset), a .tar.gz, Parquet (bytes and path
    columns), a saved dataset and a Parquet dataset folder streamed as ``hf:``."""
    import datasets

    paths: list[str] = []
    keys: list[str] = []
    data: dict[str, bytes] = {}

    def add(path: Path | str, key_prefix: str, members: dict[str, bytes]) -> None:
        paths.append(str(path))
        for name, value in members.items():
            keys.append(f"{key_prefix}/{name}")
            data[f"{key_prefix}/{name}"] = value

    folder = root / "photos"
    add(folder, "photos", write_images(folder, ["a/1.png", "a/2.jpg", "b/3.png"], seed=1))
    single = root / "single.png"
    single.write_bytes(image_bytes(50, 40, 7))
    add(single, "single.png", {"single.png": single.read_bytes()})
    members = write_images(root / "zip_src", ["set/x.png", "set/y.png"], seed=2)
    add(write_zip(root / "pack.zip", members), "pack.zip", members)
    members = {"s/000001.png": image_bytes(40, 40, 31), "s/000002.png": image_bytes(56, 24, 32)}
    tar = write_tar(root / "shard-000.tar", {**members, "s/000001.json": b'{"caption": "x"}'})
    add(tar, "shard-000.tar", members)
    members = {"k/0.png": image_bytes(24, 64, 41)}
    add(write_tar(root / "shard-001.tar.gz", members, "w:gz"), "shard-001.tar.gz", members)

    images = [image_bytes(48, 32, 51), image_bytes(32, 48, 52)]
    pq.write_table(pa.table({"jpg": images, "n": [1, 2]}), root / "bytes.parquet")
    add(root / "bytes.parquet", "bytes.parquet", {f"{r:09d}": b for r, b in enumerate(images)})
    files = root / "files"
    files.mkdir()
    (files / "p.png").write_bytes(image_bytes(40, 30, 61))
    pq.write_table(pa.table({"path": ["p.png"]}), files / "paths.parquet")
    add(files / "paths.parquet", "paths.parquet", {"000000000": (files / "p.png").read_bytes()})

    images = [image_bytes(30, 30, 71), image_bytes(64, 16, 72)]
    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")})
    saved = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "id": ["u", "v"]}, features
    )
    datasets.DatasetDict({"train": saved}).save_to_disk(str(root / "saved"))
    add(root / "saved", "saved", {f"{r:09d}": b for r, b in enumerate(images)})

    hub = root / "hub_like" / "data"
    hub.mkdir(parents=True)
    images = [image_bytes(20, 44, 81), image_bytes(44, 20, 82)]
    pq.write_table(image_struct_table(images, ["h0", "h1"]), hub / "train-00000-of-00001.parquet")
    label = str(root / "hub_like").replace("/", "__").strip("._")
    spec = f"hf:{root / 'hub_like'}"
    paths.append(spec)
    for r, b in enumerate(images):
        keys.append(f"{label}/{r:09d}")
        data[f"{label}/{r:09d}"] = b
    return AllInputs(paths, keys, data)


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_bulk(capsys, model_files: tuple[Path, Path], *args: str) -> Result:  # type: ignore[no-untyped-def]
    """``python -m tagger.bulk`` in this process with the tiny model on the CPU in fp32."""
    checkpoint, vocab = model_files
    capsys.readouterr()
    argv = [*args, "--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu", "--dtype", "fp32"]
    if "--workers" not in args:
        argv += ["--workers", "0"]
    if "--quiet" not in args:
        argv.append("--quiet")
    code = main(argv)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def model_args(model_files: tuple[Path, Path]) -> list[str]:
    checkpoint, vocab = model_files
    return ["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu", "--dtype", "fp32"]


def parquet_rows(out: Path) -> list[dict]:
    files = sorted((out / "parquet").glob("shard-*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["key"])


def jsonl_lines(out: Path) -> list[dict]:
    files = sorted((out / "jsonl").glob("shard-*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def captions(folder: Path) -> dict[str, str]:
    """Every ``.txt`` under ``folder``, by path relative to it."""
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*.txt"))
        if not p.name.startswith(".")
    }


def tree(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (the resume state under .bulk left out), by relative path."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not relative.startswith(".bulk/"):
            found[relative] = path.read_bytes()
    return found


def environment_for_subprocess() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# A bulk run in a subprocess that stops, as if reading a slow disk, when it reaches one image:
# it says so with a file named like it plus ".holding", and reads the image only once one
# named like it plus ".go" appears (at most 300 s), so that a test can act while the run is at
# a known point. Decoding runs inline (--workers 0).
_HELD_RUN = """
import os, sys, time
import tagger.bulk.decode as decode

held, real = sys.argv[1], decode.read_bytes

def read_bytes(locator):
    if locator[0] == "file" and locator[1] == held:
        open(held + ".holding", "wb").close()
        deadline = time.monotonic() + 300
        while not os.path.exists(held + ".go") and time.monotonic() < deadline:
            time.sleep(0.05)
    return real(locator)

decode.read_bytes = read_bytes
from tagger.bulk.cli import main
sys.exit(main(sys.argv[2:]))
"""


def held_run(held: Path, args: list[str], model_files: tuple[Path, Path]) -> subprocess.Popen:
    """``python -m tagger.bulk args`` in a subprocess, holding at the image ``held`` until
    ``release(held)``; stderr is a pipe."""
    command = [sys.executable, "-c", _HELD_RUN, str(held), *args, "--workers", "0", *model_args(model_files)]
    return subprocess.Popen([*command, "--quiet"], env=environment_for_subprocess(), stderr=subprocess.PIPE, text=True)


def holding(held: Path) -> bool:
    """Whether the ``held_run`` has reached ``held`` (and everything before it is done)."""
    return held.with_name(held.name + ".holding").exists()


def release(held: Path) -> None:
    held.with_name(held.name + ".go").write_bytes(b"")


def start_local_ray() -> bool:
    """A small local Ray instance (2 CPUs, no dashboard) whose workers import this checkout; whether it was
    started here (the caller then shuts it down)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": environment_for_subprocess()["PYTHONPATH"]}},
    )
    return True
