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
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
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
from support import (
    ForwardPasses,
    assert_sentence,
    decode_in_fresh_process,
    encoded,
    image_bytes,
    random_image,
    write_zip,
)

import tagger.fetch as fetch
from tagger.datasets.intake import BatchLimits, collect_inputs, read_zip_directory
from tagger.engine.decode import ImageError, load_image
from tagger.engine.tagger import Tagger
from tagger.engine.vocab import CATEGORIES, Vocabulary
from tagger.errors import TimeBudgetError, UploadError
from tagger.fetch import FetchError, address_problem, fetch_url
from tagger.tags.formats import tag_string
from tagger.tags.options import MODES, OPTION_FIELDS, OPTION_NAMES, ORDERS, TagOptions
from tagger.tags.selection import Selection, SelectionError, select_tags
from tagger.web import gradio_compat
from tagger.web.inputs import SafeFile, SafeImage, _SafeDownloads
from tagger.web.server import MAX_FILE_SIZE

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from test apps

REQUEST_TIMEOUT_S = 60
# How our ImageError / FetchError sentences start (tagger.engine.decode, tagger.fetch, context).
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
    png, jpeg = encoded(rgb, "PNG"), encoded(rgb, "JPEG", quality=90)
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
        Case("1x1.png", encoded(Image.new("RGB", (1, 1), "red"), "PNG"), "ok"),
        Case("16x4000.png", encoded(rgb.resize((16, 4000)), "PNG"), "ok"),
        Case("4000x16.png", encoded(rgb.resize((4000, 16)), "PNG"), "ok"),
        Case("animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50), "ok"),
        Case("animated.png", encoded(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50), "ok"),
        Case("cmyk.jpg", encoded(rgb.convert("CMYK"), "JPEG"), "ok"),
        Case("16bit.png", encoded(Image.fromarray(rng.integers(0, 65536, (40, 50)).astype(np.uint16)), "PNG"), "ok"),
        Case("palette_alpha.png", encoded(rgb.convert("P", colors=16), "PNG", transparency=0), "ok"),
        Case("exif_rotated.jpg", encoded(rgb, "JPEG", exif=exif.tobytes()), "ok"),
        Case("grey.jpg", encoded(rgb.convert("L"), "JPEG"), "ok"),
        Case("bitmap.bmp", encoded(rgb, "BMP"), "ok"),
        Case("multipage.tif", encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "ok"),
        Case("icon.ico", encoded(rgb, "ICO", sizes=[(16, 16), (32, 32), (48, 48)]), "ok"),
        Case("1bit.png", encoded(rgb.convert("1"), "PNG"), "ok"),
        Case("la.png", encoded(rgb.convert("LA"), "PNG"), "ok"),
        Case("i16b.tif", encoded(i16b, "TIFF"), "ok"),
        Case("float.tif", encoded(Image.fromarray(rng.random((20, 30), dtype=np.float32)), "TIFF"), "ok"),
        Case("int32.tif", encoded(int32, "TIFF"), "ok"),
        Case("ppm16.ppm", b"P6 8 4 65535\n" + rng.integers(0, 256, 8 * 4 * 6, dtype=np.uint8).tobytes(), "ok"),
        Case("targa.tga", encoded(rgb, "TGA"), "ok"),
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
        webp_frames = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
        cases += [
            Case("animated.webp", webp_frames, "ok"),
            Case("alpha.webp", encoded(rgb.convert("RGBA"), "WEBP", lossless=True), "ok"),
        ]
    return cases


CORPUS = build_corpus()
CASE_IDS = [c.name.encode("ascii", "replace").decode() for c in CORPUS]


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
        assert pixels.dtype == torch.uint8 and pixels.ndim == 3 and pixels.shape[0] == 3
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
    assert event == "error", message
    assert isinstance(message, str), message
    assert_sentence(message)
    assert_serves(client, good_image)


def test_calls_leave_no_event_analytics(app: RunningApp, client: Client, good_image: Path, tmp_path: Path) -> None:
    """Gradio rebuilds a pandas summary of every recorded event after each call (twice after a
    failed one) for a dashboard this app does not serve: native memory that grew with every
    refused call. The queue keeps one record, builds no summary, and the dashboard is off."""
    not_an_image = tmp_path / "x.png"
    not_an_image.write_bytes(b"not an image")
    for _ in range(3):
        with pytest.raises(AppError):
            client.predict(handle_file(str(not_an_image)), api_name="/tag")
        assert_serves(client, good_image)
    queue = gradio_compat.app_queue(app.demo)
    assert len(queue.event_analytics) <= 1
    assert queue.cached_event_analytics_summary == {"functions": {}}
    assert httpx.get(f"{app.url}monitoring/summary", timeout=REQUEST_TIMEOUT_S).status_code == 403


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
            source = encoded(image, encoding)
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


@pytest.mark.parametrize(
    ("address", "local_ok"),
    [
        ("127.0.0.1", True),  # a server on the user's own machine
        ("192.168.1.20", True),  # a NAS
        ("10.0.0.5", True),
        ("::1", True),
        ("fe80::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("8.8.8.8", True),
    ],
)
def test_cli_policy_allows_the_users_own_network(address: str, local_ok: bool) -> None:
    """The CLI's user owns the machine (``local_network_too``); the web app stays public-only."""
    ip = ipaddress.ip_address(address)
    assert (fetch.local_network_too(ip, 80) is None) == local_ok
    if ip.is_private or ip.is_loopback:
        assert fetch.public_only(ip, 80) is not None
    assert SafeFile.address_policy is fetch.public_only and SafeImage.address_policy is fetch.public_only


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


def trickle(h: http.server.BaseHTTPRequestHandler, header: str, value: str) -> None:
    """Headers (200 and ``header``) at once, then a byte of body every 0.1 s for 10 s."""
    h.send_response(200)
    h.send_header(header, value)
    h.end_headers()
    for _ in range(100):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.1)


class LocalServer:
    """A loopback HTTP(S) server with a few behaviours, standing in for the internet."""

    def __init__(self, image: bytes, tls: ssl.SSLContext | None = None):
        self.image = image
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.sni: list[str | None] = []
        self.policy: fetch.AddressPolicy = fetch.public_only  # set by the allow_server fixture
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
            trickle(h, "Content-Length", "1000")
        elif path == "/trickle-no-length":  # the end of the body is the end of the connection
            trickle(h, "Connection", "close")
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
def good_bytes(good_image: Path) -> bytes:
    return good_image.read_bytes()


@pytest.fixture(scope="module")
def local_server(good_bytes: bytes) -> Iterator[LocalServer]:
    server = LocalServer(good_bytes)
    yield server
    server.close()


def allowing(port: int) -> fetch.AddressPolicy:
    """The public-only policy, except that ``port`` on 127.0.0.1 (a test server) counts as public."""
    local = ipaddress.ip_address("127.0.0.1")
    return lambda ip, p: None if (ip == local and p == port) else fetch.public_only(ip, p)


@pytest.fixture
def allow_server(monkeypatch: pytest.MonkeyPatch, local_server: LocalServer) -> LocalServer:
    """The app's inputs fetch with a policy that lets the local server's own port through;
    direct ``fetch_url`` calls pass ``policy=allow_server.policy``."""
    local_server.policy = allowing(local_server.port)
    monkeypatch.setattr(_SafeDownloads, "address_policy", staticmethod(local_server.policy))
    local_server.requests.clear()
    return local_server


def test_fetch_downloads(allow_server: LocalServer, tmp_path: Path, good_bytes: bytes) -> None:
    path = fetch_url(allow_server.url("/image.png?size=large"), tmp_path, policy=allow_server.policy)
    assert path.read_bytes() == good_bytes and path.name == "image.png"
    assert path.parent.parent == tmp_path
    assert allow_server.requests == [("/image.png?size=large", f"127.0.0.1:{allow_server.port}")]
    assert fetch_url(allow_server.url("/noname"), tmp_path, policy=allow_server.policy).suffix == ".png"


def test_fetch_follows_allowed_redirects(allow_server: LocalServer, tmp_path: Path, good_bytes: bytes) -> None:
    assert fetch_url(allow_server.url("/redirect-ok"), tmp_path, policy=allow_server.policy).read_bytes() == good_bytes
    assert (
        fetch_url(allow_server.url("/redirect-chain/2"), tmp_path, policy=allow_server.policy).read_bytes()
        == good_bytes
    )  # 3 redirects


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/redirect-private", "redirected to http://10.0.0.1/image.png): 10.0.0.1 is not a public internet address"),
        ("/redirect-metadata", "cloud metadata service"),
        ("/redirect-other-port", "loopback"),
        ("/redirect-file", "redirects to file:///etc/passwd, and only http and https URLs are allowed"),
        ("/redirect-chain/3", "redirects more than 3 times"),
        ("/redirect-empty", "without saying where"),
        ("/big", "larger than the limit of 1 MiB"),
        ("/big-declared", "larger than the limit of 1 MiB"),
        ("/page", "web page, not an image"),
        ("/missing", "answered 404"),
        ("/empty", "empty file"),
        ("/short", "closed before the whole file arrived"),
    ],
)
def test_fetch_refuses(allow_server: LocalServer, tmp_path: Path, path: str, reason: str) -> None:
    with pytest.raises(FetchError) as info:
        fetch_url(allow_server.url(path), tmp_path, max_bytes=1024 * 1024, policy=allow_server.policy)
    assert reason in str(info.value)
    assert_sentence(str(info.value))
    assert not any(tmp_path.iterdir()), "a failed fetch left files behind"


