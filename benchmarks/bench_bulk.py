"""Bulk tagging benchmark: ``python -m tagger.bulk`` against a naive ``Tagger.predict`` loop.

A script, not a test. It writes (or reuses, under ``benchmarks/cache/``, git-ignored) a
folder of mixed-size JPEGs (alternating 2000×1500 "photos" and 600×900 "drawings") and
random-weight checkpoints in the real key layout with the real vocabulary size (74,625 tags)
and head biases that make them answer like the real model (a few dozen tags above 0.35), so
that selecting and formatting tags costs what it costs with the real model; then, for each
model, in fresh processes:

* naive: ``Tagger(...)`` then ``tagger.engine.tagger(path)`` for every image, one after another
  (one warm-up image first, not timed);
* bulk: ``python -m tagger.bulk FOLDER --out TMP --format txt`` with the given batch size
  and decoding workers; images/s and padding waste from its summary line (model load and
  listing excluded, the first batches' warm-up included).

``--engines local,ray`` runs the bulk command with each engine on the same folder (the
Ray/local ratio). ``--decode`` measures decoding alone, one process with one thread (images/s
per core), exact and with ``--reduced-decode`` (Pillow's JPEG draft mode), on the folder and
on 12 MP phone photos, and what the reduced decode does to the scores (the ``tiny`` model;
random weights, so only the size of the change means something).

With a GPU it also samples GPU utilisation (NVML through torch, else ``nvidia-smi``) while
the bulk run tags. Models: ``tiny`` (2 layers, width 128), ``mid`` (12 layers, width 384,
ViT-S-like) and ``full`` (the real ViT-H/16+ sizes, a 2.6 GB file written on first use)::

    .venv/bin/python benchmarks/bench_bulk.py                                   # CPU: tiny and mid
    .venv/bin/python benchmarks/bench_bulk.py --device cuda --models full --images 1024 \\
        --max-size 512 --batch-size 32                                            # the H100 goal
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / "benchmarks" / "cache"
NUM_TAGS = 74625
PHOTO = (2000, 1500)
DRAWING = (600, 900)
PHONE = (4032, 3024)  # a 12 MP phone photo (landscape and portrait)
GPU_GOAL = 150.0  # images/s at 512 px, batch 32, on one H100 (issue 9)


def model_config(name: str):  # type: ignore[no-untyped-def]
    from tagger.engine.model import TaggerConfig

    if name == "tiny":
        return TaggerConfig.tiny(num_tags=NUM_TAGS)
    if name == "mid":
        return TaggerConfig(hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536, num_tags=NUM_TAGS)
    if name == "full":
        return TaggerConfig()
    raise SystemExit(f"unknown model {name!r}: use tiny, mid or full")


def realistic_head_bias(num_tags: int, seed: int = 1):  # type: ignore[no-untyped-def]
    """Head biases that make a random model answer like the real one: a few dozen tags above
    0.35, a few hundred above the 0.05 floor, the rest far below. (With the random weights'
    near-zero biases every one of the 74,625 tags would score about 0.5, and formatting tens
    of thousands of tags per image would be all the benchmark measured.)"""
    import torch

    generator = torch.Generator().manual_seed(seed)
    bias = torch.full((num_tags,), -10.0)
    order = torch.randperm(num_tags, generator=generator)
    bias[order[:40]] = torch.linspace(1.0, 0.0, 40)
    bias[order[40:340]] = torch.linspace(-0.5, -3.0, 300)
    return bias


def ensure_model(name: str) -> tuple[Path, Path]:
    """A random checkpoint (bf16, real key layout, realistic head biases) and a 74,625-tag
    vocabulary, written once."""
    from safetensors.torch import save_file

    from tagger.engine.synthetic import random_state_dict, write_random_vocabulary
    from tagger.engine.weights import inspect_checkpoint

    checkpoint = CACHE / f"bulk_{name}.safetensors"
    vocab = CACHE / f"bulk_vocab_{NUM_TAGS}.json"
    config = model_config(name)
    try:
        if inspect_checkpoint(checkpoint).config.hidden_size != config.hidden_size:
            raise ValueError("another model")
    except Exception:
        print(f"writing a random {name} checkpoint to {checkpoint} ...", file=sys.stderr, flush=True)
        state = random_state_dict(config)
        state["head.bias"] = realistic_head_bias(config.num_tags).to(state["head.bias"].dtype)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(checkpoint))
    if not vocab.exists():
        write_random_vocabulary(vocab, NUM_TAGS)
    return checkpoint, vocab


def _smooth_jpegs(folder: Path, files: list[tuple[str, tuple[int, int]]], seed: int, coarseness: int) -> Path:
    """Writes each ``(name, (width, height))`` as a JPEG of smooth random content (realistic file
    sizes), unless ``folder`` already holds that many."""
    import numpy as np
    from PIL import Image

    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == len(files):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    print(f"writing {len(files)} JPEGs to {folder} ...", file=sys.stderr, flush=True)
    for name, size in files:
        coarse = rng.integers(0, 256, size=(size[1] // coarseness, size[0] // coarseness, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(folder / name, quality=90)
    return folder


def ensure_images(count: int) -> Path:
    """``count`` JPEGs alternating photo and drawing sizes."""
    files = [(f"photo_{i:05d}.jpg", PHOTO) if i % 2 == 0 else (f"drawing_{i:05d}.jpg", DRAWING) for i in range(count)]
    return _smooth_jpegs(CACHE / f"bulk_images_{count}", files, seed=0, coarseness=25)


def ensure_phone_photos(count: int) -> Path:
    """``count`` 12 MP JPEGs, landscape and portrait alternating (what bulk meets in photo sets)."""
    files = [(f"phone_{i:03d}.jpg", PHONE if i % 2 == 0 else PHONE[::-1]) for i in range(count)]
    return _smooth_jpegs(CACHE / f"bulk_phone_{count}", files, seed=1, coarseness=40)


# --------------------------------------------------------------------------------------------
# Measurements, each in a fresh process


def worker_decode(args: argparse.Namespace) -> None:
    """Decode rate on one core, exact and reduced, and the reduced decode's effect on scores."""
    import numpy as np
    import torch

    from tagger.engine.preprocess import Preprocessor
    from tagger.engine.tagger import Tagger

    torch.set_num_threads(1)
    paths = sorted(Path(args.folder).glob("*.jpg"))
    data = [p.read_bytes() for p in paths]
    result: dict = {"images": len(paths)}
    pixels = {}
    for name, reduced in (("exact", False), ("reduced", True)):
        prepare = Preprocessor(args.max_size, 16, reduced)
        prepare(data[0])  # warm-up
        started = time.perf_counter()
        pixels[name] = [prepare(d) for d in data]
        result[f"{name}_per_core"] = len(data) / (time.perf_counter() - started)
    result["same_sizes"] = all(a.shape == b.shape for a, b in zip(pixels["exact"], pixels["reduced"], strict=True))
    result["max_pixel_diff"] = max(int((a.int() - b.int()).abs().max()) for a, b in zip(*pixels.values(), strict=True))
    tagger = Tagger(args.checkpoint, args.vocab, device="cpu", max_size=args.max_size)
    exact, reduced = tagger.run(pixels["exact"]), tagger.run(pixels["reduced"])
    result["max_abs_dp"] = float(np.abs(exact - reduced).max())
    overlap = [
        len(set(np.argsort(-a)[:30]) & set(np.argsort(-b)[:30])) / 30 for a, b in zip(exact, reduced, strict=True)
    ]
    result["top30_overlap_min"] = min(overlap)
    print(json.dumps(result))


