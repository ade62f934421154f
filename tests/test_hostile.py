"""Hostile and odd inputs: the app never crashes, never lets anything in, and says what is wrong.

* A corpus of broken, odd and malicious files (generated here) through the engine
  (``Tagger.prepare``) and through ``/tag`` on the running app: each one is tagged or refused
  with our sentence, and the server answers the next request normally.
* Property-based tests (hypothesis) over image sizes, modes and arrays, and over the
  selection and formatting arguments: no exception but ``ImageError`` / ``SelectionError``.
* URLs: ``tagger.fetch`` directly and ``handle_file(url)`` through ``/tag``: internal addresses,
  other schemes, redirects to them, too many redirects, too many bytes, too slow. A local HTTP
  server on 127.0.0.1 stands in for the internet: the address policy is patched to let only
  its port through. Nothing here leaves the machine.
* Limits set on the app: upload size, pixels, data URLs.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import ipaddress
import json
import math
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from app_server import RunningApp
from gradio.data_classes import ImageData
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, features

import tagger.fetch as fetch
from tagger.fetch import FetchError, address_problem, fetch_url
from tagger.options import MODES, OPTION_FIELDS, ORDERS, TagOptions
from tagger.predict import Tagger
from tagger.preprocess import ImageError, load_image
from tagger.results import Selection, SelectionError, select_tags, tag_string
from tagger.server import MAX_FILE_SIZE
from tagger.ui.inputs import SafeFile, SafeImage
from tagger.vocab import CATEGORIES, Vocabulary

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from test apps

REQUEST_TIMEOUT_S = 60
# How our ImageError / FetchError sentences start (tagger.preprocess, tagger.fetch, context).
OUR_SENTENCE = re.compile(
    r"^(Could not read|Cannot read|Image file not found|The file|Refused to download|Could not download)"
)
DEFAULT_ARGS = [f.default for f in OPTION_FIELDS]  # /tag after `image`


# ---------------------------------------------------------------------------------------------
# The corpus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expect: str  # "ok": tagged; "error": refused with a sentence; "either"


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height``: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _after_ihdr(png: bytes, chunk: bytes) -> bytes:
    return png[:33] + chunk + png[33:]  # signature (8) + IHDR (25)


def gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    at = jpeg.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height (2), width (2)
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def build_corpus() -> list[Case]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    png, jpeg = _encode(rgb, "PNG"), _encode(rgb, "JPEG", quality=90)
    frames = [Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)) for _ in range(3)]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    i16b = Image.frombytes("I;16B", (20, 10), rng.integers(0, 256, 400, dtype=np.uint8).tobytes())
    int32 = Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (20, 30), dtype=np.int32))
    zeros = zlib.compress(bytes(64 << 20), 9)  # a zlib bomb: 64 MB of zeros in ~64 KB
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'
    cases = [
        Case("empty.png", b"", "error"),
        Case("text.png", b"hello, this is not an image\n" * 20, "error"),
        Case("truncated.png", png[: len(png) // 2], "error"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "error"),
        Case("header_only.png", png[:33], "error"),
        Case("bad_crc.png", png[:40] + bytes([png[40] ^ 0xFF]) + png[41:], "error"),
        Case("bomb_900mp.png", png_declaring(30_000, 30_000), "error"),  # over Pillow's own guard too
        Case("bomb_120mp.png", png_declaring(12_000, 10_000), "error"),  # over ours only
        Case("bomb.gif", gif_declaring(65_535, 65_535), "error"),
        Case("bomb.jpg", jpeg_declaring(jpeg, 60_000, 60_000), "error"),
        Case("zero_width.png", png_declaring(0, 16), "error"),
        Case("1x1.png", _encode(Image.new("RGB", (1, 1), "red"), "PNG"), "ok"),
        Case("16x4000.png", _encode(rgb.resize((16, 4000)), "PNG"), "ok"),
        Case("4000x16.png", _encode(rgb.resize((4000, 16)), "PNG"), "ok"),
        Case("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50), "ok"),
        Case("animated.png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50), "ok"),
        Case("cmyk.jpg", _encode(rgb.convert("CMYK"), "JPEG"), "ok"),
        Case("16bit.png", _encode(Image.fromarray(rng.integers(0, 65536, (40, 50)).astype(np.uint16)), "PNG"), "ok"),
        Case("palette_alpha.png", _encode(rgb.convert("P", colors=16), "PNG", transparency=0), "ok"),
        Case("exif_rotated.jpg", _encode(rgb, "JPEG", exif=exif.tobytes()), "ok"),
        Case("grey.jpg", _encode(rgb.convert("L"), "JPEG"), "ok"),
        Case("bitmap.bmp", _encode(rgb, "BMP"), "ok"),
        Case("multipage.tif", _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "ok"),
        Case("icon.ico", _encode(rgb, "ICO", sizes=[(16, 16), (32, 32), (48, 48)]), "ok"),
        Case("1bit.png", _encode(rgb.convert("1"), "PNG"), "ok"),
        Case("la.png", _encode(rgb.convert("LA"), "PNG"), "ok"),
        Case("i16b.tif", _encode(i16b, "TIFF"), "ok"),
        Case("float.tif", _encode(Image.fromarray(rng.random((20, 30), dtype=np.float32)), "TIFF"), "ok"),
        Case("int32.tif", _encode(int32, "TIFF"), "ok"),
        Case("ppm16.ppm", b"P6 8 4 65535\n" + rng.integers(0, 256, 8 * 4 * 6, dtype=np.uint8).tobytes(), "ok"),
        Case("targa.tga", _encode(rgb, "TGA"), "ok"),
        Case("jpeg_named.png", jpeg, "ok"),
        Case("猫 <b>&amp; 'q'.png", png, "ok"),
        Case("svg_renamed.png", svg, "error"),
        Case("drawing.svg", svg, "error"),
        Case("page_renamed.jpg", b"<!doctype html><html><script>alert(1)</script></html>", "error"),
        Case("postscript.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto\n%%EOF\n", "error"),
        # zlib bombs inside ancillary chunks; Pillow caps what it inflates.
        Case("huge_iccp.png", _after_ihdr(png, _chunk(b"iCCP", b"icc\0\0" + zeros)), "either"),
        Case("huge_ztxt.png", _after_ihdr(png, _chunk(b"zTXt", b"Comment\0\0" + zeros)), "either"),
        Case("huge_text.png", _after_ihdr(png, _chunk(b"tEXt", b"Comment\0" + b"A" * (3 << 20))), "either"),
    ]  # fmt: skip
    if features.check("webp"):
        webp_frames = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
        cases += [
            Case("animated.webp", webp_frames, "ok"),
            Case("alpha.webp", _encode(rgb.convert("RGBA"), "WEBP", lossless=True), "ok"),
        ]
    return cases


CORPUS = build_corpus()
CASE_IDS = [c.name.encode("ascii", "replace").decode() for c in CORPUS]


def assert_sentence(message: str | None, cache_dir: str | None = None) -> None:
    """A message a person can act on: not just "Error", no traceback, no server path."""
    assert message, "empty error message"
    assert message.strip().lower() not in {"error", "none", "exception"}
    assert "Traceback" not in message and 'File "' not in message, message
    assert message.rstrip().endswith((".", ")", "'")), message
    assert len(message) < 600, message
    if cache_dir:
        assert cache_dir not in message, f"server path leaked: {message}"


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    paths = {}
    for case in CORPUS:
        path = folder / case.name
        path.write_bytes(case.data)
        paths[case.name] = path
    return paths


@pytest.fixture(scope="module")
def small_tagger(tiny_files: tuple[Path, Path]) -> Tagger:
    checkpoint, vocab = tiny_files
    return Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_size=64)


@pytest.fixture(scope="module")
def good_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def call_tag(client: Client, image: object, **kwargs: object) -> dict:
    """``/tag`` with a hard time limit; returns the JSON or raises the client's error."""
    return client.submit(image, api_name="/tag", **kwargs).result(timeout=REQUEST_TIMEOUT_S)