@pytest.mark.parametrize("path", ["/trickle", "/trickle-no-length", "/slow-headers"])
def test_fetch_total_time_limit(allow_server: LocalServer, tmp_path: Path, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"took longer than 0\.8 s"):
        fetch_url(allow_server.url(path), tmp_path, timeout=0.8, policy=allow_server.policy)
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
    fetch_url(allow_server.url("/image.png", host="tagger-test.invalid"), tmp_path, policy=allow_server.policy)
    assert dns.lookups == ["tagger-test.invalid"]
    assert allow_server.requests == [("/image.png", f"tagger-test.invalid:{allow_server.port}")]
    with pytest.raises(FetchError) as info:
        fetch_url(allow_server.url("/image.png", host="tagger-test.invalid"), tmp_path, policy=allow_server.policy)
    assert "the host tagger-test.invalid is not a public internet address (private network)" in str(info.value)
    assert "10.9.8.7" not in str(info.value)
    assert len(allow_server.requests) == 1


def test_fetch_refuses_mixed_answers(
    allow_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({"mixed.invalid": [["127.0.0.1", "192.168.0.7"]]}))
    with pytest.raises(FetchError, match="private network"):
        fetch_url(allow_server.url("/image.png", host="mixed.invalid"), tmp_path, policy=allow_server.policy)
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
    tls_files: tuple[Path, Path], good_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server = LocalServer(good_bytes, tls=server_tls)
    try:
        policy = allowing(server.port)
        monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({"tagger-test.invalid": [["127.0.0.1"]]}))
        trust = ssl.create_default_context(cafile=str(cert))
        url = server.url("/image.png", host="tagger-test.invalid", scheme="https")
        assert fetch_url(url, tmp_path, context=trust, policy=policy).read_bytes() == good_bytes
        assert server.sni == ["tagger-test.invalid"]
        assert server.requests == [("/image.png", f"tagger-test.invalid:{server.port}")]
        # The same server by its address: the certificate does not name it, so no download.
        with pytest.raises(FetchError, match="certificate could not be verified"):
            fetch_url(server.url("/image.png", scheme="https"), tmp_path, context=trust, policy=policy)
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


