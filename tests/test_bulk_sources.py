"""Bulk inputs: every kind lists its images in a fixed order with stable keys, and reads their bytes.

No model here: these tests only list and read. ``test_bulk.py`` runs the command end to end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from bulk_support import every_input_kind, write_images, write_tar
from support import image_bytes, write_zip

from tagger.bulk.decode import DecodePool
from tagger.bulk.sources import Inputs, InputSettings, Record, read_bytes
from tagger.errors import BulkError


def listing(*specs: str, **settings: object) -> list[Record]:
    return list(Inputs.open(list(specs), InputSettings(**settings)).records())  # type: ignore[arg-type]


def test_every_input_kind_lists_its_images_with_keys_and_reads_their_bytes(tmp_path: Path) -> None:
    inputs = every_input_kind(tmp_path)
    records = listing(*inputs.paths)
    assert [r.key for r in records] == inputs.keys
    assert [r.index for r in records] == list(range(len(records)))
    for record in records:
        assert record.error is None
        assert read_bytes(record.locator) == inputs.bytes_by_key[record.key], record.key
    # Listing twice gives the same order: positions (and so shards) are stable.
    assert [r.key for r in listing(*inputs.paths)] == inputs.keys


def test_folder_is_recursive_sorted_and_skips_hidden_files_and_non_images(tmp_path: Path) -> None:
    write_images(tmp_path / "data", ["b.png", "a.png", "sub/c.jpg", ".hidden/d.png", ".e.png", "z/deeper/f.png"])
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "a.txt").write_text("a caption")
    records = listing(str(tmp_path / "data"))
    assert [r.key for r in records] == ["data/a.png", "data/b.png", "data/sub/c.jpg", "data/z/deeper/f.png"]
    assert [r.concept for r in records] == ["", "", "sub", "z"]
    assert records[0].file == str(tmp_path / "data" / "a.png")  # captions may go beside it
    top = listing(str(tmp_path / "data"), recursive=False)
    assert [r.key for r in top] == ["data/a.png", "data/b.png"]


def test_zip_keeps_member_order_and_concepts_and_reports_escaping_names(tmp_path: Path) -> None:
    members = {
        "root/10_cat/a.png": image_bytes(20, 20, 1),
        "root/5_dog/b.png": image_bytes(20, 20, 2),
        "__MACOSX/root/._a.png": b"resource fork",
        "../evil.png": image_bytes(20, 20, 3),
        "root/readme.md": b"text",
    }
    records = listing(str(write_zip(tmp_path / "set.zip", members)))
    assert [r.key for r in records] == ["set.zip/root/10_cat/a.png", "set.zip/root/5_dog/b.png", "set.zip/__/evil.png"]
    assert [r.concept for r in records[:2]] == ["10_cat", "5_dog"]  # the wrapping folder is looked through
    assert records[2].error is not None and "outside the archive" in records[2].error
    assert read_bytes(records[1].locator) == members["root/5_dog/b.png"]
    assert records[0].file is None  # no caption can be written beside a zip member


def test_tar_members_are_read_at_their_offsets_and_sidecars_ignored(tmp_path: Path) -> None:
    members = {f"{i:06d}.png": image_bytes(16 + i, 16, i) for i in range(3)}
    sidecars = {f"{i:06d}.json": b"{}" for i in range(3)}
    path = write_tar(tmp_path / "wds.tar", {**members, **sidecars})
    records = listing(str(path))
    assert [r.key for r in records] == [f"wds.tar/{name}" for name in members]
    assert all(r.locator[0] == "tar" for r in records)  # random access: workers read in parallel
    assert [read_bytes(r.locator) for r in records] == list(members.values())
    gz = listing(str(write_tar(tmp_path / "wds.tar.gz", members, "w:gz")))
    assert [read_bytes(r.locator) for r in gz] == list(members.values())


@pytest.mark.parametrize("column", ["bytes", "struct", "path"])
def test_parquet_image_column_of_bytes_structs_or_paths(tmp_path: Path, column: str) -> None:
    images = [image_bytes(20, 30, 1), image_bytes(30, 20, 2), image_bytes(25, 25, 3)]
    if column == "bytes":
        table = pa.table({"caption": ["x", "y", "z"], "img": images})
    elif column == "struct":
        table = pa.table({"image": pa.array([{"bytes": b, "path": None} for b in images]), "id": ["a", "b", "c"]})
    else:
        for i, data in enumerate(images):
            (tmp_path / f"{i}.png").write_bytes(data)
        table = pa.table({"file_name": [f"{i}.png" for i in range(3)]})
    # Several row groups: locators must point into the right one.
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    records = listing(str(tmp_path / "t.parquet"))
    assert [r.key for r in records] == [f"t.parquet/{i:09d}" for i in range(3)]
    assert [read_bytes(r.locator) for r in records] == images


def test_parquet_key_column_and_clear_errors(tmp_path: Path) -> None:
    images = [image_bytes(20, 20, i) for i in range(2)]
    pq.write_table(pa.table({"id": ["cat-1", "cat-2"], "png": images}), tmp_path / "k.parquet")
    records = listing(str(tmp_path / "k.parquet"), key_column="id", image_column="png")
    assert [r.key for r in records] == ["k.parquet/cat-1", "k.parquet/cat-2"]
    pq.write_table(pa.table({"id": ["a", "a"], "png": images}), tmp_path / "dup.parquet")
    with pytest.raises(BulkError, match="repeated values"):
        listing(str(tmp_path / "dup.parquet"), key_column="id")
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "none.parquet")
    with pytest.raises(BulkError, match=r"no image column.*--image-column"):
        listing(str(tmp_path / "none.parquet"))
    with pytest.raises(BulkError, match="no column 'nope'"):
        listing(str(tmp_path / "k.parquet"), image_column="nope")


def test_saved_dataset_dict_needs_a_split_when_it_has_several(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image()})
    split = datasets.Dataset.from_dict({"image": [{"bytes": image_bytes(20, 20, 1), "path": None}]}, features)
    datasets.DatasetDict({"a": split, "b": split}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(BulkError, match="splits a, b; choose one with --split"):
        listing(str(tmp_path / "two"))
    records = listing(str(tmp_path / "two"), split="b")
    assert [r.key for r in records] == ["two/000000000"]
    assert read_bytes(records[0].locator) == image_bytes(20, 20, 1)


def test_labels_are_unique_and_bad_inputs_get_a_sentence(tmp_path: Path) -> None:
    write_images(tmp_path / "x" / "imgs", ["a.png"])
    write_images(tmp_path / "y" / "imgs", ["a.png"])
    records = listing(str(tmp_path / "x" / "imgs"), str(tmp_path / "y" / "imgs"))
    assert [r.key for r in records] == ["imgs/a.png", "imgs~2/a.png"]
    with pytest.raises(BulkError, match="does not exist"):
        listing(str(tmp_path / "missing"))
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    with pytest.raises(BulkError, match="Don't know how to read"):
        listing(str(tmp_path / "doc.pdf"))
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(BulkError, match="not a readable zip"):
        listing(str(tmp_path / "broken.zip"))


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_pool_keeps_input_order_and_turns_failures_into_sentences(
    tmp_path: Path, tiny_tagger, workers: int
) -> None:
    names = [f"{i:02d}.png" for i in range(9)]
    write_images(tmp_path / "d", names)
    (tmp_path / "d" / "04.png").write_bytes(b"broken")
    (tmp_path / "d" / "06.png").write_bytes(b"")
    records = listing(str(tmp_path / "d"))
    os.remove(records[7].locator[1])  # vanished after listing
    prepare = tiny_tagger.preprocessor
    with DecodePool(prepare, workers, prefetch=1) as pool:
        decoded = list(pool.map(records))
    assert [d.record.key for d in decoded] == [r.key for r in records]
    failed = {d.record.key.split("/")[-1]: d.error for d in decoded if d.error}
    assert set(failed) == {"04.png", "06.png", "07.png"}
    assert "not an image" in failed["04.png"] and str(tmp_path / "d" / "04.png") in failed["04.png"]
    assert "empty" in failed["06.png"]
    assert "No such file" in failed["07.png"]
    for item in decoded:
        if item.error is None:
            source = Path(item.record.locator[1])
            # The same pixels as Tagger.prepare: decoding workers run the engine's own preprocessing.
            assert torch.equal(item.pixels, tiny_tagger.prepare(source))
            assert (item.width, item.height) == tiny_tagger_size(source)


def tiny_tagger_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_a_hub_dataset_that_cannot_be_opened_is_reported_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    inputs = Inputs.open([f"hf:{tmp_path / 'empty'}"])
    with pytest.raises(BulkError, match="Could not open the dataset"):
        inputs.survey()