def assert_tags(result: object) -> None:
    assert isinstance(result, dict), result
    assert set(result) >= {"tags", "categories", "count", "tag_string"}
    assert result["count"] == len(result["tags"])
    assert all(0.0 <= t["score"] <= 1.0 for t in result["tags"])


def assert_serves(client: Client, good_image: Path) -> None:
    assert_tags(call_tag(client, handle_file(str(good_image))))


# ---------------------------------------------------------------------------------------------
# Corpus through the engine and through /tag


@pytest.mark.parametrize("case", CORPUS, ids=CASE_IDS)
def test_corpus_through_engine(case: Case, corpus_files: dict[str, Path], small_tagger: Tagger) -> None:
    for source in (corpus_files[case.name], case.data):
        try:
            pixels = small_tagger.prepare(source)
        except ImageError as e:
            assert case.expect != "ok", f"{case.name} refused: {e}"
            assert_sentence(str(e))
            assert OUR_SENTENCE.match(str(e)), str(e)
            continue
        assert case.expect != "error", f"{case.name} was accepted"
        assert pixels.dtype == torch.float32 and pixels.ndim == 3 and pixels.shape[0] == 3
        assert pixels.shape[1] % 16 == 0 and pixels.shape[2] % 16 == 0
        assert max(pixels.shape[1:]) <= 64
        assert torch.isfinite(pixels).all()
    if case.name == "exif_rotated.jpg":  # 64x48 stored, shown (and tagged) upright as 48x64
        assert tuple(small_tagger.prepare(case.data).shape[1:]) == (64, 48)