def test_refused_urls_log_one_line(
    client: Client, local_server: LocalServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A refused URL is an expected refusal: one line in the log each, no traceback."""
    caplog.set_level("INFO")
    capfd.readouterr()
    for _ in range(3):
        with pytest.raises(AppError):
            call_tag(client, handle_file(f"http://127.0.0.1:{local_server.port}/image.png"))
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    refused = [r for r in caplog.records if "Refused" in r.getMessage()]
    assert len(refused) == 3 and not any(r.exc_info for r in caplog.records)
    assert all("\n" not in r.getMessage() for r in refused)


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
        ("/big", "larger than the limit of 1 MiB"),
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
    assert "more than this Space's limit of 40,000,000 pixels" in info.value.message
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
    with pytest.raises(gr.Error, match="900,000,000 pixels, more than this Space's limit"):  # from the header
        image.preprocess(ImageData(url=bomb))
    small = "data:image/png;base64," + base64.b64encode(png_declaring(64, 48)).decode()
    saved = image.preprocess(ImageData(url=small))
    assert Path(saved).read_bytes() == png_declaring(64, 48)  # stored, not decoded here
    with pytest.raises(ImageError, match="truncated or corrupt"):
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


# ---------------------------------------------------------------------------------------------
# Zips refused from their directory, before zipfile builds an object per entry


def zip_end_records(entries: int, directory_size: int, directory_offset: int, zip64: bool) -> bytes:
    """End-of-central-directory records declaring ``entries`` in ``directory_size`` bytes."""
    if not zip64:
        return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, directory_size, directory_offset, 0)
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, directory_size, directory_offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, directory_offset + directory_size, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return record + locator + end


def zip_with_names(path: Path, names: list[str]) -> Path:
    return write_zip(path, dict.fromkeys(names, b"x"))


def with_end_records(path: Path, zip64: bool) -> Path:
    """Rewrite a zip's end record as ``zip_end_records`` writes it (zip64 or not)."""
    data = path.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    _, _, _, _, entries, size, offset, _ = struct.unpack_from("<4s4H2LH", data, end)
    path.write_bytes(data[:end] + zip_end_records(entries, size, offset, zip64))
    return path


def many_entry_zip(path: Path, count: int, declared: int | None = None) -> Path:
    """``count`` empty stored entries; the end record may declare another number."""
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(count):
            archive.writestr(zipfile.ZipInfo(f"{i:x}"), b"")
    if declared is not None:
        data = bytearray(path.read_bytes())
        end = data.rindex(b"PK\x05\x06")
        struct.pack_into("<2H", data, end + 8, declared, declared)
        path.write_bytes(bytes(data))
    return path


def refusal(paths: list[Path]) -> tuple[str, float]:
    """``collect_inputs``'s refusal of ``paths`` and the seconds it took."""
    started = time.perf_counter()
    with pytest.raises(UploadError) as info:
        collect_inputs([str(p) for p in paths], BatchLimits())
    return str(info.value), time.perf_counter() - started


ZIP_REFUSAL_S = 1.0  # issue 11: any refusal within a second


@pytest.mark.parametrize("zip64", [False, True])
def test_zip_refused_from_its_end_record(tmp_path: Path, zip64: bool) -> None:
    """3.9 M declared entries in a 199 MB directory: refused from the last bytes of the file."""
    entries = 3_900_000 if zip64 else 60_000
    path = tmp_path / "huge_directory.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(100) + zip_end_records(entries, 199_000_000, 104, zip64))
    message, seconds = refusal([path])
    assert f"has {entries:,} entries; the limit is 10,000" in message
    assert_sentence(message)
    assert seconds < ZIP_REFUSAL_S


def test_zip_directory_size_refused(tmp_path: Path) -> None:
    path = tmp_path / "big_directory.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(100) + zip_end_records(9_000, 30 * 1024 * 1024, 104, zip64=True))
    message, seconds = refusal([path])
    assert "lists its entries in 30.0 MiB; the limit is 8 MiB" in message
    assert seconds < ZIP_REFUSAL_S


@pytest.mark.parametrize("declared", [None, 5])
def test_zip_entry_count_is_walked_not_trusted(tmp_path: Path, declared: int | None) -> None:
    """12,000 real entries, declared truthfully or as 5: refused either way, fast."""
    path = many_entry_zip(tmp_path / "many.zip", 12_000, declared)
    message, seconds = refusal([path])
    assert "12,000 entries; the limit is 10,000" in message or "more than 10,000 entries" in message
    assert seconds < ZIP_REFUSAL_S


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["a.png", "b" * 30_000 + ".png"], "entry 2 has a name of 30,004 bytes; the limit is 1,024"),
        (["d/" * 40 + "deep.png"], "entry 1 lies more than 32 folders deep"),
    ],
)
def test_zip_names_capped(tmp_path: Path, names: list[str], expected: str) -> None:
    message, seconds = refusal([zip_with_names(tmp_path / "names.zip", names)])
    assert expected in message, message
    assert_sentence(message)
    assert seconds < ZIP_REFUSAL_S


def test_thousand_long_names_refused_fast(tmp_path: Path) -> None:
    """1,000 members with 30 KB names (a 30 MB directory): refused from the end record."""
    path = zip_with_names(tmp_path / "long.zip", [f"{i:04d}" + "n" * 30_000 + ".png" for i in range(1_000)])
    message, seconds = refusal([path])
    assert "lists its entries in" in message
    assert seconds < ZIP_REFUSAL_S


def test_zip_member_name_not_utf8(tmp_path: Path) -> None:
    """A name flagged as UTF-8 that is not (zipfile raises UnicodeDecodeError): a sentence."""
    path = zip_with_names(tmp_path / "latin1.zip", ["caf\u00e9.png"])  # written as UTF-8, flagged
    path.write_bytes(path.read_bytes().replace("caf\u00e9".encode(), b"caf\xe9!"))  # same length, not UTF-8
    message, _ = refusal([path])
    assert "is marked as UTF-8 but is not valid UTF-8" in message and "caf" in message
    assert_sentence(message)


def test_zip_directory_reader_agrees_with_zipfile(tmp_path: Path, make_image) -> None:
    image = encoded(make_image(8, 8), "PNG")
    plain, forced64 = tmp_path / "plain.zip", tmp_path / "zip64.zip"
    for path in (plain, forced64):
        with zipfile.ZipFile(path, "w") as archive:
            for i in range(3):
                archive.writestr(f"x/{i}.png", image)
            archive.comment = b"a comment after the end record"
    with_end_records(forced64, zip64=True)
    for path in (plain, forced64):
        with open(path, "rb") as fp:
            directory = read_zip_directory(fp)
        with zipfile.ZipFile(path) as archive:
            assert directory is not None and directory.entries == len(archive.infolist()) == 3
            assert directory.start == archive.start_dir
    with collect_inputs([str(plain), str(forced64)], BatchLimits()) as inputs:
        assert len(inputs) == 6


# ---------------------------------------------------------------------------------------------
# Zip slip, links and bombs: refused by everything that reads an uploaded zip, before the model


ZIP_READERS = ["batch", "similarity", "/tag_batch", "/similarity_batch"]  # engine calls, then endpoints


def refuse_zip(
    reader: str,
    archive: Path,
    tagger: Tagger,
    app: RunningApp,
    client: Client,
    count_passes: Callable[[Tagger], ForwardPasses],
) -> str:
    """The sentence with which ``reader`` refuses ``archive``; the model runs no pass for it."""
    from tagger.datasets.batch import run_batch
    from tagger.features.similarity import batch_similarity

    counted = count_passes(app.context.tagger if reader.startswith("/") else tagger)
    if reader == "batch":
        with pytest.raises(UploadError) as refused:
            run_batch([archive], prepare=tagger.prepare, run=tagger.run, vocab=tagger.vocab, options=TagOptions())
        message = str(refused.value)
    elif reader == "similarity":
        with pytest.raises(UploadError) as refused:
            batch_similarity(archive, tagger.prepare, tagger.run_descriptors)
        message = str(refused.value)
    else:
        upload = handle_file(str(archive))
        arguments = {"files": [upload]} if reader == "/tag_batch" else {"archive": upload}
        with pytest.raises(AppError) as failed:
            client.predict(**arguments, api_name=reader)
        message = failed.value.message
    assert counted.passes == 0
    assert_sentence(message)
    return message


