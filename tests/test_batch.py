"""Batch tagging: input collection and its limits, streaming in chunks, captions and JSONL,
and the ``/tag_batch`` endpoint end to end (tiny random model, CPU)."""

from __future__ import annotations

import hashlib
import io
import json
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from support import image_bytes, write_zip

from tagger.datasets.batch import run_batch, tag_items
from tagger.datasets.intake import BatchLimits, _read_capped, collect_inputs, sanitize_path, wrapper_depth
from tagger.datasets.names import CaptionNamer
from tagger.engine.tagger import Tagger
from tagger.engine.vocab import CATEGORIES
from tagger.errors import UploadError
from tagger.tags.options import TagOptions
from tagger.tags.selection import select_tags
from tagger.web.service import result_row, summary_markdown

MiB = 1024 * 1024


def rows(output) -> list[list]:
    """The Batch tab's results table for a run."""
    return [result_row(r) for r in output.results]


CATEGORY_NAMES = {c.name for c in CATEGORIES}


def batch(tagger: Tagger, paths: list, options: TagOptions | None = None, **kwargs):
    return run_batch(
        paths,
        prepare=tagger.prepare,
        run=tagger.run,
        vocab=tagger.vocab,
        options=options or TagOptions(),
        **kwargs,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def expected_tags(tagger: Tagger, data: bytes, options: TagOptions):
    return select_tags(tagger.run([tagger.prepare(data)])[0], tagger.vocab, options.selection)


@pytest.fixture
def dataset_zip(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Concept folders, a nested folder, root files, macOS junk, a non-image, a corrupt image."""
    members = {
        "alice/01.png": image_bytes(seed=1),
        "alice/02.png": image_bytes(seed=2),
        "alice/broken.png": b"\x89PNG\r\n\x1a\n this is not really a png",
        "bob/outfits/red.png": image_bytes(40, 72, seed=3),
        "root.png": image_bytes(seed=4),
        "__MACOSX/alice/._01.png": b"\x00\x05\x16\x07resource fork",
        "alice/.DS_Store": b"junk",
        ".hidden/x.png": image_bytes(seed=5),
        "notes.txt": b"not an image",
        "nested.zip": b"PK\x05\x06" + b"\x00" * 18,
    }
    path = tmp_path / "dataset.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("alice/"), b"")  # an explicit folder entry
        for name, data in members.items():
            archive.writestr(name, data)
    return path, members


# ---------------------------------------------------------------------------------------------
# Engine


def test_several_files(tiny_tagger: Tagger, image_files: list[Path], tmp_path: Path) -> None:
    options = TagOptions(threshold=0.0, floor=0.0, mode="threshold", character_threshold=0.0)
    out = batch(tiny_tagger, image_files, options, out_dir=tmp_path / "out")
    assert (out.images, out.errors, out.skipped) == (3, 0, [])
    assert [row[0] for row in rows(out)] == [p.name for p in image_files]
    assert all(row[1] == "" for row in rows(out))
    assert all(row[2] == len(tiny_tagger.vocab) for row in rows(out))  # threshold 0 keeps every tag
    assert all(len(row[3].split(", ")) == 8 for row in rows(out))  # first 8 tags only
    assert out.captions_zip.parent == out.jsonl.parent == tmp_path / "out"
    assert "**3 images tagged** · 0 errors" in summary_markdown(out)


def test_zip_concepts_skips_and_errors(tiny_tagger: Tagger, dataset_zip, tmp_path: Path) -> None:
    path, members = dataset_zip
    out = batch(tiny_tagger, [path], out_dir=tmp_path / "out")
    names = ["alice/01.png", "alice/02.png", "alice/broken.png", "bob/outfits/red.png", "root.png"]
    assert [row[0] for row in rows(out)] == names
    assert [row[1] for row in rows(out)] == ["alice", "alice", "alice", "bob", ""]
    assert (out.images, out.errors) == (4, 1)
    assert sorted(out.skipped) == sorted(
        ["__MACOSX/alice/._01.png", "alice/.DS_Store", ".hidden/x.png", "notes.txt", "nested.zip"]
    )
    broken = rows(out)[2]
    assert broken[2] == 0 and "alice/broken.png" in broken[3] and "not an image" in broken[3]
    # The batch went on after the corrupt image.
    assert rows(out)[3][2] > 0 and rows(out)[4][2] > 0
    lines = read_jsonl(out.jsonl)
    assert lines[2] == {
        "sha256": hashlib.sha256(members["alice/broken.png"]).hexdigest(),
        "filename": "alice/broken.png",
        "concept": "alice",
        "error": broken[3].removeprefix("⚠ "),
    }


def test_captions_zip_file_by_file(tiny_tagger: Tagger, dataset_zip, image_files: list[Path], tmp_path: Path) -> None:
    path, members = dataset_zip
    options = TagOptions(prepend="trigger word, best quality", underscores=True, exclude="general 1")
    out = batch(tiny_tagger, [*image_files, path], options, out_dir=tmp_path / "out")
    sources = {p.name: p.read_bytes() for p in image_files}
    sources |= {k: v for k, v in members.items() if k in ("alice/01.png", "alice/02.png", "bob/outfits/red.png")}
    sources["root.png"] = members["root.png"]
    with zipfile.ZipFile(out.captions_zip) as captions:
        written = {name: captions.read(name).decode("utf-8") for name in captions.namelist()}
    # Same folder and stem as each image; no caption for the corrupt one.
    assert sorted(written) == sorted(str(Path(name).with_suffix(".txt")) for name in sources)
    for name, data in sources.items():
        caption = written[str(Path(name).with_suffix(".txt"))]
        assert caption == options.tag_string(expected_tags(tiny_tagger, data, options))
        assert caption.startswith("trigger_word, best_quality")
        assert " " not in caption.replace(", ", ",")  # underscores everywhere
        assert "general_1," not in caption + ","


def test_jsonl_schema_line_by_line(tiny_tagger: Tagger, dataset_zip, image_files: list[Path], tmp_path: Path) -> None:
    path, members = dataset_zip
    options = TagOptions(mode="topk", topk_per_category=2)
    out = batch(tiny_tagger, [image_files[0], path], options, out_dir=tmp_path / "out")
    lines = read_jsonl(out.jsonl)
    sources = {image_files[0].name: image_files[0].read_bytes(), **members}
    assert [line["filename"] for line in lines] == [row[0] for row in rows(out)]
    for line in lines:
        data = sources[line["filename"]]
        assert line["sha256"] == hashlib.sha256(data).hexdigest()
        assert line["concept"] == (line["filename"].split("/")[0] if "/" in line["filename"] else "")
        if "error" in line:
            assert set(line) == {"sha256", "filename", "concept", "error"}
            continue
        assert set(line) == {"sha256", "filename", "concept", "tags"}
        expected = expected_tags(tiny_tagger, data, options)
        assert [t["tag"] for t in line["tags"]] == [t.tag for t in expected]
        for entry, tag in zip(line["tags"], expected, strict=True):
            assert set(entry) == {"tag", "score", "category"}
            assert entry["category"] in CATEGORY_NAMES and entry["category"] == tag.category.name
            assert entry["score"] == pytest.approx(tag.score, abs=1e-6)
    assert sum("error" in line for line in lines) == 1


def test_duplicate_stems_do_not_overwrite(tiny_tagger: Tagger, tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "dupes.zip",
        {
            "c/a.png": image_bytes(seed=1),
            "c/a.jpg": image_bytes(seed=2),  # PNG data under .jpg: Pillow sniffs the format
            "c/A.webp": image_bytes(seed=3),
            "d/a.png": image_bytes(seed=4),
        },
    )
    out = batch(tiny_tagger, [archive], out_dir=tmp_path / "out")
    with zipfile.ZipFile(out.captions_zip) as captions:
        assert captions.namelist() == ["c/a.txt", "c/a.jpg.txt", "c/A.webp.txt", "d/a.txt"]
    assert out.renamed == [("c/a.jpg", "c/a.jpg.txt"), ("c/A.webp", "c/A.webp.txt")]
    assert "renamed" in summary_markdown(out)


def test_caption_namer_numbers_further_clashes() -> None:
    namer = CaptionNamer()
    assert [namer.name_for(n) for n in ["x/a.png", "x/a.jpg", "x/a.jpg", "x/A.JPG", "x/b.png"]] == [
        "x/a.txt",
        "x/a.jpg.txt",
        "x/a.jpg.2.txt",
        "x/A.JPG.3.txt",
        "x/b.txt",
    ]


def test_a_wrapping_folder_is_looked_through_for_concepts(tmp_path: Path) -> None:
    """Zipping `dataset/` (kohya's `10_cat/`, `5_dog/` inside it) gives the inner folders as
    concepts; zipping `10_cat/` itself keeps it as the concept."""
    png = image_bytes()
    names = ("dataset/10_cat/a.png", "dataset/10_cat/b.png", "dataset/5_dog/c.png")
    wrapped = write_zip(tmp_path / "wrapped.zip", dict.fromkeys(names, png))
    single = write_zip(tmp_path / "single.zip", dict.fromkeys(("10_cat/a.png", "10_cat/b.png"), png))
    with collect_inputs([wrapped]) as inputs:
        assert {i.name: i.concept for i in inputs.items} == {
            "dataset/10_cat/a.png": "10_cat",
            "dataset/10_cat/b.png": "10_cat",
            "dataset/5_dog/c.png": "5_dog",
        }
    with collect_inputs([single]) as inputs:
        assert {i.concept for i in inputs.items} == {"10_cat"}
    assert wrapper_depth(["a/b/c/x.png", "a/b/c/y.png"]) == 2
    assert wrapper_depth(["a/x.png", "b/y.png"]) == 0
    assert wrapper_depth(["a/x.png", "a/b/y.png"]) == 0  # a file directly in `a`: `a` is a concept


def test_sanitize_path() -> None:
    assert sanitize_path("a//./b.png") == "a/b.png"
    assert sanitize_path("dir\\sub\\c.png") == "dir/sub/c.png"
    assert sanitize_path('we<ir>d:"n|a?m*e.png') == "we_ir_d__n_a_m_e.png"
    assert sanitize_path("con.png") == "_con.png"
    assert sanitize_path("trailing. /x.png") == "trailing/x.png"
    assert sanitize_path("ünïcode/画像.png") == "ünïcode/画像.png"


def test_an_entry_over_the_size_limit_is_refused_from_its_declared_size(tmp_path: Path) -> None:
    """(Under the size limit, a bomb's compression ratio gives it away: test_hostile.py.)"""
    archive = write_zip(tmp_path / "bomb.zip", {"big.png": b"\x00" * (8 * MiB)})
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(UploadError, match=r"big.png unpacks to 8.0 MiB, more than the limit of 4 MiB per image"):
        collect_inputs([archive], BatchLimits(max_image_bytes=4 * MiB))


def test_total_unpacked_size_refused(tmp_path: Path) -> None:
    members = {f"c/{i}.png": image_bytes(seed=i) for i in range(4)}
    archive = write_zip(tmp_path / "many.zip", members)
    limit = sum(len(v) for v in members.values()) - 1
    with pytest.raises(UploadError, match=r"The images unpack to .* MiB; the limit is"):
        collect_inputs([archive], BatchLimits(max_total_bytes=limit))


def test_reading_counts_bytes_whatever_was_declared() -> None:
    limits = BatchLimits(max_image_bytes=1000, max_total_bytes=5000)
    assert _read_capped(io.BytesIO(b"x" * 1000), 1000, "a.png", limits, block=64) == b"x" * 1000
    with pytest.raises(UploadError, match=r"a.png unpacks to more than the limit of 0 MiB per image"):
        _read_capped(io.BytesIO(b"x" * 1001), 1000, "a.png", limits, block=64)
    with pytest.raises(UploadError, match="more than the limit of 0 MiB in all"):
        _read_capped(io.BytesIO(b"x" * 600), 500, "b.png", limits, block=64)  # 500 left of the total


def test_too_many_files_refused(image_files: list[Path], tmp_path: Path) -> None:
    limits = BatchLimits(max_files=2)
    with pytest.raises(UploadError, match="3 files were uploaded; the limit is 2 per request"):
        collect_inputs(image_files, limits)
    archive = write_zip(tmp_path / "three.zip", {f"{i}.png": image_bytes(seed=i) for i in range(3)})
    with pytest.raises(UploadError, match="more than 2 images"):
        collect_inputs([archive], limits)
    with pytest.raises(UploadError, match=r"The upload is .* MiB; the limit is 0 MiB"):
        collect_inputs(image_files, BatchLimits(max_upload_bytes=100))


def test_requests_without_images_refused(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="upload images"):
        collect_inputs([])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UploadError, match="No images found in the upload"):
        collect_inputs([text])
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    with pytest.raises(UploadError, match=r"fake.zip is not a readable zip archive"):
        collect_inputs([fake])


def test_encrypted_member_is_an_error_row(tiny_tagger: Tagger, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "locked.zip", {"locked.png": image_bytes(seed=1), "open.png": b""})
    # zipfile cannot encrypt: set the "encrypted" flag of the first member in both of its headers.
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        data[data.index(signature) + offset] |= 0x1
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as z, pytest.raises(RuntimeError, match="password required"):
        z.read("locked.png")
    out = batch(tiny_tagger, [archive], out_dir=tmp_path / "out")
    assert (out.images, out.errors) == (0, 2)  # the empty open.png is an error too
    first = read_jsonl(out.jsonl)[0]
    assert set(first) == {"filename", "concept", "error"} and "encrypted" in first["error"]


def test_memory_stays_bounded_by_the_chunk(tiny_tagger: Tagger, tmp_path: Path) -> None:
    # Mixed sizes, so that each chunk also exercises the size grouping inside the model call.
    archive = write_zip(
        tmp_path / "ten.zip", {f"{i:02d}.png": image_bytes(64, 48 + 16 * (i % 2), seed=i) for i in range(10)}
    )
    alive = 0
    peak = 0
    calls: list[int] = []

    def released() -> None:
        nonlocal alive
        alive -= 1

    def prepare(data: bytes, *, name: str | None = None) -> torch.Tensor:
        nonlocal alive, peak
        pixels = tiny_tagger.prepare(data, name=name)
        alive += 1
        peak = max(peak, alive)
        weakref.finalize(pixels, released)
        return pixels

    def run(pixels: list[torch.Tensor]) -> np.ndarray:
        calls.append(len(pixels))
        return tiny_tagger.run(pixels)

    progress: list[tuple[int, int, str]] = []
    with collect_inputs([archive]) as inputs:
        results: Iterator = tag_items(
            inputs,
            prepare=prepare,
            run=run,
            vocab=tiny_tagger.vocab,
            options=TagOptions(),
            chunk_size=3,
            progress=lambda *a: progress.append(a),
        )
        names = []
        for result in results:
            assert alive == 0  # every decoded image of the chunk is freed before results are handed out
            names.append(result.filename)
    assert peak == 3
    assert calls == [3, 3, 3, 1]  # one model call per chunk
    assert names == [f"{i:02d}.png" for i in range(10)]
    assert [p[:2] for p in progress] == [(i, 10) for i in range(1, 11)]


def test_same_size_images_make_one_forward(tiny_files, tmp_path: Path, count_passes) -> None:
    checkpoint, vocab = tiny_files
    tagger = Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_batch_size=8)
    counted = count_passes(tagger)
    archive = write_zip(tmp_path / "six.zip", {f"c/{i}.png": image_bytes(seed=i) for i in range(6)})
    out = batch(tagger, [archive], out_dir=tmp_path / "out")
    assert out.images == 6
    assert out.model_calls == 1
    assert (counted.passes, counted.images) == (1, 6)


def test_failed_request_leaves_no_output_dir(tiny_tagger: Tagger, tmp_path: Path, monkeypatch) -> None:
    import tagger.datasets.batch as batch_module

    monkeypatch.setattr(batch_module, "OUTPUT_ROOT", tmp_path / "root")
    archive = write_zip(tmp_path / "bomb.zip", {"big.png": b"\x00" * (2 * MiB)})
    with pytest.raises(UploadError):
        batch(tiny_tagger, [archive])
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


# ---------------------------------------------------------------------------------------------
# End to end: the real app (demo mode) over HTTP


def test_endpoint_is_documented(client) -> None:
    info = client.view_api(return_format="dict", print_info=False)
    endpoint = info["named_endpoints"]["/tag_batch"]
    names = [p["parameter_name"] for p in endpoint["parameters"]]
    assert names[:2] == ["files", "mode"] and "prepend" in names and "underscores" in names
    assert all(p["parameter_has_default"] for p in endpoint["parameters"][1:])
    assert len(endpoint["returns"]) == 4


def test_endpoint_with_files_and_zip(client, image_files: list[Path], dataset_zip, app, count_passes) -> None:
    from gradio_client import handle_file

    stray = image_files[0].parent / "old caption.txt"  # dragged in with the images: skipped, not fatal
    stray.write_text("1girl")
    table, captions, jsonl, summary = client.predict(
        [*(handle_file(str(p)) for p in image_files[:2]), handle_file(str(stray))], api_name="/tag_batch"
    )
    assert [row[0] for row in table["data"]] == [p.name for p in image_files[:2]]
    with zipfile.ZipFile(captions) as z:
        assert z.namelist() == [Path(p.name).with_suffix(".txt").name for p in image_files[:2]]
    lines = read_jsonl(Path(jsonl))
    assert [line["sha256"] for line in lines] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in image_files[:2]]
    assert "2 images tagged** · 0 errors · 1 skipped" in summary

    path, _ = dataset_zip
    counted = count_passes(app.context.tagger)
    table, captions, jsonl, summary = client.predict(
        [handle_file(str(path))], prepend="my character", underscores=True, api_name="/tag_batch"
    )
    assert [row[1] for row in table["data"]] == ["alice", "alice", "alice", "bob", ""]
    with zipfile.ZipFile(captions) as z:
        assert z.namelist() == ["alice/01.txt", "alice/02.txt", "bob/outfits/red.txt", "root.txt"]
        assert all(z.read(n).decode().startswith("my_character") for n in z.namelist())
    lines = read_jsonl(Path(jsonl))
    assert [("error" in line) for line in lines] == [False, False, True, False, False]
    assert "4 images tagged** · 1 error · 5 skipped" in summary
    # Two image sizes in one chunk: two forward passes in one model call, not one per image.
    assert counted.passes == 2