def run_decode(folder: Path, checkpoint: Path, vocab: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "decode", "--folder", str(folder), "--checkpoint", str(checkpoint)]
    command += ["--vocab", str(vocab), "--max-size", str(args.max_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_naive(args: argparse.Namespace) -> None:
    import torch

    from tagger.engine.tagger import Tagger

    paths = sorted(Path(args.folder).glob("*.jpg"))
    tagger = Tagger(args.checkpoint, args.vocab, device=args.device, max_size=args.max_size)
    tagger.predict(paths[0])  # warm-up
    sync = torch.cuda.synchronize if tagger.device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for path in paths:
        tagger.predict(path)
    sync()
    seconds = time.perf_counter() - started
    print(json.dumps({"images": len(paths), "seconds": seconds, "dtype": str(tagger.dtype).removeprefix("torch.")}))


def run_naive(folder: Path, checkpoint: Path, vocab: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "naive", "--folder", str(folder), "--checkpoint", str(checkpoint)]
    command += ["--vocab", str(vocab), "--device", args.device, "--max-size", str(args.max_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


class GpuSampler:
    """GPU utilisation (%) sampled every 0.2 s in a thread, through NVML or nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            import torch

            return float(torch.cuda.utilization(0))
        except Exception:
            pass
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            return float(out.stdout.strip().splitlines()[0])
        except Exception:
            return None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy_mean(self) -> float | None:
        """Mean over the stretch from the first to the last non-idle sample (the tagging, not the load)."""
        busy = [i for i, v in enumerate(self.samples) if v > 0]
        if not busy:
            return None
        window = self.samples[busy[0] : busy[-1] + 1]
        return sum(window) / len(window)


def run_bulk(folder: Path, checkpoint: Path, vocab: Path, args: argparse.Namespace, engine: str = "local") -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    command = [sys.executable, "-m", "tagger.bulk", str(folder), "--out", str(out), "--format", "txt"]
    if engine != "local":
        command += ["--engine", engine]
    command += ["--txt-location", "out", "--quiet", "--checkpoint", str(checkpoint), "--vocab", str(vocab)]
    command += ["--device", args.device, "--max-size", str(args.max_size)]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    sampler = GpuSampler() if args.device.startswith("cuda") else None
    try:
        if sampler is not None:
            with sampler:
                done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT)
        else:
            done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"bulk run failed ({done.returncode}):\n{done.stderr}")
    line = done.stdout.strip().splitlines()[-1]
    rate = float(re.search(r"([\d.]+) images/s", line).group(1))  # type: ignore[union-attr]
    waste = re.search(r"padding waste ([\d.]+)%", line)
    return {
        "rate": rate,
        "waste": float(waste.group(1)) if waste else 0.0,
        "gpu": sampler.busy_mean() if sampler is not None else None,
        "line": line,
    }


THREADS: int | None = None


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if THREADS is not None:
        env["OMP_NUM_THREADS"] = str(THREADS)
    return env


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--models", default=None, help="comma-separated: tiny, mid, full (default tiny,mid on CPU, full on CUDA)"
    )
    parser.add_argument(
        "--images", type=int, default=None, help="images in the folder (default 48 on CPU, 1024 on CUDA)"
    )
    parser.add_argument("--max-size", type=int, default=512, help="long-edge cap (default 512)")
    parser.add_argument("--batch-size", type=int, default=None, help="bulk batch size (default: the command's)")
    parser.add_argument("--workers", type=int, default=None, help="bulk decoding workers (default: the command's)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both runs (default: unset)")
    parser.add_argument("--skip-naive", action="store_true", help="bulk only (the naive loop is slow on big folders)")
    parser.add_argument("--engines", default="local", help="bulk engines to run, comma-separated: local, ray")
    parser.add_argument("--decode", action="store_true", help="also measure decoding alone (per core, exact/reduced)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "naive":
        worker_naive(args)
        return 0
    if args.worker == "decode":
        worker_decode(args)
        return 0

    global THREADS
    THREADS = args.threads
    on_gpu = args.device.startswith("cuda")
    models = (args.models or ("full" if on_gpu else "tiny,mid")).split(",")
    folder = ensure_images(args.images or (1024 if on_gpu else 48))
    count = len(list(folder.glob("*.jpg")))
    print(f"Machine: {machine()}")
    print(
        f"Folder: {count} JPEGs, half {PHOTO[0]}x{PHOTO[1]}, half {DRAWING[0]}x{DRAWING[1]}; --max-size {args.max_size}"
    )
    print(f"Command: {' '.join([Path(sys.executable).name, 'benchmarks/bench_bulk.py', *(argv or sys.argv[1:])])}")
    print()
    threads = f", OMP_NUM_THREADS={args.threads}" if args.threads else ""
    engines = args.engines.split(",")
    print(f"| model | device{threads} | naive predict loop | bulk | engine | speed-up | padding waste | GPU busy |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        checkpoint, vocab = ensure_model(name)
        naive = None if args.skip_naive else run_naive(folder, checkpoint, vocab, args)
        naive_rate = naive["images"] / naive["seconds"] if naive else None
        rates = {}
        for engine in engines:
            bulk = run_bulk(folder, checkpoint, vocab, args, engine)
            rates[engine] = bulk["rate"]
            cells = [
                name,
                f"{args.device} ({naive['dtype']})" if naive else args.device,
                f"{naive_rate:.3g} img/s" if naive_rate else "-",
                f"{bulk['rate']:.3g} img/s",
                engine,
                f"{bulk['rate'] / naive_rate:.2f}x" if naive_rate else "-",
                f"{bulk['waste']:.1f} %",
                f"{bulk['gpu']:.0f} %" if bulk["gpu"] is not None else "-",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
            if on_gpu and name == "full" and args.max_size == 512:
                verdict = "meets" if bulk["rate"] >= GPU_GOAL else "misses"
                print(f"\n{verdict} the goal of {GPU_GOAL:.0f} images/s at 512 px: {bulk['line']}")
        if "ray" in rates and "local" in rates:
            print(f"\n{name}: Ray / local = {rates['ray'] / rates['local']:.2f}\n", flush=True)
    if args.decode:
        checkpoint, vocab = ensure_model("tiny")
        print(
            "\n| images | exact img/s per core | reduced img/s per core | max pixel diff | max abs dp "
            "| top-30 overlap (min) |"
        )
        print("|---|---|---|---|---|---|")
        for label, where in (("folder", folder), ("12 MP phone photos", ensure_phone_photos(8))):
            d = run_decode(where, checkpoint, vocab, args)
            cells = [f"{label} ({d['images']})", f"{d['exact_per_core']:.3g}", f"{d['reduced_per_core']:.3g}"]
            cells += [str(d["max_pixel_diff"]), f"{d['max_abs_dp']:.4f}", f"{d['top30_overlap_min']:.2f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