@pytest.mark.parametrize("case", CORPUS, ids=CASE_IDS)
def test_corpus_through_api(case: Case, corpus_files: dict[str, Path], client: Client, good_image: Path) -> None:
    try:
        result = call_tag(client, handle_file(str(corpus_files[case.name])))
    except AppError as e:
        assert case.expect != "ok", f"{case.name} refused: {e}"
        assert_sentence(e.message, gr.utils.get_upload_folder())
        assert OUR_SENTENCE.match(e.message), e.message
        # The upload's own name, never the server's temporary path.
        assert corpus_files[case.name].name in e.message or "given data" in e.message, e.message
        assert_serves(client, good_image)
        return
    assert case.expect != "error", f"{case.name} was accepted: {result}"
    assert_tags(result)


# Raw payloads that gradio_client would never send; the server must refuse them and go on.
RAW_PAYLOADS = {
    "path_outside_uploads": ({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, {}),
    "file_scheme": ({"path": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}}, {}),
    "ftp_scheme": ({"path": "ftp://example.com/x.png", "meta": {"_type": "gradio.FileData"}}, {}),
    "uppercase_scheme": ({"path": "HTTP://127.0.0.1:9/x.png", "meta": {"_type": "gradio.FileData"}}, {}),
    "no_image": (None, {}),
    "threshold_nan": ("UPLOAD", {2: float("nan")}),
    "threshold_huge": ("UPLOAD", {2: 1e308}),
    "topk_string": ("UPLOAD", {4: "many"}),
    "mode_list": ("UPLOAD", {1: ["threshold"]}),
    "exclude_huge": ("UPLOAD", {8: "x," * 200_000}),
}


def raw_call(app: RunningApp, data: list) -> tuple[str, object]:
    """``/tag`` through Gradio's REST API: (``"complete"`` | ``"error"``, data or message)."""
    body = json.dumps({"data": data}, allow_nan=True)
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        started = http.post("gradio_api/call/tag", content=body, headers={"Content-Type": "application/json"})
        assert started.status_code == 200, started.text
        stream = http.get(f"gradio_api/call/tag/{started.json()['event_id']}").text
    event = re.findall(r"^event: (\w+)$", stream, re.M)[-1]
    payload = json.loads(re.findall(r"^data: (.*)$", stream, re.M)[-1])
    if event == "error":
        return "error", (payload or {}).get("error") if isinstance(payload, dict) else payload
    return event, payload


@pytest.mark.parametrize("name", list(RAW_PAYLOADS))
def test_raw_payloads_refused(name: str, app: RunningApp, client: Client, good_image: Path) -> None:
    image, overrides = RAW_PAYLOADS[name]
    if image == "UPLOAD":
        with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http, open(good_image, "rb") as f:
            uploaded = http.post("gradio_api/upload", files={"files": ("good.png", f)}).json()[0]
        image = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    data = [image, *DEFAULT_ARGS]
    for index, value in overrides.items():
        data[index] = value
    event, message = raw_call(app, data)
    if name == "exclude_huge":  # odd but valid: tagged
        assert event == "complete", message
    else:
        assert event == "error", message
        assert isinstance(message, str) and message and "Traceback" not in message, message
    assert_serves(client, good_image)


# ---------------------------------------------------------------------------------------------
# Property-based: images of any size and mode, arrays, selection and formatting arguments


def _modes() -> list[str]:
    usable = []
    for mode in ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]:
        with contextlib.suppress(ValueError, OSError):
            Image.new(mode, (2, 2)).load()
            usable.append(mode)
    return [*usable, "I", "I;16", "I;16B", "F"]


IMAGE_MODES = _modes()
ENCODINGS = [None, "PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP", "PPM", "ICO"]


