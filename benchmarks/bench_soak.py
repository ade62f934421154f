"""Soak: 200 mixed requests against the app on loopback; RSS, open files and cache size over time.

A script, not a test: ``.venv/bin/python benchmarks/bench_soak.py [--requests 200] [--no-trim]``.

The app runs in this process (demo model unless ``--checkpoint``/``--vocab`` are given) and a
``gradio_client`` client sends, in turn: /tag with a small image, /tag with a 12 Mpx JPEG,
/tag with a 9 Mpx RGBA PNG, /pca, /heatmap, /similarity and /tag_batch with a zip of eight
images. Every ``--every`` requests it records the process's resident memory, its open file
descriptors and the bytes in Gradio's cache and the batch output folder. ``--no-trim`` turns
off the memory release after requests (``tagger.fairshare``), to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MiB = 2**20


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def folder_mib(*folders: Path) -> float:
    total = 0
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                with contextlib.suppress(OSError):  # removed meanwhile
                    total += os.path.getsize(os.path.join(dirpath, name))
    return total / MiB


def inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB")
    files = {
        "small": folder / "small.png",
        "photo": folder / "photo.jpg",
        "rgba": folder / "rgba.png",
        "zip": folder / "eight.zip",
    }
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(files["small"])
    photo.resize((4000, 3000), Image.Resampling.BICUBIC).filter(ImageFilter.DETAIL).save(files["photo"], quality=85)
    alpha = Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8)).resize((3000, 3000))
    rgba = photo.resize((3000, 3000))
    rgba.putalpha(alpha)
    rgba.save(files["rgba"], compress_level=1)
    with zipfile.ZipFile(files["zip"], "w") as archive:
        for i in range(8):
            buffer = io.BytesIO()
            photo.rotate(i * 40).resize((1200, 1200)).save(buffer, "JPEG", quality=90)
            archive.writestr(f"set/{i}.jpg", buffer.getvalue())
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--no-trim", action="store_true", help="do not release memory after requests")
    parser.add_argument("--checkpoint")
    parser.add_argument("--vocab")
    args = parser.parse_args()

    import gradio as gr
    from app_server import start_app
    from gradio_client import Client, handle_file

    import tagger.fairshare as fairshare
    from tagger.batch import OUTPUT_ROOT

    if args.no_trim:
        fairshare._MemoryRelease.__call__ = lambda self: None  # type: ignore[method-assign]
    argv = ["--demo"] if not args.checkpoint else ["--checkpoint", args.checkpoint, "--vocab", args.vocab]
    app = start_app(argv)
    cache = Path(gr.utils.get_upload_folder())
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    files = inputs(folder)
    client = Client(app.url, verbose=False)
    pair = (handle_file(str(files["small"])), handle_file(str(files["rgba"])))
    tag = app.context.vocab.tags[0]
    calls = [
        lambda: client.predict(handle_file(str(files["small"])), api_name="/tag"),
        lambda: client.predict(handle_file(str(files["photo"])), api_name="/tag"),
        lambda: client.predict(handle_file(str(files["rgba"])), api_name="/tag"),
        lambda: client.predict(handle_file(str(files["photo"])), api_name="/pca"),
        lambda: client.predict(handle_file(str(files["small"])), tag, api_name="/heatmap"),
        lambda: client.predict(*pair, api_name="/similarity"),
        lambda: client.predict([handle_file(str(files["zip"]))], api_name="/tag_batch"),
    ]
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; memory release "
        f"{'off' if args.no_trim else 'on'}; model: {'demo' if not args.checkpoint else args.checkpoint}\n"
    )
    print("| requests | seconds | RSS MiB | open files | cache MiB |\n|---|---|---|---|---|")
    started = time.perf_counter()
    rows = [(0, 0.0, rss_mib(), open_files(), folder_mib(cache, OUTPUT_ROOT))]
    print("| {} | {:.0f} | {:.0f} | {} | {:.1f} |".format(*rows[0]))
    peak = rows[0][2]
    for n in range(1, args.requests + 1):
        calls[(n - 1) % len(calls)]()
        peak = max(peak, rss_mib())
        if n % args.every == 0:
            rows.append((n, time.perf_counter() - started, rss_mib(), open_files(), folder_mib(cache, OUTPUT_ROOT)))
            print("| {} | {:.0f} | {:.0f} | {} | {:.1f} |".format(*rows[-1]))
    first, last = rows[0], rows[-1]
    print(
        f"\nRSS {first[2]:.0f} -> {last[2]:.0f} MiB (highest seen between requests {peak:.0f} MiB), "
        f"open files {first[3]} -> {last[3]}, cache {first[4]:.1f} -> {last[4]:.1f} MiB "
        f"({args.requests} requests in {last[1]:.0f} s)"
    )
    client.close()
    app.close()


if __name__ == "__main__":
    main()