def pairs(**more: bytes) -> dict[str, bytes]:
    """Two folders with one image each (a valid similarity upload), and ``more`` entries."""
    image = image_bytes(32, 32)
    return {"a/x.png": image, "b/x.png": image, **more}


@pytest.mark.parametrize("reader", ZIP_READERS)
@pytest.mark.parametrize(
    "name",
    ["../evil.png", "/etc/evil.png", "C:/evil.png", "c:evil.png", "a/../../evil.png", "..\\evil.png", "\\abs.png"],
)
def test_zip_slip_is_refused(reader: str, name: str, tmp_path: Path, small_tagger, app, client, count_passes) -> None:
    archive = write_zip(tmp_path / "slip.zip", pairs())
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(zipfile.ZipInfo(name), image_bytes(32, 32, seed=2))  # ZipInfo keeps the name as given
    message = refuse_zip(reader, archive, small_tagger, app, client, count_passes)
    assert re.search(r"Refused the archive: the entry .*(absolute path|outside the archive)", message), message


@pytest.mark.parametrize("reader", ZIP_READERS)
def test_zip_symlinks_are_refused(reader: str, tmp_path: Path, small_tagger, app, client, count_passes) -> None:
    archive = write_zip(tmp_path / "link.zip", pairs())
    link = zipfile.ZipInfo("a/link.png")
    link.create_system = 3  # Unix
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(link, "/etc/passwd")
    assert "symbolic link" in refuse_zip(reader, archive, small_tagger, app, client, count_passes)


@pytest.mark.parametrize("reader", ZIP_READERS)
def test_zip_bombs_are_refused(reader: str, tmp_path: Path, small_tagger, app, client, count_passes) -> None:
    """8 MiB of zeros in a few KB: under the size limit, the compression ratio gives it away."""
    archive = write_zip(tmp_path / "bomb.zip", pairs(**{"b/y.png": b"\x00" * (8 << 20)}))
    assert archive.stat().st_size < 64 << 10
    message = refuse_zip(reader, archive, small_tagger, app, client, count_passes)
    assert re.search(r"compressed [\d,]+:1, more than the limit of 200:1 .*zip bomb", message), message


# ---------------------------------------------------------------------------------------------
# Gradio's /file= route never downloads for anyone


