"""``python -m tagger.bulk`` end to end with the tiny model: outputs, captions, errors, refusals, shards.

The command runs in this process (``bulk_support.run_bulk``), on the CPU in fp32, so its
results can be checked against the ``Tagger`` itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bulk_support import captions, every_input_kind, jsonl_lines, parquet_rows, run_bulk, tree, write_images
from support import image_bytes

from tagger.bulk.resume import options_hash
from tagger.datasets.batch import ImageResult, run_batch
from tagger.tags.options import TagOptions
from tagger.tags.selection import select_tags

NAMES = ["cats/a.png", "cats/b.jpg", "dogs/c.png", "dogs/d.png", "e.png"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_images(tmp_path / "data", NAMES)
    return tmp_path / "data"


def test_every_input_kind_in_one_run(tmp_path: Path, tiny_files, capsys) -> None:
    inputs = every_input_kind(tmp_path / "in")
    out = tmp_path / "out"
    # Two decoding processes: the pool, not inline decoding, reads every kind of locator.
    result = run_bulk(capsys, tiny_files, *inputs.paths, "--out", str(out), "--format", "parquet", "--workers", "2")
    assert result.code == 0, result.err
    rows = parquet_rows(out)
    assert [r["key"] for r in rows] == sorted(inputs.keys)
    assert all(r["error"] is None and r["tag_ids"] for r in rows)
    import hashlib

    assert {r["key"]: r["sha256"] for r in rows} == {
        k: hashlib.sha256(v).hexdigest() for k, v in inputs.bytes_by_key.items()
    }
    assert f"{len(inputs.keys)} images tagged, 0 unreadable" in result.out


def test_outputs_hold_the_models_results(folder: Path, tmp_path: Path, tiny_files, tiny_tagger, capsys) -> None:
    out = tmp_path / "out"
    flags = ["--threshold", "0.5", "--floor", "0.2", "--prepend", "trigger", "--underscores"]
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--format", "txt,jsonl,parquet", *flags)
    assert result.code == 0, result.err
    options = TagOptions(threshold=0.5, floor=0.2, prepend="trigger", underscores=True)
    rows = {r["key"]: r for r in parquet_rows(out)}
    lines = {line["filename"]: line for line in jsonl_lines(out)}
    assert sorted(rows) == sorted(lines) == sorted(f"data/{n}" for n in NAMES)
    for name in NAMES:
        path = folder / name
        expected = tiny_tagger.probabilities([path])[0]
        row = rows[f"data/{name}"]
        # Parquet: every score at or above the floor, by tag id, and nothing else.
        above = np.flatnonzero(expected >= np.float32(0.2))
        assert row["tag_ids"] == above.tolist()
        np.testing.assert_allclose(row["scores"], expected[above], atol=1e-5)
        with __import__("PIL").Image.open(path) as image:
            assert (row["width"], row["height"]) == image.size
        assert row["model_repo"] == "local" and row["model_revision"] == tiny_files[0].name
        assert row["options_hash"] == options_hash(options)
        tags = select_tags(expected, tiny_tagger.vocab, options.selection)
        # Captions beside the images, formatted by the options; the Batch tab's JSONL line.
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == options.tag_string(tags)
        line = lines[f"data/{name}"]
        assert line["concept"] == (name.split("/")[0] if "/" in name else "")
        assert [t["tag"] for t in line["tags"]] == [t.tag for t in tags]
        assert set(line) == set(ImageResult("x", "", "0" * 64, tuple(tags)).json_line())


def test_jsonl_lines_are_the_batch_tabs(folder: Path, tmp_path: Path, tiny_files, tiny_tagger, capsys) -> None:
    out = tmp_path / "out"
    assert run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--format", "jsonl").code == 0
    ours = {Path(line["filename"]).name: line for line in jsonl_lines(out)}
    batch = run_batch(
        [folder / n for n in NAMES],
        prepare=tiny_tagger.prepare,
        run=tiny_tagger.run,
        vocab=tiny_tagger.vocab,
        options=TagOptions(),
        out_dir=tmp_path / "batch",
    )
    for result in batch.results:
        line = ours[result.filename]
        expected = result.json_line()
        assert line["sha256"] == expected["sha256"]
        assert [t["tag"] for t in line["tags"]] == [t["tag"] for t in expected["tags"]]
        np.testing.assert_allclose(
            [t["score"] for t in line["tags"]], [t["score"] for t in expected["tags"]], atol=2e-6
        )


def test_descriptors_come_from_the_same_forward_pass(folder: Path, tmp_path: Path, tiny_files, tiny_tagger, capsys):
    out = tmp_path / "out"
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--format", "parquet", "--descriptors")
    assert result.code == 0, result.err
    for row in parquet_rows(out):
        path = folder / row["key"].removeprefix("data/")
        np.testing.assert_allclose(row["descriptor"], tiny_tagger.descriptors([path])[0], atol=1e-5)
        expected = tiny_tagger.probabilities([path])[0]
        np.testing.assert_allclose(row["scores"], expected[row["tag_ids"]], atol=1e-5)


def test_captions_under_out_mirror_the_inputs_and_same_stems_do_not_collide(tmp_path: Path, tiny_files, capsys):
    write_images(tmp_path / "set", ["x/a.png", "x/a.jpg", "b.png"])
    out = tmp_path / "out"
    assert run_bulk(capsys, tiny_files, str(tmp_path / "set"), "--out", str(out), "--txt-location", "out").code == 0
    # The Batch tab's rule: a.jpg sorts first and gets a.txt, a.png gets its full name + .txt.
    assert sorted(captions(out / "txt")) == ["set/b.txt", "set/x/a.png.txt", "set/x/a.txt"]
    assert not list((tmp_path / "set").rglob("*.txt"))  # nothing beside the images
    assert run_bulk(capsys, tiny_files, str(tmp_path / "set"), "--out", str(tmp_path / "o2")).code == 0
    assert sorted(captions(tmp_path / "set")) == ["b.txt", "x/a.png.txt", "x/a.txt"]


@pytest.mark.parametrize("mode", ["skip", "overwrite", "append", "prepend"])
def test_on_existing(mode: str, folder: Path, tmp_path: Path, tiny_files, tiny_tagger, capsys) -> None:
    image = folder / "e.png"
    options = TagOptions()
    ours = options.tag_string(select_tags(tiny_tagger.probabilities([image])[0], tiny_tagger.vocab, options.selection))
    first = ours.split(", ")[0]
    # A caption someone wrote: one of our tags in another spelling, and one of theirs.
    existing = f"{first.upper().replace(' ', '_')}, hand written"
    image.with_suffix(".txt").write_text(existing, encoding="utf-8")
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(tmp_path / "out"), "--on-existing", mode)
    assert result.code == 0, result.err
    written = image.with_suffix(".txt").read_text(encoding="utf-8")
    rest = ", ".join(ours.split(", ")[1:])
    expected = {
        "skip": existing,
        "overwrite": ours,
        "append": f"{existing}, {rest}",
        "prepend": f"{rest}, {existing}",
    }[mode]
    assert written == expected
    if mode == "skip":  # only txt asked for: the image with a caption is not tagged at all
        assert "4 images tagged" in result.out and "1 kept (caption exists)" in result.out
    # Merging is idempotent: a second run in a new folder adds nothing.
    again = run_bulk(capsys, tiny_files, str(folder), "--out", str(tmp_path / "out2"), "--on-existing", mode)
    assert again.code == 0
    assert image.with_suffix(".txt").read_text(encoding="utf-8") == expected


def test_unreadable_images_are_reported_and_counted_never_fatal(folder: Path, tmp_path: Path, tiny_files, capsys):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes(image_bytes(64, 64, 9, "JPEG")[:200])
    out = tmp_path / "out"
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--format", "txt,jsonl,parquet")
    assert result.code == 0
    assert "5 images tagged, 3 unreadable" in result.out
    assert result.err.count("error: ") == 3 and "empty.jpg" in result.err
    errors = {r["key"]: r["error"] for r in parquet_rows(out) if r["error"]}
    assert set(errors) == {"data/broken.png", "data/empty.jpg", "data/cut.jpg"}
    assert "truncated or corrupt" in errors["data/cut.jpg"] or "not an image" in errors["data/cut.jpg"]
    assert {line["filename"] for line in jsonl_lines(out) if "error" in line} == set(errors)
    assert not (folder / "broken.txt").exists()


def test_resuming_with_other_settings_is_refused_naming_them(folder: Path, tmp_path: Path, tiny_files, capsys):
    out = str(tmp_path / "out")
    assert run_bulk(capsys, tiny_files, str(folder), "--out", out, "--format", "txt,parquet").code == 0
    before = tree(Path(out))
    changed = run_bulk(capsys, tiny_files, str(folder), "--out", out, "--format", "txt,parquet", "--threshold", "0.5")
    assert changed.code == 2
    assert "--threshold was 0.35, now 0.5" in changed.err and "new --out folder" in changed.err
    changed = run_bulk(capsys, tiny_files, str(folder), "--out", out, "--format", "parquet", "--max-size", "512")
    assert changed.code == 2
    assert "--format was txt,parquet, now parquet" in changed.err and "--max-size was 1024, now 512" in changed.err
    changed = run_bulk(capsys, tiny_files, str(folder), "--out", out, "--format", "txt,parquet", "--reduced-decode")
    assert changed.code == 2 and "--reduced-decode was off, now on" in changed.err
    write_images(folder, ["new.png"], seed=5)
    changed = run_bulk(capsys, tiny_files, str(folder), "--out", out, "--format", "txt,parquet")
    assert changed.code == 2 and "changed since (5 images then, 6 now)" in changed.err
    assert tree(Path(out)) == before  # refused runs write nothing


def test_finished_run_is_not_tagged_again(folder: Path, tmp_path: Path, tiny_files, capsys) -> None:
    out = tmp_path / "out"
    args = [str(folder), "--out", str(out), "--format", "jsonl,parquet", "--shard-size", "2"]
    assert run_bulk(capsys, tiny_files, *args).code == 0
    before = tree(out)
    again = run_bulk(capsys, tiny_files, *args)
    assert again.code == 0 and "0 images tagged" in again.out and "5 already done" in again.out
    assert tree(out) == before


def test_shards_split_the_work_disjointly_and_completely(folder: Path, tmp_path: Path, tiny_files, capsys) -> None:
    write_images(folder, [f"more/{i}.png" for i in range(6)], seed=3)
    shared = tmp_path / "shared"
    args = ["--format", "jsonl,parquet", "--shard-size", "2", "--txt-location", "out"]
    tagged = 0
    for index in range(3):
        result = run_bulk(capsys, tiny_files, str(folder), "--out", str(shared), *args, "--shard", f"{index}/3")
        assert result.code == 0, result.err
        tagged += int(result.out.split(" images tagged")[0])
    keys = [r["key"] for r in parquet_rows(shared)]
    # Complete (every image once in the shared folder) and disjoint (no image tagged twice).
    assert len(keys) == len(set(keys)) == tagged == 11
    assert len(jsonl_lines(shared)) == 11
    whole = tmp_path / "whole"
    assert run_bulk(capsys, tiny_files, str(folder), "--out", str(whole), *args).code == 0
    assert sorted((shared / "parquet").iterdir()) and tree(shared).keys() == tree(whole).keys()
    for a, b in zip(parquet_rows(shared), parquet_rows(whole), strict=True):
        assert a["key"] == b["key"] and a["tag_ids"] == b["tag_ids"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)


def test_gpus_all_on_a_cpu_only_machine_says_so_and_runs(folder: Path, tmp_path: Path, tiny_files, capsys) -> None:
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(tmp_path / "out"), "--gpus", "all")
    assert result.code == 0
    assert "no CUDA GPU is visible; running one process on the CPU" in result.err
    assert "5 images tagged" in result.out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard", "3/3"], "i must be between 0 and N-1"),
        (["--shard", "half"], "--shard takes i/N"),
        (["--max-size", "8"], "--max-size must be at least 16"),
        (["--threshold", "2"], "threshold must be between 0 and 1"),
        (["--mode", "topk", "--topk-per-category", "-1"], "must be a whole number"),
    ],
)
def test_bad_flags_get_a_sentence(folder: Path, tmp_path: Path, tiny_files, capsys, flags, message) -> None:
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(tmp_path / "out"), *flags)
    assert result.code == 2 and message in result.err
    assert not (tmp_path / "out").exists()


def test_manifest_records_what_the_run_means(folder: Path, tmp_path: Path, tiny_files, capsys) -> None:
    out = tmp_path / "out"
    assert run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--exclude", "meta 6").code == 0
    manifest = json.loads((out / "bulk.json").read_text())
    assert manifest["options"]["exclude"] == "meta 6"
    assert manifest["inputs"][0]["images"] == 5 and manifest["inputs"][0]["kind"] == "folder"
    assert manifest["checkpoint"].startswith(tiny_files[0].name)


def test_batches_group_images_by_token_count_and_padding_is_counted(tiny_tagger) -> None:
    import torch

    from tagger.bulk.decode import Decoded
    from tagger.bulk.inference import batches_by_tokens, count_tokens
    from tagger.bulk.sources import Record

    def item(index: int, height: int, width: int) -> Decoded:
        record = Record(index, f"k/{index}", f"p/{index}", "", ("bytes", b""))
        return Decoded(record, torch.zeros(3, height, width, dtype=torch.uint8))

    window = [item(0, 48, 48), item(1, 16, 32), item(2, 32, 32), item(3, 32, 16), item(4, 16, 16)]
    window.append(Decoded(Record(5, "k/5", "p/5", "", ("bytes", b"")), None, error="unreadable"))
    batches = batches_by_tokens(window, 2, patch=16)
    # Sorted by patches (1, 2, 2, 4, 9), then shape, cut in twos; the error is left out.
    assert [[i.record.index for i in b] for b in batches] == [[4, 1], [3, 2], [0]]
    # (real, padded) from the engine's plan: two sizes run as two passes, nothing padded.
    assert count_tokens(tiny_tagger, batches[1]) == (7 + 9, 7 + 9)


def test_an_output_that_cannot_be_written_stops_with_a_sentence(folder: Path, tmp_path: Path, tiny_files, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "txt").write_text("a file where the captions folder should be")
    result = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--txt-location", "out")
    assert result.code == 1
    assert "could not write the outputs" in result.err and "run again" in result.err
    assert "Traceback" not in result.err


def test_default_decoders_leave_a_small_cpu_to_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below four cores a decoding process would take half the model's threads: none then;
    a quarter of the cores above; with a GPU all cores but the one feeding it (at most 16)."""
    import torch

    from tagger.bulk.decode import default_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, on_gpu in [(1, 0, 1), (2, 0, 1), (3, 0, 2), (4, 1, 3), (16, 4, 15), (64, 16, 16)]:
        monkeypatch.setattr("os.cpu_count", lambda n=cores: n)
        assert (default_workers(cpu), default_workers(cuda)) == (on_cpu, on_gpu), cores