def _image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I", "I;16", "I;16B", "F"):
        dtype = {"I": np.int32, "F": np.float32}.get(mode, np.uint16)
        values = rng.integers(0, 65536, (height, width)).astype(dtype)
        if mode == "F":
            values = values / 65535.0
        image = Image.fromarray(values.astype(dtype))
        return (
            image if mode not in ("I;16B",) else Image.frombytes("I;16B", (width, height), values.byteswap().tobytes())
        )
    base = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode in ("P", "PA"):
        image = base.convert("RGB").convert("P", colors=int(rng.integers(1, 256)))
        return image.convert("PA") if mode == "PA" else image
    try:
        return base.convert(mode)
    except ValueError:
        return Image.frombytes(mode, (width, height), rng.bytes(len(Image.new(mode, (width, height)).tobytes())))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(IMAGE_MODES),
    width=st.integers(1, 1500),
    height=st.integers(1, 1500),
    encoding=st.sampled_from(ENCODINGS),
    seed=st.integers(0, 2**16),
)
def test_any_size_and_mode(small_tagger: Tagger, mode: str, width: int, height: int, encoding: str | None, seed: int):
    if width * height > 250_000:  # keep each example fast; the size rule is exercised by the shapes
        width, height = max(1, 250_000 // height), height
    image = _image(mode, width, height, seed)
    source: Image.Image | bytes = image
    if encoding is not None:
        try:
            source = _encode(image, encoding)
        except (OSError, ValueError, KeyError, TypeError):
            return  # this format cannot store this mode; nothing to test
    try:
        pixels = small_tagger.prepare(source)
    except ImageError as e:
        assert_sentence(str(e))
        return
    _, out_h, out_w = pixels.shape
    assert out_h % 16 == 0 and out_w % 16 == 0 and max(out_h, out_w) <= 64
    assert torch.isfinite(pixels).all()
    if encoding not in ("ICO",):  # ICO keeps the largest icon size, not the canvas
        long_in, long_out = max(width, height), max(out_h, out_w)
        assert long_out <= max(16, long_in)


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_, np.complex64]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24),
    )
)
def test_any_array(array: np.ndarray) -> None:
    try:
        image = load_image(array)
    except ImageError as e:
        assert_sentence(str(e))
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


def _floats() -> st.SearchStrategy[float]:
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.sampled_from([0.0, 1.0, -0.0]))


TAG_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
CATEGORY_NAMES = [c.name for c in CATEGORIES]
TAG_LISTS = st.one_of(
    TAG_TEXT,
    st.lists(TAG_TEXT, max_size=6),
    st.just(""),
    st.just(",,, ,\n"),
    st.lists(st.sampled_from(["tag 1", "TAG_1", r"tag \(1\)", "general 1"]), max_size=4),
)


@pytest.fixture(scope="module")
def unicode_vocab() -> Vocabulary:
    tags = ["tag 1", "tag (1)", "猫", "e\u0301", "\u202eevil", "a,b", "x\\y", " spaced ", "", "general 1"] * 3
    ids = np.array([c.id for c in CATEGORIES] * 3, dtype=np.int16)
    return Vocabulary(tags, ids)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.one_of(st.sampled_from(MODES), TAG_TEXT),
    threshold=_floats(),
    character_threshold=_floats(),
    topk=st.one_of(st.integers(-5, 10**12), st.sampled_from([0, 1, 2**63])),
    floor=_floats(),
    categories=st.one_of(st.none(), TAG_TEXT, st.lists(st.sampled_from([*CATEGORY_NAMES, "nope", "GENERAL "]))),
    category_thresholds=st.one_of(
        TAG_TEXT,
        st.sampled_from(["artist=0.6", "artist: 2", "nope=0.5", "general=nan", "=", "artist=0.1, copyright=0.9"]),
        st.dictionaries(st.sampled_from([*CATEGORY_NAMES, "x"]), _floats(), max_size=3),
    ),
    exclude=TAG_LISTS,
    prepend=TAG_LISTS,
    flags=st.tuples(st.booleans(), st.booleans()),
    order=st.one_of(st.sampled_from(ORDERS), TAG_TEXT),
    scores=hnp.arrays(np.float32, 30, elements=st.floats(0, 1, width=32) | st.just(float("nan"))),
)
def test_any_options(
    unicode_vocab: Vocabulary,
    mode: str,
    threshold: float,
    character_threshold: float,
    topk: int,
    floor: float,
    categories: object,
    category_thresholds: object,
    exclude: object,
    prepend: object,
    flags: tuple[bool, bool],
    order: str,
    scores: np.ndarray,
) -> None:
    try:
        options = TagOptions(
            mode=mode,
            threshold=threshold,
            character_threshold=character_threshold,
            topk_per_category=topk,
            floor=floor,
            categories=categories,  # type: ignore[arg-type]
            category_thresholds=category_thresholds,  # type: ignore[arg-type]
            exclude=exclude,  # type: ignore[arg-type]
            prepend=prepend,  # type: ignore[arg-type]
            underscores=flags[0],
            escape_parentheses=flags[1],
            order=order,
        )
        tags = select_tags(scores, unicode_vocab, options.selection)
        text = options.tag_string(tags)
    except SelectionError as e:
        assert_sentence(str(e))
        return
    assert isinstance(text, str)
    assert all(t.score >= options.selection.floor for t in tags)
    assert len({t.index for t in tags}) == len(tags)
    excluded = options.selection.exclude
    assert not any(unicode_vocab.find(e) and t.index in unicode_vocab.find(e) for e in excluded for t in tags)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    threshold=_floats(),
    topk=st.one_of(st.none(), st.integers(-3, 10**18), st.floats(allow_nan=True)),
    category_topk=st.dictionaries(st.one_of(st.integers(-2, 12), TAG_TEXT), st.integers(-1, 10**9), max_size=3),
    mcut=st.booleans(),
    separator=st.sampled_from([", ", "", "\n", "\u2028"]),
    order=st.sampled_from(["score", "category", "nope"]),
)
def test_any_selection(
    unicode_vocab: Vocabulary,
    threshold: float,
    topk: object,
    category_topk: dict,
    mcut: bool,
    separator: str,
    order: str,
) -> None:
    scores = np.linspace(0, 1, len(unicode_vocab), dtype=np.float32)
    try:
        selection = Selection(threshold=threshold, topk=topk, category_topk=category_topk, mcut=mcut)  # type: ignore[arg-type]
        tags = select_tags(scores, unicode_vocab, selection)
        text = tag_string(tags, order=order, separator=separator, prepend=["猫", "\\(x\\)"])
    except SelectionError as e:
        assert_sentence(str(e))
        return
    if selection.topk is not None:
        assert len(tags) <= selection.topk
    assert isinstance(text, str)