@pytest.fixture
def no_gradio_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Gradio's own URL streamer, replaced so that a regression shows as a call, never as
    traffic (it resolves names through a public DNS-over-HTTPS service)."""
    import gradio.routes

    calls: list[str] = []

    async def fake(url: str, *args: object, **kwargs: object) -> object:
        calls.append(url)
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("fetched")

    monkeypatch.setattr(gradio.routes, "secure_url_stream_response", fake)
    return calls


@pytest.mark.parametrize(
    "target",
    [
        "http://{host}/image.png",
        "HTTPS://{host}/image.png",
        "//{host}/image.png",
        "http%3A%2F%2F{host}%2Fimage.png",
        "http:%2F%2F100.64.0.1/latest/meta-data",
        "file:///etc/passwd",
    ],
)
def test_file_route_refuses_remote_urls(
    target: str, app: RunningApp, local_server: LocalServer, no_gradio_downloads: list[str]
) -> None:
    local_server.requests.clear()
    address = target.format(host=f"127.0.0.1:{local_server.port}")
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        for method in ("GET", "HEAD"):
            response = http.request(method, f"gradio_api/file={address}")
            assert response.status_code == 403, (method, response.text)
        assert "serves only its own files" in http.get(f"gradio_api/file={address}").json()["detail"]
        assert http.get(f"gradio_api/proxy=http://127.0.0.1:{local_server.port}/x").status_code == 403
    assert local_server.requests == [] and no_gradio_downloads == []


def test_file_route_still_serves_local_files(app: RunningApp) -> None:
    example = sorted(Path(app.context.examples[0]).parent.glob("*.jpg"))[0] if app.context.examples else None
    if example is None:
        pytest.skip("no example images")
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.get(f"gradio_api/file={example}")
    assert response.status_code == 200 and response.content == example.read_bytes()


# ---------------------------------------------------------------------------------------------
# Bodies, uploads and arguments


def test_json_body_cap(app: RunningApp, client: Client, good_image: Path) -> None:
    big = b'{"data": ["' + b"x" * (2 * 1024 * 1024) + b'"]}'
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        declared = http.post("gradio_api/call/tag", content=big, headers={"Content-Type": "application/json"})
        streamed = http.post(
            "gradio_api/call/tag",
            content=(big[i : i + 65536] for i in range(0, len(big), 65536)),  # chunked: no Content-Length
            headers={"Content-Type": "application/json"},
        )
    assert declared.status_code == 413 and "the limit is 1 MiB" in declared.json()["detail"]
    assert streamed.status_code == 413 and "larger than the limit of 1 MiB" in streamed.json()["detail"]
    assert_serves(client, good_image)


def test_upload_with_empty_filename(app: RunningApp, client: Client, good_image: Path) -> None:
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post("gradio_api/upload", files={"files": ("", good_image.read_bytes())})
    assert response.status_code == 400
    assert_sentence(response.json()["detail"])
    assert_serves(client, good_image)


def uploaded(app: RunningApp, path: Path) -> dict:
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http, open(path, "rb") as f:
        name = http.post("gradio_api/upload", files={"files": (path.name, f)}).json()[0]
    # Gradio moves the upload into place after answering; on a busy machine, wait for it.
    wait_for(lambda: Path(name).exists(), 10)
    return {"path": name, "meta": {"_type": "gradio.FileData"}}


def wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# The values after the file(s): the options in declaration order (index 7 is `exclude`), then max_size.
TAG_DEFAULTS = [*(f.default for f in OPTION_FIELDS), 512]
BATCH_DEFAULTS = [*(["general"] if f.name == "categories" else f.default for f in OPTION_FIELDS), 512]
assert OPTION_NAMES[7] == "exclude"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "missing_parameters",
            f"This endpoint takes {2 + len(OPTION_FIELDS)} values",
        ),  # the image, the options, max_size
        ("file_not_a_dict", "Send files as uploads"),
        ("relative_path", "was not uploaded to this Space"),
        ("batch_topk_nan", "topk_per_category must be a whole number of 0 or more, not nan"),
        ("pca_null_colour", "None is not a colour"),
        ("exclude_huge", "'exclude' is 400,000 characters long; the limit is 10,000"),
        ("tag_string_huge", "'exclude' is 400,000 characters long"),
    ],
)
def test_raw_calls_get_sentences(case: str, expected: str, app: RunningApp, client: Client, good_image: Path) -> None:
    """Malformed raw API calls: a sentence each, never a repr with an address, a pydantic dump,
    a server path or a 10 MB echo."""
    image = uploaded(app, good_image)
    api, data = {
        "missing_parameters": ("tag", []),
        "file_not_a_dict": ("tag", [{"path": 5, "meta": {"_type": "gradio.FileData"}}, *TAG_DEFAULTS]),
        "relative_path": ("tag", [{"path": "x/../x.png", "meta": {"_type": "gradio.FileData"}}, *TAG_DEFAULTS]),
        "batch_topk_nan": ("tag_batch", [[image], "topk", 0.35, 0.85, float("nan"), *BATCH_DEFAULTS[4:]]),
        "pca_null_colour": ("pca", [image, None, "#00ff00", "#0000ff", 0.5, "nearest", 512]),
        "exclude_huge": ("tag", [image, *TAG_DEFAULTS[:7], "x," * 200_000, *TAG_DEFAULTS[8:]]),
        "tag_string_huge": ("tag_batch", [[image], *BATCH_DEFAULTS[:7], "x," * 200_000, *BATCH_DEFAULTS[8:]]),
    }[case]
    body = json.dumps({"data": data}, allow_nan=True)
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        started = http.post(f"gradio_api/call/{api}", content=body, headers={"Content-Type": "application/json"})
        assert started.status_code == 200, started.text
        stream = http.get(f"gradio_api/call/{api}/{started.json()['event_id']}").text
    assert re.findall(r"^event: (\w+)$", stream, re.M)[-1] == "error"
    message = json.loads(re.findall(r"^data: (.*)$", stream, re.M)[-1])["error"]
    assert expected in message, message
    assert_sentence(message, gr.utils.get_upload_folder())
    assert " at 0x" not in message and "validation error" not in message.lower()
    assert os.getcwd() not in message
    assert_serves(client, good_image)


def test_echoed_values_are_shortened() -> None:
    from tagger.errors import shorten
    from tagger.tags.options import parse_category_values

    with pytest.raises(SelectionError) as info:
        parse_category_values("artist 0.5" + "x" * 9_000)
    assert len(shorten(str(info.value))) <= 500 and shorten(str(info.value)).endswith("…")


def test_heatmap_depth_is_capped() -> None:
    from tagger.features.relevance import MAX_LAYERS_FROM_END, tap_block

    assert MAX_LAYERS_FROM_END == 8
    assert tap_block(32, 8) == 24
    with pytest.raises(Exception, match=r"between 2 and 8 .*deeper taps cost too much memory"):
        tap_block(32, 9)


def test_cache_is_cleaned_within_the_hour(app: RunningApp) -> None:
    from tagger.web.server import CACHE_CLEANUP

    every, older_than = CACHE_CLEANUP
    assert app.demo.delete_cache == CACHE_CLEANUP
    assert every <= 600 and older_than <= 3600


def test_a_restart_removes_what_an_earlier_run_left(tmp_path: Path) -> None:
    """What a killed or crashed run left in the cache folder (a partial upload, an upload, a
    result) is removed when the app starts again with the same folder; the new run's own
    files stay."""
    cache = tmp_path / "cache"
    left = [cache / "tmpq1w2e3r4", cache / ("ab" * 32) / "photo.png", cache / "result-x" / "pca.png"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 100_000)
    root = Path(__file__).resolve().parent.parent
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']\n"
        "from app_server import start_app\n"
        "import gradio as gr, os\n"
        "app = start_app(['--demo'])\n"
        "kept = {p for b in app.demo.blocks.values() for p in getattr(b, 'keep_in_cache', ())}\n"
        "print('KEPT', len(kept), all(os.path.exists(p) for p in kept))\n"
        "app.close()\n"
    )
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (kept,) = [line.split() for line in done.stdout.splitlines() if line.startswith("KEPT ")]
    assert int(kept[1]) > 0 and kept[2] == "True"  # the new run's example images are there
    assert not [p for p in left if p.exists()]
    assert "Removed 3 files (300000 bytes) left in" in done.stderr


def test_a_running_instance_keeps_its_files(tmp_path: Path) -> None:
    """A second instance on the same folder removes only what is past the cleanup age; a
    scheduled sweep removes what is past it, whoever wrote it, except the kept files."""
    from tagger.web.tempfiles import CacheKeeper, FolderClaim, sweep

    cache = tmp_path / "cache"
    young, example = cache / "tmpyoung", cache / "examples" / "cat.webp"
    example.parent.mkdir(parents=True)
    for path in (young, example):
        path.write_bytes(b"x")
    outside = tmp_path / "private.txt"
    outside.write_bytes(b"secret")
    (cache / "link").symlink_to(outside)
    first, second = FolderClaim(cache), FolderClaim(cache)
    try:
        assert first.take() is True
        assert second.take() is False  # the first is running
        keeper = CacheKeeper(cache, 600, 3600, kept=lambda: {str(example)})
        assert keeper.at_start(alone=False).paths == []  # nothing past the age
        assert young.exists()
        removed = sweep(cache, older_than=0, keep={str(example)})
        assert sorted(Path(p).name for p in removed.paths) == ["link", "tmpyoung"]
        assert example.exists() and outside.read_bytes() == b"secret"  # the link was not followed
    finally:
        first.release()
        second.release()


def test_the_scheduled_sweep_forgets_files_removed_meanwhile(tmp_path: Path) -> None:
    """The app's lists of the files it wrote do not grow with files already removed (a finished
    MCP call's, a refused upload's): the scheduled sweep drops them, and keeps live ones."""
    from tagger.web.tempfiles import CacheKeeper

    cache = tmp_path / "cache"
    cache.mkdir()
    live, gone = cache / "live.png", cache / "gone.png"
    live.write_bytes(b"x")
    registered = {str(live), str(gone)}
    keeper = CacheKeeper(
        cache, 600, 3600, kept=frozenset, written=lambda: set(registered), forget=registered.difference_update
    )
    keeper.on_schedule()
    assert registered == {str(live)} and live.exists()


# ---------------------------------------------------------------------------------------------
# Decoding cost: fitted decoding is the reference resize, in bounded memory


def _reference(data: bytes, fit: object = None) -> np.ndarray:
    """The reference rule, whole-image: decode, RGB, upright, then one Lanczos resize."""
    from tagger.engine.decode import _ORIENTATION_FIX, to_rgb

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        orientation = image.getexif().get(0x0112, 1)
        rgb = to_rgb(image)
    fix = _ORIENTATION_FIX.get(orientation)
    if fix is not None:
        rgb = rgb.transpose(fix)
    if fit is not None:
        rgb = rgb.resize(fit(*rgb.size), Image.Resampling.LANCZOS)  # type: ignore[operator]
    return np.asarray(rgb)


def _shrunk_reference(data: bytes, fit: Callable[[int, int], tuple[int, int]], margin: int) -> np.ndarray:
    """The web app's rule for formats the decoder cannot shrink: the whole upright RGB image
    box-averaged once by whole factors keeping ``margin`` pixels per output pixel, then Lanczos."""
    rgb = Image.fromarray(_reference(data))
    width, height = rgb.size
    target = fit(width, height)
    fx, fy = (max(1, n // (out * margin)) for n, out in zip(rgb.size, target, strict=True))
    fx, fy = (f if f >= 2 else 1 for f in (fx, fy))
    reduced = rgb.reduce((fx, fy))
    return np.asarray(reduced.resize(target, Image.Resampling.LANCZOS, box=(0, 0, width / fx, height / fy)))


def _mode_image(mode: str, width: int, height: int, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if mode == "RGBA":
        return Image.fromarray(rgba, "RGBA"), "PNG", {}
    if mode == "P+alpha":
        return Image.fromarray(rgba[..., :3]).convert("P", colors=50), "PNG", {"transparency": 3}
    if mode == "LA":
        return Image.fromarray(rgba, "RGBA").convert("LA"), "PNG", {}
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(np.uint16)), "PNG", {}
    if mode == "I":
        return Image.fromarray(rng.integers(-70_000, 70_000, (height, width)).astype(np.int32)), "TIFF", {}
    if mode == "F":
        return Image.fromarray(rng.random((height, width)).astype(np.float32)), "TIFF", {}
    if mode == "CMYK":
        return Image.fromarray(rgba[..., :3]).convert("CMYK"), "TIFF", {}
    return Image.fromarray(rgba[..., :3]), "PNG", {}


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+alpha", "LA", "I;16", "I", "F", "CMYK"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8, 5])
def test_fitted_decoding_is_the_reference_resize(mode: str, orientation: int, monkeypatch: pytest.MonkeyPatch):
    """Converting and shrinking band by band gives exactly the pixels of converting the whole
    image and resizing it once, in every orientation (bands forced small here)."""
    import tagger.engine.decode as pp
    from tagger.engine.preprocess import target_size

    monkeypatch.setattr(pp, "BAND_PIXELS", 997)
    rng = np.random.default_rng(orientation)
    for width, height in [(97, 61), (300, 41), (16, 700)]:
        image, fmt, options = _mode_image(mode, width, height, rng)
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encoded(image, fmt, exif=exif.tobytes(), **options)
        for max_size in (64, 1024):
            fit = lambda w, h, m=max_size: target_size(w, h, m, 16)  # noqa: E731
            assert np.array_equal(np.asarray(load_image(data, fit=fit)), _reference(data, fit))
        assert np.array_equal(np.asarray(load_image(data)), _reference(data))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+alpha", "I;16", "F"])
@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_shrunk_decoding_is_one_box_reduce_then_the_resize(
    mode: str, orientation: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web app's decode of a format the decoder cannot shrink (PNG, TIFF, ...): band by
    band it gives exactly one box reduce of the whole image, then the Lanczos resize; off by
    default; within a few levels of the exact resize on a photo."""
    import tagger.engine.decode as pp
    from tagger.engine.preprocess import target_size

    monkeypatch.setattr(pp, "BAND_PIXELS", 997)
    rng = np.random.default_rng(orientation)
    fit = lambda w, h: target_size(w, h, 32, 16)  # noqa: E731
    for width, height in [(700, 203), (205, 640), (97, 61)]:  # box factors (7, 4), (4, 6) and none
        image, fmt, options = _mode_image(mode, width, height, rng)
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encoded(image, fmt, exif=exif.tobytes(), **options)
        shrunk = np.asarray(load_image(data, fit=fit, reduced_decode=True))
        assert np.array_equal(shrunk, _shrunk_reference(data, fit, pp.REDUCED_DECODE_MARGIN)), (width, height)
        assert np.array_equal(np.asarray(load_image(data, fit=fit)), _reference(data, fit))  # off by default

    photo = Image.open(Path(__file__).resolve().parent.parent / "examples" / "astronaut.jpg").convert("RGB")
    data = encoded(photo.resize((6200, 4000), Image.Resampling.BICUBIC), "PNG", compress_level=1)
    fit = lambda w, h: target_size(w, h, 1024, 16)  # noqa: E731
    exact = np.asarray(load_image(data, fit=fit), dtype=np.int16)
    diff = np.abs(np.asarray(load_image(data, fit=fit, reduced_decode=True), dtype=np.int16) - exact)
    assert 0 < diff.max() <= 4 and diff.mean() < 0.3, (diff.max(), diff.mean())


