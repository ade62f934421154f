"""ONNX variants against torch: size on disk, drift and CPU speed, in one run.

A script, not a test. The real checkpoint cannot be downloaded here, so it measures a model
with the real width and head (1280 channels, 20 heads, SwiGLU 5120, 4 registers, head
6400 → 74,625) but ``--layers`` blocks (default 4 of 32) and random weights (as
``tagger.engine.synthetic`` writes them, with the demo's spread of head biases so that scores are not
all near 0.5); a full-depth fp32 export needs more memory than this machine shares. What each
number means for the real model: sizes scale with the depth (the table also gives the full
32-block size computed from the per-block size); drift is that of random weights through
``--layers`` blocks, not the trained model's; speed ratios hold per block.

Steps, each of which frees what it used before the next:

1. write the random checkpoint (bf16 safetensors) and take the vocabulary (the real one from
   ``shared/reference`` when present, else a random one of the same length);
2. ``python -m tagger.export --graphs tagger --wd14-size 0`` in a child process (its peak
   resident memory is reported);
3. fp32 torch probabilities of ``--images`` images (random smooth images at ``--size`` px) as the
   reference, then our torch default (``Tagger(device="cpu")``: bf16 where the CPU has it, else
   fp32) timed, then each ONNX variant through ``OnnxTagger``: seconds per image (median of
   ``--runs`` passes over the images, after one warm-up), max |Δp|, mean |Δp| and the top-30
   overlap with fp32 torch.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_onnx.py --out /tmp/bench-onnx
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

REAL_VOCAB = ROOT.parent.parent / "shared" / "reference" / "tagger_vocab.json"
FULL_DEPTH = 32


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.machine()


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_model(folder: Path, layers: int) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from tagger.engine.model import TaggerConfig
    from tagger.engine.synthetic import random_state_dict, write_random_vocabulary

    config = TaggerConfig(num_layers=layers)
    vocab = folder / "tagger_vocab.json"
    if REAL_VOCAB.is_file():
        vocab.write_bytes(REAL_VOCAB.read_bytes())
    else:
        write_random_vocabulary(vocab, config.num_tags)
    state = random_state_dict(config, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    spread = torch.linspace(0.0, -12.0, config.num_tags)[torch.randperm(config.num_tags, generator=generator)]
    state["head.bias"] = spread.to(torch.bfloat16)  # as tagger.engine.synthetic.write_demo_files
    checkpoint = folder / "bench.safetensors"
    save_file(state, str(checkpoint))
    del state
    gc.collect()
    return checkpoint, vocab


def images(count: int, size: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        out.append(Image.fromarray(small, "RGB").resize((size, size), Image.Resampling.BICUBIC))
    return out


def timed(run, pixels, runs: int) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    result = run(pixels)  # warm-up: first-call allocations and kernel choices
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run(pixels)
        times.append((time.perf_counter() - started) / len(pixels))
    return result, statistics.median(times)


def drift(reference: np.ndarray, got: np.ndarray) -> dict:
    delta = np.abs(got - reference)
    overlap = [len(set(np.argsort(-r)[:30]) & set(np.argsort(-g)[:30])) for r, g in zip(reference, got, strict=True)]
    return {
        "max_dp": float(delta.max()),
        "mean_dp": float(delta.mean()),
        "top30_min": min(overlap),
        "top30_mean": float(np.mean(overlap)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="export folder (default: a temporary one, removed)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    from tagger.engine.tagger import Tagger
    from tagger.export import VARIANT_FILES
    from tagger.onnx.backend import OnnxTagger

    temporary = tempfile.TemporaryDirectory(prefix="bench-onnx-")
    out = args.out or Path(temporary.name) / "onnx"
    work = Path(temporary.name)
    checkpoint, vocab = write_model(work, args.layers)
    started = time.perf_counter()
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tagger.export",
            "--checkpoint",
            str(checkpoint),
            "--vocab",
            str(vocab),
            "--out",
            str(out),
            "--graphs",
            "tagger",
            "--wd14-size",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if child.returncode:
        sys.exit(child.stderr[-3000:])
    export_seconds = time.perf_counter() - started
    export_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    pictures = images(args.images, args.size)
    reference_tagger = Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_size=args.size)
    pixels = [reference_tagger.prepare(p) for p in pictures]
    reference = reference_tagger.run(pixels)
    del reference_tagger
    gc.collect()

    rows = []
    default = Tagger(checkpoint, vocab, device="cpu", max_size=args.size)
    probs, seconds = timed(default.run, pixels, args.runs)
    torch_seconds = seconds
    rows.append(
        {
            "variant": f"torch default ({str(default.dtype).removeprefix('torch.')})",
            "file": "-",
            "bytes": None,
            "seconds_per_image": seconds,
            **drift(reference, probs),
        }
    )
    del default, probs
    gc.collect()

    for variant, name in VARIANT_FILES.items():
        path = out / "tagger" / name
        size = path.stat().st_size + (path.parent / (name + ".data")).stat().st_size
        onnx = OnnxTagger(path, vocab, max_size=args.size)
        probs, seconds = timed(onnx.run, pixels, args.runs)
        rows.append(
            {
                "variant": f"onnxruntime {variant}",
                "file": f"tagger/{name}",
                "bytes": size,
                "seconds_per_image": seconds,
                **drift(reference, probs),
            }
        )
        del onnx, probs
        gc.collect()

    # Per-block size from the fp32 file: everything but the head (and patch embedding) grows with depth.
    head_params = 74625 * 6400 + 74625
    report = {
        "machine": f"{_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": f"real width and head, {args.layers} of {FULL_DEPTH} blocks, random weights",
        "images": f"{args.images} at {args.size}x{args.size}",
        "export_seconds": export_seconds,
        "export_peak_rss_mib": export_peak,
        "bench_peak_rss_mib": _rss_peak_mib(),
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    print()
    print(
        "| variant | file | size, this depth | est. size at 32 blocks | s / image | vs torch | max abs dp | "
        "mean abs dp | top-30 overlap (min / mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["bytes"] is None:
            size_text = est = "-"
        else:
            head_bytes = head_params * 4  # fp32 in every variant
            per_block = (row["bytes"] - head_bytes) / args.layers
            size_text = f"{row['bytes'] / 2**30:.2f} GiB"
            est = f"{(head_bytes + per_block * FULL_DEPTH) / 2**30:.2f} GiB"
        print(
            f"| {row['variant']} | {row['file']} | {size_text} | {est} | {row['seconds_per_image']:.2f} | "
            f"{torch_seconds / row['seconds_per_image']:.2f}x | {row['max_dp']:.2e} | {row['mean_dp']:.2e} | "
            f"{row['top30_min']} / {row['top30_mean']:.1f} |"
        )
    temporary.cleanup()


if __name__ == "__main__":
    main()