# ---------------------------------------------------------------------------------------------
# URLs: the address policy and the fetcher


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", False),
        ("127.255.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("169.254.1.1", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.0.8", False),
        ("198.18.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
        ("2001::1", False),  # Teredo
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("100.63.255.255", True),
        ("::ffff:8.8.8.8", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_address_policy(address: str, allowed: bool) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert (problem is None) == allowed, problem


REFUSED_URLS = [
    ("http://127.0.0.1:{port}/image.png", "loopback"),
    ("http://localhost:{port}/image.png", "loopback"),
    ("http://[::1]:{port}/image.png", "loopback"),
    ("http://10.0.0.1/image.png", "private"),
    ("http://192.168.0.1/image.png", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://100.64.0.1/image.png", "carrier-grade NAT"),
    ("http://[::ffff:127.0.0.1]:{port}/image.png", "loopback"),
    ("http://0.0.0.0:{port}/image.png", "unspecified"),
    ("http://2130706433/image.png", "loopback"),  # 127.0.0.1 as one number
    ("http://0x7f.1/image.png", "loopback"),
    ("file:///etc/passwd", "only http and https"),
    ("ftp://example.com/image.png", "only http and https"),
    ("gopher://127.0.0.1/", "only http and https"),
    ("http://user:secret@example.com/image.png", "user name or password"),
    ("http:///image.png", "no valid host"),
    ("http://example.com:99999/image.png", "not a valid URL"),
    ("http://example.com/" + "a" * 5000, "longer than"),
]


def test_refused_urls_do_not_connect(tmp_path: Path, local_server: LocalServer) -> None:
    for template, reason in REFUSED_URLS:
        url = template.format(port=local_server.port)
        with pytest.raises(FetchError) as info:
            fetch_url(url, tmp_path)
        assert reason in str(info.value), (url, str(info.value))
        assert_sentence(str(info.value))
    assert local_server.requests == [], "a refused URL reached the server"
    assert not any(tmp_path.iterdir()), "a refused fetch left files behind"


class LocalServer:
    """A loopback HTTP(S) server with a few behaviours, standing in for the internet."""

    def __init__(self, image: bytes, tls: ssl.SSLContext | None = None):
        self.image = image
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.sni: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Host", "")))
                with contextlib.suppress(OSError):  # the client hanging up is part of several tests
                    outer.respond(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment]
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def respond(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]

        def send(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            h.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(body)

        def redirect(location: str) -> None:
            send(302, headers={"Location": location})

        if path == "/image.png" or path == "/noname":
            send(200, self.image, {"Content-Type": "image/png"})
        elif path == "/redirect-ok":
            redirect("/image.png")
        elif path.startswith("/redirect-chain/"):
            n = int(path.rsplit("/", 1)[1])
            redirect(f"/redirect-chain/{n - 1}" if n > 0 else "/image.png")
        elif path == "/redirect-private":
            redirect("http://10.0.0.1/image.png")
        elif path == "/redirect-metadata":
            redirect("http://169.254.169.254/latest/meta-data/iam/")
        elif path == "/redirect-other-port":
            redirect(f"http://127.0.0.1:{self.port + 1 if self.port < 65535 else 1}/image.png")
        elif path == "/redirect-file":
            redirect("file:///etc/passwd")
        elif path == "/redirect-empty":
            send(302)
        elif path == "/big":  # no Content-Length: only counting the stream catches it
            h.send_response(200)
            h.send_header("Content-Type", "image/png")
            h.send_header("Connection", "close")
            h.end_headers()
            for _ in range(64):
                h.wfile.write(b"\0" * 65536)
        elif path == "/big-declared":
            h.send_response(200)
            h.send_header("Content-Length", str(10**12))
            h.end_headers()
        elif path == "/trickle":  # headers at once, then a byte every 0.1 s
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            for _ in range(100):
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.1)
        elif path == "/trickle-no-length":  # the end of the body is the end of the connection
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            for _ in range(100):
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.1)
        elif path == "/slow-headers":
            time.sleep(5)
            send(200, self.image)
        elif path == "/page":
            send(200, b"<html>a page</html>", {"Content-Type": "text/html; charset=utf-8"})
        elif path == "/empty":
            send(200, b"", {"Content-Type": "image/png"})
        elif path == "/short":  # declares more than it sends
            h.send_response(200)
            h.send_header("Content-Length", "5000")
            h.end_headers()
            h.wfile.write(self.image[:100])
        else:
            send(404, b"not found")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def image_bytes(good_image: Path) -> bytes:
    return good_image.read_bytes()


@pytest.fixture(scope="module")
def local_server(image_bytes: bytes) -> Iterator[LocalServer]:
    server = LocalServer(image_bytes)
    yield server
    server.close()


@pytest.fixture
def allow_server(monkeypatch: pytest.MonkeyPatch, local_server: LocalServer) -> LocalServer:
    """The address policy, except that the local server's own port on 127.0.0.1 counts as public."""
    local = ipaddress.ip_address("127.0.0.1")
    policy = fetch._is_allowed_address
    monkeypatch.setattr(
        fetch, "_is_allowed_address", lambda ip, port: (ip == local and port == local_server.port) or policy(ip, port)
    )
    local_server.requests.clear()
    return local_server


def test_fetch_downloads(allow_server: LocalServer, tmp_path: Path, image_bytes: bytes) -> None:
    path = fetch_url(allow_server.url("/image.png?size=large"), tmp_path)
    assert path.read_bytes() == image_bytes and path.name == "image.png"
    assert path.parent.parent == tmp_path
    assert allow_server.requests == [("/image.png?size=large", f"127.0.0.1:{allow_server.port}")]
    assert fetch_url(allow_server.url("/noname"), tmp_path).suffix == ".png"


def test_fetch_follows_allowed_redirects(allow_server: LocalServer, tmp_path: Path, image_bytes: bytes) -> None:
    assert fetch_url(allow_server.url("/redirect-ok"), tmp_path).read_bytes() == image_bytes
    assert fetch_url(allow_server.url("/redirect-chain/2"), tmp_path).read_bytes() == image_bytes  # 3 redirects


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/redirect-private", "redirected to http://10.0.0.1/image.png): 10.0.0.1 is not a public internet address"),
        ("/redirect-metadata", "cloud metadata service"),
        ("/redirect-other-port", "loopback"),
        ("/redirect-file", "redirects to file:///etc/passwd, and only http and https URLs are allowed"),
        ("/redirect-chain/3", "redirects more than 3 times"),
        ("/redirect-empty", "without saying where"),
        ("/big", "larger than the limit of 1 MB"),
        ("/big-declared", "larger than the limit of 1 MB"),
        ("/page", "web page, not an image"),
        ("/missing", "answered 404"),
        ("/empty", "empty file"),
        ("/short", "closed before the whole file arrived"),
    ],
)
def test_fetch_refuses(allow_server: LocalServer, tmp_path: Path, path: str, reason: str) -> None:
    with pytest.raises(FetchError) as info:
        fetch_url(allow_server.url(path), tmp_path, max_bytes=1024 * 1024)
    assert reason in str(info.value)
    assert_sentence(str(info.value))
    assert not any(tmp_path.iterdir()), "a failed fetch left files behind"