@pytest.mark.parametrize("name", ["palette_alpha.png", "rgba.png", "grey16.png"])
def test_decoding_memory_is_bounded(name: str, tmp_path: Path) -> None:
    """16 Mpx in files of a few hundred KB: the old decoder converted whole images through
    numpy (palette: +410 MiB, RGBA: +460 MiB at this size); now the source stays in its own
    mode and only bands are converted. Measured in a fresh process."""
    side = 4000
    small = np.random.default_rng(0).integers(0, 256, (9, 9, 4), dtype=np.uint8)
    rgba = np.kron(small, np.ones((side // 8, side // 8, 1), dtype=np.uint8))[:side, :side]
    path = tmp_path / name
    if name == "palette_alpha.png":
        palette = Image.fromarray(np.ascontiguousarray(rgba[..., :3])).quantize(32, dither=Image.Dither.NONE)
        palette.save(path, transparency=0, compress_level=1)
    elif name == "rgba.png":
        Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(path, compress_level=1)
    else:
        Image.fromarray(rgba[..., 0].astype(np.uint16) * 257).save(path, compress_level=1)
    assert path.stat().st_size < 1024 * 1024
    grown_mib = decode_in_fresh_process(path, "decode")["peak_mib"]
    source_mib = side * side * {"palette_alpha.png": 1, "rgba.png": 4, "grey16.png": 2}[name] / 2**20
    assert grown_mib < source_mib + 40, f"{name}: +{grown_mib:.0f} MiB for a {source_mib:.0f} MiB source"


def test_reduced_jpeg_decoding_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG at least REDUCED_DECODE_MARGIN x 2 times the model's size is decoded at a DCT
    scale; the 1024 px image it gives differs from the exact one by a few levels at most."""
    import tagger.engine.decode as pp
    from tagger.engine.preprocess import target_size

    photo = Image.open(Path(__file__).resolve().parent.parent / "examples" / "astronaut.jpg").convert("RGB")
    data = encoded(photo.resize((6200, 4000), Image.Resampling.BICUBIC), "JPEG", quality=90)
    fit = lambda w, h: target_size(w, h, 1024, 16)  # noqa: E731
    monkeypatch.setattr(pp, "REDUCED_DECODE_MARGIN", 10**9)  # never reduce: the exact path
    exact = np.asarray(load_image(data, fit=fit, reduced_decode=True), dtype=np.int16)
    monkeypatch.setattr(pp, "REDUCED_DECODE_MARGIN", 3)
    reduced = np.asarray(load_image(data, fit=fit, reduced_decode=True), dtype=np.int16)
    assert np.array_equal(np.asarray(load_image(data, fit=fit), dtype=np.int16), exact)  # off by default
    assert reduced.shape == exact.shape == (656, 1024, 3)
    diff = np.abs(reduced - exact)
    assert 0 < diff.max() <= 4 and diff.mean() < 0.3, (diff.max(), diff.mean())  # 0 would mean no reduction


# ---------------------------------------------------------------------------------------------
# Pixel caps and budgets of web requests


def test_web_pixel_cap_from_the_header(client: Client, tmp_path: Path) -> None:
    """The web app refuses more than 40 Mpx from the header (the CLI keeps 100 Mpx)."""
    from tagger.datasets.pixel_caps import WEB_MAX_IMAGE_PIXELS
    from tagger.engine.decode import MAX_IMAGE_PIXELS

    assert WEB_MAX_IMAGE_PIXELS == 40_000_000 < MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(png_declaring(8000, 5001))
    with pytest.raises(AppError) as info:
        call_tag(client, handle_file(str(path)))
    assert "'big.png': the image is 8000x5001 (40,008,000 pixels), more than this Space's limit" in info.value.message
    assert_sentence(info.value.message)


@pytest.mark.parametrize(
    ("name", "size", "save", "limit"),
    [
        ("flat.webp", (5000, 4000), {"lossless": True, "quality": 0, "method": 0}, "16,000,000 pixels for WebP"),
        ("flat.tif", (5000, 4000), {"compression": "tiff_adobe_deflate"}, "16,000,000 pixels for TIFF"),
        ("flat.jp2", (3000, 2001), {"quality_mode": "rates", "quality_layers": [40]}, "6,000,000 pixels for JPEG 2000"),
    ],
)
def test_costly_formats_have_lower_web_caps(
    client: Client, tmp_path: Path, name: str, size: tuple[int, int], save: dict, limit: str
) -> None:
    """libwebp holds several copies while decoding (+612 MiB at 40 Mpx); float TIFF and
    OpenJPEG cost more CPU per pixel: each is refused from its header past its own cap."""
    path = tmp_path / name
    Image.new("RGB", size, "red").save(path, **save)
    with pytest.raises(AppError) as info:
        call_tag(client, handle_file(str(path)))
    assert f"more than this Space's limit of {limit} images" in info.value.message


def icon(container: str, stream: bytes) -> bytes:
    """An ICO or ICNS file whose directory declares one small icon (16x16; ICNS: 512x512@2),
    the given PNG or JPEG 2000 stream."""
    if container == "ICO":
        return b"\x00\x00\x01\x00\x01\x00" + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(stream), 22) + stream
    block = b"ic10" + struct.pack(">I", 8 + len(stream)) + stream
    return b"icns" + struct.pack(">I", 8 + len(block)) + block


@pytest.mark.parametrize(
    ("container", "fmt", "size", "limit"),
    [
        ("ICO", "PNG", (8000, 6000), "40,000,000 pixels"),
        ("ICNS", "PNG", (8000, 6000), "40,000,000 pixels"),
        ("ICNS", "JPEG2000", (3000, 2100), "6,000,000 pixels for JPEG 2000 images"),
    ],
)
def test_icon_containers_are_capped_by_what_they_embed(
    client: Client, tmp_path: Path, container: str, fmt: str, size: tuple[int, int], limit: str
) -> None:
    """An icon whose directory declares a small image but which embeds a large one (Pillow
    decodes the embedded stream in full, ICO even while opening the file: seconds and GiBs):
    the embedded stream's own header is checked against the caps before anything is decoded."""
    save = {"compress_level": 9} if fmt == "PNG" else {"quality_mode": "rates", "quality_layers": [400]}
    path = tmp_path / f"liar.{container.lower()}"
    path.write_bytes(icon(container, encoded(Image.new("L", size), fmt, **save)))
    assert path.stat().st_size < 200_000
    started = time.perf_counter()
    with pytest.raises(AppError) as info:
        call_tag(client, handle_file(str(path)))
    width, height = size
    assert f"the image is {width}x{height} ({width * height:,} pixels), more than this Space's limit of {limit}" in (
        info.value.message
    )
    assert_sentence(info.value.message)
    assert time.perf_counter() - started < 10  # a round trip; decoding it would take far longer


@pytest.mark.parametrize("container", ["ICO", "ICNS"])
def test_icon_containers_are_capped_in_the_library(container: str) -> None:
    """The library's and the CLI's cap (100 Mpx) holds for what an icon embeds too: refused from
    the embedded header at once (decoding 108 Mpx would take seconds and over 100 MiB)."""
    data = icon(container, encoded(Image.new("L", (12000, 9000)), "PNG", compress_level=9))
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"the image is 12000x9000 \(108,000,000 pixels\), more than the limit"):
        load_image(data)
    assert time.perf_counter() - started < 0.5
    honest = encoded(random_image(64, 64), container)  # icons as Pillow writes them still decode
    assert load_image(honest).size[0] >= 64


def test_batch_pixel_caps(tmp_path: Path, good_image: Path) -> None:
    small = good_image.read_bytes()  # 56 x 40 = 2,240 pixels
    archive = write_zip(tmp_path / "a.zip", {"a.png": small, "big.png": png_declaring(8000, 5001), "b.png": small})
    with collect_inputs([str(archive)], BatchLimits()) as inputs:
        names = [item.name for item in inputs.items]
        assert inputs.read(inputs.items[names.index("a.png")]) == small
        with pytest.raises(ImageError, match="more than the limit of 40,000,000 per image"):
            inputs.read(inputs.items[names.index("big.png")])
    with collect_inputs([str(archive)], BatchLimits(max_total_pixels=3_000)) as inputs:
        by_name = {item.name: item for item in inputs.items}
        inputs.read(by_name["a.png"])
        with pytest.raises(TimeBudgetError, match="add up to more than 3,000 pixels, the limit per request"):
            inputs.read(by_name["b.png"])


def test_time_budget_stops_reading_and_keeps_the_rest(tmp_path: Path, good_image: Path, small_tagger: Tagger):
    from tagger.datasets.batch import run_batch
    from tagger.datasets.intake import time_budget

    archive = write_zip(tmp_path / "a.zip", {f"{i}.png": good_image.read_bytes() for i in range(3)})
    with time_budget(60):
        done = run_batch([str(archive)], prepare=small_tagger.prepare, run=small_tagger.run,
                         vocab=small_tagger.vocab, options=TagOptions())  # fmt: skip
    assert all(r.error is None for r in done.results)
    with time_budget(0):
        time.sleep(0.01)
        spent = run_batch([str(archive)], prepare=small_tagger.prepare, run=small_tagger.run,
                          vocab=small_tagger.vocab, options=TagOptions())  # fmt: skip
    assert [r.error for r in spent.results] == [
        f"Not read {i}.png: this request used its time budget of 0 s; send the remaining images in another request."
        for i in range(3)
    ]


# ---------------------------------------------------------------------------------------------
# Uploads per request and per client (an app with small limits, behind one proxy like a Space)


@pytest.fixture(scope="module")
def tight_app() -> Iterator[RunningApp]:
    from app_server import start_app

    from tagger.web.fairshare import FairShareLimits

    limits = FairShareLimits(
        max_upload_request_bytes=1024 * 1024, upload_bytes_per_client=3 * 1024 * 1024, proxy_hops=1
    )
    running = start_app(["--demo"], limits=limits)
    yield running
    running.close()


def test_upload_caps(tight_app: RunningApp) -> None:
    def upload(address: str, size: int, chunked: bool = False) -> httpx.Response:
        data = b"x" * size
        with httpx.Client(base_url=tight_app.url, timeout=REQUEST_TIMEOUT_S) as http:
            headers = {"X-Forwarded-For": address}
            if not chunked:
                return http.post("gradio_api/upload", files={"files": ("a.png", data)}, headers=headers)
            body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + data
            body += b"\r\n--b--\r\n"
            headers["Content-Type"] = "multipart/form-data; boundary=b"
            return http.post("gradio_api/upload", content=iter([body[:1000], body[1000:]]), headers=headers)

    too_big = upload("203.0.113.10", 1100 * 1024)
    assert too_big.status_code == 413 and too_big.json()["detail"] == "The upload is 1.07 MiB; the limit is 1 MiB."
    streamed = upload("203.0.113.10", 1100 * 1024, chunked=True)
    assert streamed.status_code == 413 and "larger than the limit of 1 MiB" in streamed.json()["detail"]
    for _ in range(3):  # 0.9 MiB each, within the client's 3 MiB an hour
        assert upload("203.0.113.11", 900 * 1024).status_code == 200
    over = upload("203.0.113.11", 900 * 1024)
    assert over.status_code == 429
    assert over.json()["detail"].startswith("Your address uploaded 2.64 MiB")
    assert "in the last hour; the limit is 3 MiB" in over.json()["detail"]
    assert upload("203.0.113.12", 900 * 1024).status_code == 200  # another client is not affected
    # Streamed bodies declare no length: what arrives is counted as it arrives (the refused
    # 1.07 MiB above too), and the upload that would pass the budget is refused part-way.
    assert [upload("203.0.113.10", 900 * 1024, chunked=True).status_code for _ in range(3)] == [200, 200, 429]


def multipart(size: int) -> tuple[bytes, dict[str, str]]:
    body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n' + b"x" * size
    return body + b"\r\n--b--\r\n", {"Content-Type": "multipart/form-data; boundary=b"}


def cache_files() -> set[Path]:
    return {p for p in Path(gr.utils.get_upload_folder()).rglob("*") if p.is_file()}


@pytest.mark.parametrize("chunked", [False, True])
def test_parallel_uploads_share_one_budget(tight_app: RunningApp, chunked: bool) -> None:
    """Eight 0.9 MiB uploads sent at once against a 3 MiB budget: at most 3 MiB is accepted
    (a declared length is reserved before the body is read; a streamed one counted as it comes)."""
    address = "203.0.113.20" if chunked else "203.0.113.21"
    body, headers = multipart(900 * 1024)
    headers["X-Forwarded-For"] = address
    barrier = threading.Barrier(8)

    def send() -> int:
        with httpx.Client(base_url=tight_app.url, timeout=REQUEST_TIMEOUT_S) as http:
            content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
            barrier.wait()
            return http.post("gradio_api/upload", content=content, headers=headers).status_code

    before = cache_files()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(send())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and set(results) <= {200, 429} and 429 in results, results
    assert results.count(200) * 900 * 1024 <= 3 * 1024 * 1024
    if not chunked:  # reserved up front: every one that fits, none more (streamed ones may all
        assert results.count(200) == 3  # run out together, each charged for what it sent)
    # The refused ones left no partial file behind (one stored upload: they are all the same bytes).
    wait_for(lambda: len({p for p in cache_files() - before if p.name.startswith("tmp")}) == 0, 10)


def test_refused_and_cut_off_uploads_leave_no_files(
    tight_app: RunningApp, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """An upload refused part-way (over the per-request cap) and five cut off by the client
    (the connection closed after half the declared body): none leaves a file in the cache, and
    each logs one line, no traceback."""
    caplog.set_level("INFO", logger="tagger")
    before = cache_files()
    body, headers = multipart(1100 * 1024)
    with httpx.Client(base_url=tight_app.url, timeout=REQUEST_TIMEOUT_S) as http:
        chunks = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
        refused = http.post("gradio_api/upload", content=chunks, headers={**headers, "X-Forwarded-For": "203.0.113.30"})
    assert refused.status_code == 413
    host, port = httpx.URL(tight_app.url).host, httpx.URL(tight_app.url).port
    body, _ = multipart(800 * 1024)
    for i in range(5):
        with socket.create_connection((host, port)) as sock:
            head = (
                f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.3{i + 1}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
            time.sleep(0.3)  # the server has stored part of it
    wait_for(lambda: sum("cut off by the client" in r.getMessage() for r in caplog.records) == 5, 20)
    wait_for(lambda: not {p for p in cache_files() - before}, 10)
    assert sum("larger than the limit of 1 MiB" in r.getMessage() for r in caplog.records) == 1
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("route", ["run", "api"])
def test_queued_endpoints_are_not_served_outside_the_queue(app: RunningApp, good_image: Path, route: str) -> None:
    """/gradio_api/run/<api> would skip the queue, its concurrency groups and the per-client
    limits: off a Space too it answers 404 for queued endpoints (as Gradio does on a Space)."""
    image = uploaded(app, good_image)
    body = json.dumps({"data": [image, *TAG_DEFAULTS]})
    with httpx.Client(base_url=app.url, timeout=REQUEST_TIMEOUT_S) as http:
        response = http.post(f"gradio_api/{route}/tag", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 404
    assert "join the queue" in response.json()["detail"]
