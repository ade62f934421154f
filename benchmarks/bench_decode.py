"""Decode cost of small hostile uploads, and what reduced decoding changes.

A script, not a test: ``.venv/bin/python benchmarks/bench_decode.py [--quick]``.

1. Cost: files of at most ~1 MiB that declare up to the web pixel cap (40 Mpx): palette
   GIF and PNG, RGBA PNG and WebP, float TIFF, 16-bit PNG, JPEG, JPEG 2000. Each is decoded to
   what the model sees (1024 px long edge) in a fresh subprocess, twice: the full decode then
   resize (``load_image`` then ``preprocess``, as before) and the fitted decode
   (``load_image(fit=target_size, reduced_decode=True)``, as the web app decodes). Seconds and
   peak RSS growth per file.
2. Reduced decoding (JPEG DCT scaling, a box average for other formats such as PNG): max and mean |Δ| of the
   1024 px uint8 image against the exact path, and the max |Δ| of the tiny random model's
   probabilities (``TaggerConfig.tiny``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support import decode_in_fresh_process as measure  # noqa: E402

import tagger.engine.decode as pp  # noqa: E402
from tagger.datasets.pixel_caps import web_limit  # noqa: E402
from tagger.engine.decode import ImageHeader, load_image  # noqa: E402
from tagger.engine.preprocess import target_size  # noqa: E402


def blocks(width: int, height: int, block: int = 500, seed: int = 0) -> np.ndarray:
    """Flat RGBA blocks: compresses to almost nothing, decodes to width x height x 4 bytes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // block + 1, width // block + 1, 4), dtype=np.uint8)
    return np.kron(small, np.ones((block, block, 1), dtype=np.uint8))[:height, :width]


def hostile_files(folder: Path, width: int, height: int, names: set[str] | None = None) -> dict[str, Path]:
    rgba = blocks(width, height)
    rgb = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    files = {
        "palette.gif": lambda p: palette.save(p),
        "palette_alpha.png": lambda p: palette.save(p, transparency=0, compress_level=1),
        "rgba.png": lambda p: Image.fromarray(rgba, "RGBA").save(p, compress_level=1),
        "rgba.webp": lambda p: Image.fromarray(rgba, "RGBA").save(p, lossless=True, quality=0),
        "float.tif": lambda p: Image.fromarray(rgba[..., 0].astype(np.float32) / 255).save(
            p, compression="tiff_adobe_deflate"
        ),
        "grey16.png": lambda p: Image.fromarray(rgba[..., 0].astype(np.uint16) * 257).save(p, compress_level=1),
        "photo.jpg": lambda p: rgb.filter(ImageFilter.GaussianBlur(2)).save(p, quality=30),
        "photo.jp2": lambda p: rgb.save(p, quality_mode="rates", quality_layers=[400]),
    }
    paths = {}
    for name, write in files.items():
        if names is not None and name not in names:
            continue
        path = folder / name
        write(path)
        paths[name] = path
    return paths


def cost_table(folder: Path, width: int, height: int, before: Path | None) -> None:
    """Each file as large as the web app accepts for its format (``web_limit``), at most
    ``width`` x ``height``."""
    print(f"## Cost: up to {width}x{height} ({width * height / 1e6:.0f} Mpx) or the format's web cap, 1024 px out\n")
    print("CPU seconds of the first decode in a fresh process (wall seconds), peak RSS growth during it;")
    print("web decode also: the least CPU seconds of 3 more decodes in that process (a server's steady state)\n")
    old = f" before ({before}) |" if before else ""
    head = f"| file | size |{old} full decode + resize | web decode | warm |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name in hostile_files(folder, 64, 64):
        cap = web_limit(ImageHeader(width, height, Image.registered_extensions()[Path(name).suffix]))
        scale = min(1.0, (cap / (width * height)) ** 0.5)
        w, h = int(width * scale), int(height * scale)
        path = hostile_files(folder, w, h, {name})[name]
        full, fitted = measure(path, "full"), measure(path, "fit", repeat=4)
        assert full["shape"] == fitted["shape"]
        old = f" {_cost(measure(path, 'full', before))} |" if before else ""
        size = f"{w}x{h}, {path.stat().st_size / 2**20:.2f} MiB"
        print(f"| {name} | {size} |{old} {_cost(full)} | {_cost(fitted)} | {fitted['warm_cpu']:.2f} s |")


