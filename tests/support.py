"""Helpers shared by the tests (and a benchmark): images and archives to feed the engine,
the check that an error is a sentence a person can act on, a model-pass counter's record,
and a decode measured in a fresh process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

# The categories in the order the app shows them (as the authors' Space does).
DISPLAY_ORDER = [
    "artist",
    "copyright",
    "character",
    "species",
    "general",
    "lore",
    "meta",
    "contributor",
    "disambiguation",
    "unassigned",
]


def random_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A deterministic random RGB image (the ``make_image`` fixture)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """``image`` as the bytes of a ``fmt`` file (Pillow's ``save`` options)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def image_bytes(width: int = 64, height: int = 48, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A ``random_image`` as the bytes of a ``fmt`` file."""
    return encoded(random_image(width, height, seed), fmt)


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip of ``members`` (name → bytes); names are written as given."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def assert_sentence(message: str | None, cache_dir: str | None = None, end: tuple[str, ...] = (".", ")", "'")) -> None:
    """A message a person can act on: not just "Error", one line, no traceback, no server path.
    (Its asserts carry their own messages: pytest rewrites only test modules and conftest.)"""
    assert message, "empty error message"
    assert message.strip().lower() not in {"error", "none", "exception"}, message
    assert "\n" not in message, message
    assert "Traceback" not in message and 'File "' not in message, message
    assert message.rstrip().endswith(end), message
    assert len(message) < 600, message
    if cache_dir:
        assert cache_dir not in message, f"server path leaked: {message}"


@dataclass
class ForwardPasses:
    """What a tagger's model computed since the ``count_passes`` fixture started counting."""

    passes: int = 0
    images: int = 0


# Decodes one file (argv: root, path, how) to what the model sees (1024 px long edge),
# sampling the resident memory meanwhile; prints seconds, CPU seconds, peak growth, shape.
# A small image of the same format and mode goes first: a server has its decoders loaded.
_DECODE_CHILD = r"""
import io, json, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from PIL import Image
from tagger.engine.decode import load_image
from tagger.engine.preprocess import preprocess, target_size
path, how = sys.argv[2], sys.argv[3]
fit = lambda w, h: target_size(w, h, 1024, 16)
with Image.open(path) as probe:
    small = io.BytesIO()
    Image.new(probe.mode, (64, 64)).save(small, probe.format)
warm = load_image(small.getvalue(), fit=fit, reduced_decode=how != "full")
if how != "decode":
    preprocess(warm, 1024, 16)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

base = peak = rss()
done = threading.Event()

def sample():
    global peak
    while not done.wait(0.002):
        peak = max(peak, rss())

threading.Thread(target=sample, daemon=True).start()
runs = []
for _ in range(int(sys.argv[4])):  # the first from cold; the others as a server decodes, warm
    started, cpu = time.perf_counter(), time.process_time()
    if how == "full":
        out = preprocess(load_image(path), 1024, 16)
    elif how == "fit":  # as the web app decodes: fitted, at a reduced scale
        out = preprocess(load_image(path, fit=fit, reduced_decode=True), 1024, 16)
    else:  # "decode": the web app's fitted decode alone, a PIL image (no tensor, no torch)
        out = load_image(path, fit=fit, reduced_decode=True)
    runs.append((time.perf_counter() - started, time.process_time() - cpu))
    if len(runs) == 1:
        peak = max(peak, rss())
        first_peak = peak
done.set()
shape = list(out.shape) if hasattr(out, "shape") else [out.height, out.width]
seconds, cpu = runs[0]
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mib": (first_peak - base) / 2**20, "shape": shape,
                  "warm_cpu": min(c for _, c in runs[1:]) if len(runs) > 1 else cpu}))
"""


def decode_in_fresh_process(
    path: Path, how: str = "fit", root: Path = ROOT, timeout: float = 120, repeat: int = 1
) -> dict:
    """Decode ``path`` in a new Python process with the ``tagger`` under ``root``: ``how`` is
    "full" (``load_image`` then ``preprocess``), "fit" (``load_image(fit=..., reduced_decode=True)``
    then ``preprocess``, as the web app does) or "decode" (the fitted ``load_image`` alone). Returns
    ``{"seconds", "cpu", "peak_mib", "shape", "warm_cpu"}`` of the first (cold) decode: peak_mib
    is the growth of the resident memory during it; warm_cpu is the least CPU time of the
    ``repeat - 1`` decodes after it (a server's steady state)."""
    done = subprocess.run(
        [sys.executable, "-c", _DECODE_CHILD, str(root), str(path), how, str(repeat)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def patch_features(tagger, pixels) -> list[np.ndarray]:
    """Final-norm patch tokens of each image as float32 ``[h, w, C]``, batched as ``Tagger.run``:
    what ``tagger.features.pca.analyse`` computes its PCA from."""
    import torch

    out: list[np.ndarray] = [np.empty(0)] * len(pixels)
    with torch.inference_mode():
        for idx, images in tagger.batches(pixels):
            for grid, i in zip(tagger.model.patch_grids(tagger.model.tokens(images), images), idx, strict=True):
                out[i] = grid.float().cpu().numpy()
    return out