@pytest.mark.parametrize("path", ["/trickle", "/trickle-no-length", "/slow-headers"])
def test_fetch_total_time_limit(allow_server: LocalServer, tmp_path: Path, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"took longer than 0\.8 s"):
        fetch_url(allow_server.url(path), tmp_path, timeout=0.8)
    assert time.monotonic() - started < 3.0


class FakeDNS:
    """``socket.getaddrinfo`` with made-up answers for test names; others go to the real one."""

    def __init__(self, answers: dict[str, list[list[str]]]):
        self.answers = answers  # name → one list of addresses per successive lookup
        self.lookups: list[str] = []
        self.real = socket.getaddrinfo

    def __call__(self, host: str, port: object, *args: object, **kwargs: object) -> list:
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        self.lookups.append(host)
        answers = self.answers[host]
        addresses = answers[min(len(self.lookups) - 1, len(answers) - 1)]
        out = []
        for a in addresses:
            family = socket.AF_INET6 if ":" in a else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (a, port)))
        return out


def test_fetch_connects_to_the_checked_address(
    allow_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves once per hop; the connection uses that answer, the
    Host header the name. A later answer pointing inside is refused without naming it."""
    dns = FakeDNS({"tagger-test.invalid": [["127.0.0.1"], ["10.9.8.7"]]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    fetch_url(allow_server.url("/image.png", host="tagger-test.invalid"), tmp_path)
    assert dns.lookups == ["tagger-test.invalid"]
    assert allow_server.requests == [("/image.png", f"tagger-test.invalid:{allow_server.port}")]
    with pytest.raises(FetchError) as info:
        fetch_url(allow_server.url("/image.png", host="tagger-test.invalid"), tmp_path)
    assert "the host tagger-test.invalid is not a public internet address (private network)" in str(info.value)
    assert "10.9.8.7" not in str(info.value)
    assert len(allow_server.requests) == 1


def test_fetch_refuses_mixed_answers(
    allow_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({"mixed.invalid": [["127.0.0.1", "192.168.0.7"]]}))
    with pytest.raises(FetchError, match="private network"):
        fetch_url(allow_server.url("/image.png", host="mixed.invalid"), tmp_path)
    assert allow_server.requests == []


def test_fetch_unresolvable_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(FetchError, match="could not be resolved"):
        fetch_url("https://no-such-host.invalid/x.png", tmp_path)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=tagger-test.invalid",
        "-addext", "subjectAltName=DNS:tagger-test.invalid",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"openssl cannot make a test certificate: {e}")
    return cert, key


def test_fetch_https_keeps_sni_and_verifies(
    tls_files: tuple[Path, Path], image_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server = LocalServer(image_bytes, tls=server_tls)
    try:
        local = ipaddress.ip_address("127.0.0.1")
        monkeypatch.setattr(fetch, "_is_allowed_address", lambda ip, port: ip == local and port == server.port)
        monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({"tagger-test.invalid": [["127.0.0.1"]]}))
        trust = ssl.create_default_context(cafile=str(cert))
        url = server.url("/image.png", host="tagger-test.invalid", scheme="https")
        assert fetch_url(url, tmp_path, context=trust).read_bytes() == image_bytes
        assert server.sni == ["tagger-test.invalid"]
        assert server.requests == [("/image.png", f"tagger-test.invalid:{server.port}")]
        # The same server by its address: the certificate does not name it, so no download.
        with pytest.raises(FetchError, match="certificate could not be verified"):
            fetch_url(server.url("/image.png", scheme="https"), tmp_path, context=trust)
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# URLs through /tag (gradio_client's handle_file(url) sends {"path": url})


@pytest.mark.parametrize(("template", "reason"), [r for r in REFUSED_URLS if r[0].startswith("http")][:11])
def test_api_refuses_internal_urls(
    template: str, reason: str, client: Client, local_server: LocalServer, good_image: Path
) -> None:
    local_server.requests.clear()
    with pytest.raises(AppError) as info:
        call_tag(client, handle_file(template.format(port=local_server.port)))
    assert reason in info.value.message and info.value.message.startswith("Refused to download")
    assert_sentence(info.value.message)
    assert local_server.requests == []
    assert_serves(client, good_image)


def test_api_fetches_allowed_url(allow_server: LocalServer, client: Client, good_image: Path) -> None:
    fetched = call_tag(client, handle_file(allow_server.url("/redirect-ok")))
    uploaded = call_tag(client, handle_file(str(good_image)))
    assert_tags(fetched)
    assert fetched == uploaded  # same bytes, same tags
    assert [p for p, _ in allow_server.requests] == ["/redirect-ok", "/image.png"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/redirect-private", "10.0.0.1 is not a public internet address"),
        ("/redirect-metadata", "cloud metadata service"),
        ("/big", "larger than the limit of 1 MB"),
        ("/trickle", "took longer than 1 s"),
    ],
)
def test_api_url_limits(
    path: str,
    reason: str,
    allow_server: LocalServer,
    client: Client,
    good_image: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SafeFile, "max_download_bytes", 1024 * 1024)
    monkeypatch.setattr(SafeFile, "download_timeout", 1.0)
    started = time.monotonic()
    with pytest.raises(AppError) as info:
        call_tag(client, handle_file(allow_server.url(path)))
    assert reason in info.value.message, info.value.message
    assert_sentence(info.value.message)
    assert time.monotonic() - started < 10
    assert_serves(client, good_image)


# ---------------------------------------------------------------------------------------------
# Limits set on the app, and the inputs' own behaviour


def test_upload_size_limit(app: RunningApp, client: Client, good_image: Path, tmp_path: Path) -> None:
    limit = gr.utils._parse_file_size(MAX_FILE_SIZE)
    assert limit == 200 * 1024 * 1024
    assert client.config["max_file_size"] == limit
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.write(good_image.read_bytes())
        f.truncate(limit + 1)
    # gradio_client refuses before sending...
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        call_tag(client, handle_file(str(big)))
    # ...and the server refuses what another client sends, before keeping it.
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http, open(big, "rb") as f:
        response = http.post("gradio_api/upload", files={"files": ("big.png", f)})
    assert response.status_code == 413
    assert f"maximum allowed size of {limit} bytes" in response.text
    assert_serves(client, good_image)


def test_pixel_limit_message(client: Client, corpus_files: dict[str, Path]) -> None:
    with pytest.raises(AppError) as info:
        call_tag(client, handle_file(str(corpus_files["bomb_120mp.png"])))
    assert "more than the limit of 100,000,000 pixels" in info.value.message
    assert "'bomb_120mp.png'" in info.value.message


def test_inputs_render_as_stock_components(app: RunningApp) -> None:
    by_type = {type(b).__name__: b for b in app.demo.blocks.values()}
    assert by_type["SafeImage"].get_block_name() == "image"
    assert by_type["SafeFile"].get_block_name() == "file"
    config = {c["id"]: c for c in app.demo.config["components"]}
    assert config[by_type["SafeImage"]._id]["type"] == "image"
    assert config[by_type["SafeFile"]._id]["type"] == "file"


def test_every_file_input_downloads_safely(app: RunningApp) -> None:
    """Every Image/File input of the app is a Safe* one (else Gradio's downloader, with no size
    or time limit, would fetch URLs for it)."""
    inputs = {id(b): b for fn in app.demo.fns.values() for b in fn.inputs}.values()
    unsafe = sorted(
        f"{type(b).__name__} {b.label!r}"
        for b in inputs
        if isinstance(b, (gr.Image, gr.File)) and not isinstance(b, (SafeImage, SafeFile))
    )
    tag_inputs = [b for b in app.demo.blocks.values() if isinstance(b, (SafeImage, SafeFile))]
    assert len(tag_inputs) >= 2  # the Tag tab's image and /tag's file
    assert not unsafe, f"inputs still using Gradio's URL downloader: {', '.join(unsafe)}"


def test_image_input_hands_files_to_our_decoder(tmp_path: Path, corpus_files: dict[str, Path]) -> None:
    image = SafeImage(type="filepath", image_mode=None, render=False)
    # A non-image reaches our decoder (and its message) instead of Pillow's error in Gradio.
    path = str(corpus_files["page_renamed.jpg"])
    assert image.preprocess(ImageData(path=path, orig_name="page_renamed.jpg")) == path
    assert image.preprocess(None) is None


def test_image_input_data_urls(small_tagger: Tagger, monkeypatch: pytest.MonkeyPatch) -> None:
    image = SafeImage(type="filepath", image_mode=None, render=False)
    monkeypatch.setattr(SafeImage, "max_download_bytes", 4096)
    bomb = "data:image/png;base64," + base64.b64encode(png_declaring(30_000, 30_000)).decode()
    saved = image.preprocess(ImageData(url=bomb))
    assert Path(saved).read_bytes() == png_declaring(30_000, 30_000)  # stored, not decoded
    with pytest.raises(ImageError, match="decompression bomb"):
        small_tagger.prepare(saved)
    with pytest.raises(gr.Error, match="not valid base64"):
        image.preprocess(ImageData(url="data:image/png;base64,***"))
    with pytest.raises(gr.Error, match="larger than the limit"):
        image.preprocess(ImageData(url="data:image/png;base64," + "A" * 8192))


def test_file_input_leaves_no_stray_files(client: Client, good_image: Path) -> None:
    """Gradio's File.preprocess leaves an empty temporary file per request; ours does not."""
    cache = Path(gr.utils.get_upload_folder())

    def strays() -> set[Path]:
        return {p for p in cache.iterdir() if p.is_file() and p.name.startswith("tmp") and p.stat().st_size == 0}

    before = strays()
    for _ in range(3):
        assert_serves(client, good_image)
    assert strays() == before


def test_fetch_limits_match_the_app() -> None:
    assert gr.utils._parse_file_size(MAX_FILE_SIZE) >= fetch.MAX_DOWNLOAD_BYTES
    assert 0 < fetch.DOWNLOAD_TIMEOUT_S <= 30 and fetch.MAX_REDIRECTS == 3
    assert math.isfinite(SafeImage.download_timeout) and SafeFile.max_download_bytes == fetch.MAX_DOWNLOAD_BYTES