def _cost(run: dict) -> str:
    return f"{run['cpu']:.2f} s ({run['seconds']:.2f} s), +{run['peak_mib']:.0f} MiB"


def reduced_sources(quick: bool) -> dict[str, tuple[Image.Image, str]]:
    photo = Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB")
    sources: dict[str, tuple[Image.Image, str]] = {}
    sizes = [(6200, 4000), (8000, 5000)] if not quick else [(6200, 4000)]
    for width, height in sizes:
        sharp = photo.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.UnsharpMask(4, 300, 0))
        sources[f"photo {width}x{height}"] = (sharp, "JPEG")
        for step in ((7, 5), (3, 2)):
            grid = np.full((height, width, 3), 255, np.uint8)
            grid[:: step[0], :] = 0
            grid[:, :: step[1]] = 40
            sources[f"line grid {step[0]}x{step[1]} px, {width}x{height}"] = (Image.fromarray(grid), "JPEG")
        noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        sources[f"noise {width}x{height}"] = (Image.fromarray(noise), "JPEG")
    # Formats the decoder cannot shrink: box-averaged band by band before Lanczos.
    sources["photo 8000x5000 (PNG)"] = (photo.resize((8000, 5000), Image.Resampling.BICUBIC), "PNG")
    grid = np.full((5000, 8000, 3), 255, np.uint8)
    grid[::3, :] = 0
    grid[:, ::2] = 40
    sources["line grid 3x2 px, 8000x5000 (PNG)"] = (Image.fromarray(grid), "PNG")
    return sources


def reduced_table(quick: bool) -> None:
    from tagger.engine.model import TaggerConfig
    from tagger.engine.synthetic import write_random_checkpoint, write_random_vocabulary
    from tagger.engine.tagger import Tagger

    folder = Path(tempfile.mkdtemp(prefix="bench-decode-"))
    config = TaggerConfig.tiny(num_tags=48)
    tagger = Tagger(
        write_random_checkpoint(folder / "tiny.safetensors", config),
        write_random_vocabulary(folder / "vocab.json", config.num_tags),
        device="cpu",
        dtype="fp32",
    )
    fit = lambda w, h: target_size(w, h, 1024, 16)  # noqa: E731
    margin = pp.REDUCED_DECODE_MARGIN
    print(f"\n## Reduced decoding (REDUCED_DECODE_MARGIN = {margin}) against the exact path, 1024 px out\n")
    print("| source | max abs diff (uint8) | mean abs diff | max abs diff of probabilities (tiny model) |")
    print("|---|---|---|---|")
    for name, (image, fmt) in reduced_sources(quick).items():
        buffer = io.BytesIO()
        image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1} if fmt == "PNG" else {}))
        data = buffer.getvalue()
        try:
            pp.REDUCED_DECODE_MARGIN = 10**9  # never reduce: the reference
            exact = load_image(data, fit=fit, reduced_decode=True)
            pp.REDUCED_DECODE_MARGIN = margin
            reduced = load_image(data, fit=fit, reduced_decode=True)
        finally:
            pp.REDUCED_DECODE_MARGIN = margin
        diff = np.abs(np.asarray(reduced, dtype=np.int16) - np.asarray(exact, dtype=np.int16))
        probs = tagger.run([tagger.prepare(exact), tagger.prepare(reduced)])
        print(f"| {name} | {diff.max()} | {diff.mean():.3f} | {np.abs(probs[0] - probs[1]).max():.2e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sources, 16 Mpx cost files")
    parser.add_argument("--cost-only", action="store_true", help="skip the reduced-decoding comparison")
    parser.add_argument("--before", type=Path, help="a checkout of the previous code, measured alongside")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at start\n")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as folder:
        width, height = (4000, 4000) if args.quick else (8000, 5000)
        cost_table(Path(folder), width, height, args.before)
    if not args.cost_only:
        reduced_table(args.quick)


if __name__ == "__main__":
    main()
