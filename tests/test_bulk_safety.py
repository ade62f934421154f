r"""The bulk command under careless or hostile use: runs sharing one ``--out``, file names that
are not UTF-8, links and pipes where images and captions should be, a huge Parquet cell, and
state files damaged by hand.

Every run is bounded: subprocesses get a timeout, and a run that must wait at a known point
waits for a file (``bulk_support.held_run``), never for a sleep to be long enough.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bulk_support import (
    captions,
    environment_for_subprocess,
    held_run,
    holding,
    jsonl_lines,
    model_args,
    parquet_rows,
    release,
    run_bulk,
    tree,
    write_images,
    write_tar,
)
from support import image_bytes, write_zip

from tagger.bulk import safefs, sources
from tagger.bulk.lock import overlaps
from tagger.bulk.names import escape_name, unescape_name
from tagger.bulk.sharding import ShardSpec

FORMATS = ["--format", "txt,jsonl,parquet", "--txt-location", "out", "--batch-size", "2", "--shard-size", "2"]
needs_posix = pytest.mark.skipif(os.name != "posix", reason="POSIX file names, links, pipes and flock")


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lock_holder(out: Path, name: str = "shard-0-of-1.lock") -> int | None:
    try:
        return int(json.loads((out / ".bulk" / "locks" / name).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


# ---------------------------------------------------------------------------------------------
# Two runs on one --out


@needs_posix
def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path: Path, tiny_files, capsys) -> None:
    """Two runs on one folder each replaced the other's files and both said all was done."""
    folder = tmp_path / "data"
    write_images(folder, [f"{i:02d}.png" for i in range(8)])
    out = tmp_path / "out"
    first = held_run(folder / "05.png", [str(folder), "--out", str(out), *FORMATS], tiny_files)
    try:
        wait_until(lambda: holding(folder / "05.png"), first, "the first run to reach image 05")
        assert lock_holder(out) == first.pid
        second = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), *FORMATS)
        assert second.code == 2
        assert f"Another bulk run is writing to {out} (pid {first.pid} on " in second.err
        assert "tagger.bulk" in second.err and "new --out folder" in second.err
        assert "Traceback" not in second.err
        # Runs that would share shards are refused as well; a disjoint --shard is not.
        assert "shares shards" in run_bulk(capsys, tiny_files, str(folder), "--out", str(out), "--shard", "1/2").err
    finally:
        release(folder / "05.png")
    code, err = finish(first)
    assert code == 0, err
    keys = [r["key"] for r in parquet_rows(out)]
    assert keys == sorted(f"data/{i:02d}.png" for i in range(8))  # nothing lost, nothing twice
    assert len(jsonl_lines(out)) == 8
    again = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), *FORMATS)
    assert again.code == 0 and "8 already done" in again.out  # the lock went with the first run


@needs_posix
def test_disjoint_shards_run_together_on_one_out(tmp_path: Path, tiny_files, capsys) -> None:
    folder = tmp_path / "data"
    write_images(folder, [f"{i:02d}.png" for i in range(8)])
    out = tmp_path / "out"
    args = [str(folder), "--out", str(out), *FORMATS]
    # Shard 0/2 holds at image 04 (shard 2), with a temporary file of its own in flight.
    first = held_run(folder / "04.png", [*args, "--shard", "0/2"], tiny_files)
    try:
        wait_until(lambda: holding(folder / "04.png"), first, "shard 0/2 to reach image 04")
        assert lock_holder(out, "shard-0-of-2.lock") == first.pid
        theirs = out / ".bulk" / "parts" / "shard-000002" / f".part-000000000004.parquet.{first.pid}-0a1b2c3d.tmp"
        theirs.parent.mkdir(parents=True, exist_ok=True)
        theirs.write_bytes(b"being written")
        overlapping = run_bulk(capsys, tiny_files, *args, "--shard", "2/4")  # shards 2, 6: 0/2's
        assert overlapping.code == 2 and "--shard 2/4 shares shards with another bulk run" in overlapping.err
        assert f"pid {first.pid}" in overlapping.err and "--shard 0/2" in overlapping.err
        other = run_bulk(capsys, tiny_files, *args, "--shard", "1/2")
        assert other.code == 0, other.err
        assert theirs.exists()  # a starting run removes only its own shards' leftovers
        theirs.unlink()
    finally:
        release(folder / "04.png")
    code, err = finish(first)
    assert code == 0, err
    assert [r["key"] for r in parquet_rows(out)] == sorted(f"data/{i:02d}.png" for i in range(8))


@needs_posix
def test_staggered_shard_runs_sharing_out_all_succeed_and_match_one_run(tmp_path: Path, tiny_files, capsys) -> None:
    """Four ``--shard i/4`` processes started a little apart on one folder (the README's recipe)."""
    folder = tmp_path / "data"
    write_images(folder, [f"{i:02d}.png" for i in range(16)])
    shared = tmp_path / "shared"
    base = [sys.executable, "-m", "tagger.bulk", str(folder), "--out", str(shared), *FORMATS, "--workers", "0"]
    base += [*model_args(tiny_files), "--quiet"]
    processes = []
    for index in range(4):
        command = [*base, "--shard", f"{index}/4"]
        env = environment_for_subprocess()
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3 * index)
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        results.append((process.returncode, out, err))
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]
    assert all("Traceback" not in err for _, _, err in results)
    assert sum(int(out.split(" images tagged")[0]) for _, out, _ in results) == 16
    whole = tmp_path / "whole"
    assert run_bulk(capsys, tiny_files, str(folder), "--out", str(whole), *FORMATS).code == 0
    assert tree(shared).keys() == tree(whole).keys()
    assert captions(shared / "txt") == captions(whole / "txt")
    assert [line["filename"] for line in jsonl_lines(shared)] == [line["filename"] for line in jsonl_lines(whole)]
    for a, b in zip(parquet_rows(shared), parquet_rows(whole), strict=True):
        assert a["key"] == b["key"] and a["tag_ids"] == b["tag_ids"] and a["sha256"] == b["sha256"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    assert not list(shared.rglob("*.tmp"))


def test_shard_specs_overlap_exactly_when_they_share_a_shard() -> None:
    for a in [ShardSpec(i, n) for n in range(1, 7) for i in range(n)]:
        for b in [ShardSpec(i, n) for n in range(1, 7) for i in range(n)]:
            shared = any(a.owns(k) and b.owns(k) for k in range(60))
            assert overlaps(a, b) == shared, (a, b)


# ---------------------------------------------------------------------------------------------
# File names that are not UTF-8


def test_name_escapes_round_trip_and_leave_utf8_names_alone() -> None:
    for raw in [b"caf\xe9.png", b"a\\xe9.png", b"\\\xe9", b"x\\x5c\xff\\", b"\xff\xfe/\x80.jpg"]:
        name = os.fsdecode(raw)
        escaped = escape_name(name)
        escaped.encode("utf-8")  # writable as text
        assert os.fsencode(unescape_name(escaped)) == raw
    for name in ["plain/été.png", "a\\b.png", "日本/猫.webp", "x\\y\\"]:
        assert escape_name(name) == name and unescape_name(name) == name
    assert escape_name(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"


@needs_posix
def test_names_that_are_not_utf8_are_kept_escaped_and_resume(tmp_path: Path, tiny_files, capsys) -> None:
    """Such a name crashed the JSONL and Parquet writers, and every resume at the same batch."""
    folder = tmp_path / "data"
    write_images(folder, ["a.png", "b.png"])
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    try:
        with open(raw, "wb") as fp:
            fp.write(image_bytes(40, 40, 5))
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    tar = tmp_path / "pack.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo(os.fsdecode(b"s/th\xe9.png"))
        data = image_bytes(32, 48, 6)
        info.size = len(data)
        import io

        archive.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    args = [str(folder), str(tar), "--out", str(out), "--format", "txt,jsonl,parquet", "--shard-size", "2"]
    result = run_bulk(capsys, tiny_files, *args)
    assert result.code == 0, result.err
    assert "4 images tagged, 0 unreadable" in result.out
    keys = [r["key"] for r in parquet_rows(out)]
    assert keys == ["data/a.png", "data/b.png", "data/caf\\xe9.png", "pack.tar/s/th\\xe9.png"]
    assert sorted(line["filename"] for line in jsonl_lines(out)) == keys
    assert os.fsencode(unescape_name(keys[2])) == b"data/caf\xe9.png"
    # Captions keep the image's own bytes, so a trainer pairs them by stem.
    assert b"caf\xe9.txt" in os.listdir(os.fsencode(folder))
    assert b"th\xe9.txt" in os.listdir(os.path.join(os.fsencode(out), b"txt", b"pack.tar", b"s"))
    again = run_bulk(capsys, tiny_files, *args)
    assert again.code == 0 and "4 already done" in again.out


# ---------------------------------------------------------------------------------------------
# Links, pipes, devices


@needs_posix
def test_links_pipes_and_devices_are_skipped_with_a_line_and_never_hang(tmp_path: Path, tiny_files) -> None:
    folder = tmp_path / "data"
    write_images(folder, ["a.png"])
    private = tmp_path / "private" / "key.png"
    private.parent.mkdir()
    private.write_bytes(image_bytes(40, 40, 3))
    (folder / "link.png").symlink_to(private)
    (folder / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.png")  # nobody writes to it: reading it would wait forever
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tagger.bulk", str(folder), "--format", "txt,parquet"]
    command += [*model_args(tiny_files), "--quiet"]
    for workers in ("0", "2"):  # inline, and in decoding processes
        result = subprocess.run(
            [*command, "--workers", workers, "--out", str(out / workers)],
            env=environment_for_subprocess(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        assert "1 images tagged, 3 unreadable" in result.stdout
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 3, result.stderr
        assert "link.png: it is a symbolic link" in result.stderr
        assert "zero.png: it is a symbolic link" in result.stderr
        assert "pipe.png: it is a named pipe (FIFO)" in result.stderr
        assert "MemoryError" not in result.stderr and "Traceback" not in result.stderr
        errors = {r["key"]: r["error"] for r in parquet_rows(out / workers) if r["error"]}
        assert set(errors) == {"data/link.png", "data/zero.png", "data/pipe.png"}
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a.txt", "link.png", "pipe.png", "zero.png"]


@needs_posix
@pytest.mark.parametrize("target", ["private", "/dev/zero"])
def test_append_never_reads_or_writes_a_caption_through_a_link(target: str, tmp_path: Path, tiny_files, capsys):
    """A caption linked to a private file had that file's text copied into the dataset."""
    folder = tmp_path / "data"
    write_images(folder, ["a.png", "b.png"])
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2, do not copy", encoding="utf-8")
    link = folder / "a.txt"
    link.symlink_to(secret if target == "private" else Path(target))
    out = tmp_path / "out"
    result = run_bulk(
        capsys, tiny_files, str(folder), "--out", str(out), "--on-existing", "append", "--format", "txt,jsonl"
    )
    assert result.code == 0, result.err
    assert f"Left the caption {link} alone: it is a symbolic link" in result.err
    assert "2 images tagged" in result.out and "1 captions left alone" in result.out
    assert link.is_symlink() and os.readlink(link) == str(secret if target == "private" else target)
    assert secret.read_text(encoding="utf-8") == "hunter2, do not copy"
    assert (folder / "b.txt").read_text(encoding="utf-8")  # the other caption was written
    everything = b"".join(tree(out).values()) + (folder / "b.txt").read_bytes()
    assert b"hunter2" not in everything


@needs_posix
def test_a_link_planted_at_a_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    from tagger.bulk.outputs import write_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("unchanged")
    target = tmp_path / "out" / "a.txt"
    target.parent.mkdir()
    created = safefs.create_exclusive
    planted: list[Path] = []

    def plant_then_create(path: Path):  # type: ignore[no-untyped-def]
        path.symlink_to(victim)  # someone guessed the name
        planted.append(path)
        return created(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tagger.bulk.outputs.create_exclusive", plant_then_create)
        with pytest.raises(FileExistsError):
            write_atomic(target, b"caption")
    assert victim.read_text() == "unchanged" and not target.exists()


# ---------------------------------------------------------------------------------------------
# Sizes and damaged state


def test_a_huge_parquet_cell_is_refused_with_a_sentence(tmp_path: Path, tiny_files, capsys, monkeypatch) -> None:
    """A 1000 MiB cell in a 33 KB file took 6.45 GB; the cap is lowered here to keep the test small.
    Only that cell is refused: the other rows of its row group (and page) are tagged."""
    monkeypatch.setattr(safefs, "MAX_IMAGE_BYTES", 1024 * 1024)
    table = pa.table({"image": pa.array([image_bytes(40, 40, 1), bytes(8 * 1024 * 1024), image_bytes(48, 32, 2)])})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    assert path.stat().st_size < 64 * 1024 and pq.ParquetFile(path).metadata.num_row_groups == 1
    big = tmp_path / "big.png"
    big.write_bytes(image_bytes(40, 40, 4) + bytes(2 * 1024 * 1024))  # a file over the cap too
    huge = bytes(3 * 1024 * 1024)
    write_tar(tmp_path / "m.tar", {"m/big.png": huge})  # and archive members, refused from their size
    write_zip(tmp_path / "m.zip", {"z/big.png": huge})
    out = tmp_path / "out"
    inputs = [str(path), str(big), str(tmp_path / "m.tar"), str(tmp_path / "m.zip")]
    result = run_bulk(capsys, tiny_files, *inputs, "--out", str(out), "--format", "parquet")
    assert result.code == 0, result.err
    assert "2 images tagged, 4 unreadable" in result.out
    assert "t.parquet#1: it is 8,388,608 bytes, over the limit of 1 MiB per image" in result.err
    assert "big.png: it is 2," in result.err and "over the limit of 1 MiB per image" in result.err
    for member in ("m.tar/m/big.png", "m.zip/z/big.png"):
        assert f"{member}: it is 3,145,728 bytes, over the limit of 1 MiB per image" in result.err
    assert [r["key"] for r in parquet_rows(out) if r["error"] is None] == ["t.parquet/000000000", "t.parquet/000000002"]


_PEAK_OF_READING = """
import resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from tagger.bulk import safefs, sources
safefs.MAX_IMAGE_BYTES = int(sys.argv[2])
warm = sys.argv[1] + ".warm"
pq.write_table(pa.table({"image": pa.array([b"x" * 100] * 2)}), warm, compression="zstd")
sources.read_bytes(("parquet", warm, 0, 1, "image"))  # pyarrow and the readers loaded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for row in range(int(sys.argv[3])):
    try:
        print(len(sources.read_bytes(("parquet", sys.argv[1], 0, row, "image"))))
    except OSError as e:
        print(e)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def _peak_of_reading(path: Path, cap: int, rows: int) -> tuple[list[str], int]:
    """What reading each row of ``path`` in a fresh process says, and how much its peak RSS grew (bytes)."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_READING, str(path), str(cap), str(rows)],
        env=environment_for_subprocess(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *lines, grown_kb = done.stdout.strip().splitlines()
    return lines, int(grown_kb) * 1024


def test_a_huge_parquet_cell_is_refused_without_decompressing_it_and_its_neighbours_read(tmp_path: Path) -> None:
    """One page of [small, 128 MiB of zeros, small]: pyarrow would grow by about four cells."""
    cell, small = 128 * 1024 * 1024, image_bytes(40, 40, 1)
    data = pa.py_buffer(small + bytes(cell) + small)
    offsets = pa.py_buffer(np.array([0, len(small), len(small) + cell, 2 * len(small) + cell], np.int64).tobytes())
    column = pa.Array.from_buffers(pa.large_binary(), 3, [None, offsets, data])
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": column}), path, compression="zstd")
    del data, column
    assert path.stat().st_size < 64 * 1024
    lines, grown = _peak_of_reading(path, 1024 * 1024, 3)
    assert lines == [str(len(small)), f"it is {cell:,} bytes, over the limit of 1 MiB per image", str(len(small))]
    assert grown < cell // 16


def test_a_page_of_many_cells_under_the_cap_is_read_holding_about_one_cell(tmp_path: Path) -> None:
    """Eight 15 MiB cells in one 120 MiB page, cap 16 MiB: pyarrow grew by 463 MB, this by about two cells."""
    cap, cell = 16 * 1024 * 1024, 15 * 1024 * 1024
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": pa.array([bytes([i]) * cell for i in range(8)])}), path, compression="zstd")
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert chunk.total_uncompressed_size > 7 * cap  # one page (two with the dictionary's index page)
    lines, grown = _peak_of_reading(path, cap, 8)
    assert lines == [str(cell)] * 8
    assert grown < 3 * cap


def test_a_snappy_page_over_four_caps_is_refused_and_other_pages_read(tmp_path: Path, tiny_files, capsys, monkeypatch):
    """snappy and LZ4 pages are decompressed whole: over 4 × the cap, their rows are refused."""
    monkeypatch.setattr(safefs, "MAX_IMAGE_BYTES", 1024 * 1024)
    rng = np.random.default_rng(3)
    images = [image_bytes(32 + i, 32, i) + rng.bytes(600 * 1024) for i in range(8)]  # one page of 4.8 MB
    path = tmp_path / "t.parquet"
    with pq.ParquetWriter(path, pa.schema([("image", pa.binary())]), compression="snappy") as writer:
        writer.write_table(pa.table({"image": images}))
        writer.write_table(pa.table({"image": images[:2]}))  # a second row group, within the budget
    out = tmp_path / "out"
    result = run_bulk(capsys, tiny_files, str(path), "--out", str(out), "--format", "parquet")
    assert result.code == 0, result.err
    assert "2 images tagged, 8 unreadable" in result.out
    assert "t.parquet#7: its page of 4," in result.err
    assert "is compressed with snappy, which is decompressed whole, and is over the limit of 4 MiB" in result.err
    assert [r["key"] for r in parquet_rows(out) if r["error"] is None] == ["t.parquet/000000008", "t.parquet/000000009"]


@pytest.mark.parametrize(
    ("compression", "version", "struct"), [("zstd", "1.0", False), ("snappy", "2.0", True), ("none", "1.0", True)]
)
def test_a_row_group_of_many_images_bigger_than_the_cap_is_all_tagged(
    tmp_path: Path, tiny_files, capsys, monkeypatch, compression: str, version: str, struct: bool
) -> None:
    """As ``datasets`` writes them: many images in one row group (often one page) far over the cap."""
    monkeypatch.setattr(safefs, "MAX_IMAGE_BYTES", 1024 * 1024)
    rng = np.random.default_rng(7)
    images = [image_bytes(32 + i, 32, i) + rng.bytes(300 * 1024) for i in range(12)]  # each decodes, none compresses
    values = pa.array([{"bytes": b, "path": None} for b in images]) if struct else pa.array(images)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": values}), path, compression=compression, data_page_version=version)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).total_uncompressed_size > 3 * 1024 * 1024
    out = tmp_path / "out"
    result = run_bulk(capsys, tiny_files, str(path), "--out", str(out), "--format", "parquet", "--workers", "2")
    assert result.code == 0, result.err
    assert "12 images tagged, 0 unreadable" in result.out, result.out
    assert [r["error"] for r in parquet_rows(out)] == [None] * 12


@pytest.mark.parametrize("compression", ["zstd", "gzip", "brotli", "snappy", "lz4", "none"])
@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("dictionary", [True, False])
def test_every_codec_gives_each_cell_and_refuses_only_the_one_over_the_cap(
    tmp_path: Path, compression: str, version: str, dictionary: bool
) -> None:
    cells = [{"bytes": b"a" * 100, "path": None}, {"bytes": bytes(3 * 1024 * 1024), "path": "x"}, None]
    cells.append({"bytes": b"", "path": "y.png"})
    path = tmp_path / "t.parquet"
    table = pa.table({"image": pa.array(cells)})
    pq.write_table(table, path, compression=compression, data_page_version=version, use_dictionary=dictionary)
    for cap in (1024 * 1024, 4 * 1024 * 1024):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(safefs, "MAX_IMAGE_BYTES", cap)
            patch.setattr(sources, "_cache", None)  # a fresh reader for this cap
            found: list[object] = []
            for row in range(4):
                try:
                    found.append(sources._parquet_cell(sources._reader_cache(), str(path), 0, row, "image"))
                except OSError as e:
                    found.append(str(e))
        middle = (bytes(3 << 20), "x") if cap > 3 << 20 else safefs.size_limit_sentence(3 << 20, cap)
        assert found == [(b"a" * 100, None), middle, (None, None), (None, "y.png")]


def test_a_column_in_another_encoding_is_read_by_pyarrow_when_its_pages_are_small(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(safefs, "MAX_IMAGE_BYTES", 1024 * 1024)
    monkeypatch.setattr(sources, "_cache", None)
    path = tmp_path / "t.parquet"
    table = pa.table({"image": pa.array([b"a" * 100, b"b" * 200], pa.binary())})
    pq.write_table(table, path, use_dictionary=False, column_encoding={"image": "DELTA_LENGTH_BYTE_ARRAY"})
    assert sources.read_bytes(("parquet", str(path), 0, 1, "image")) == b"b" * 200
    table = pa.table({"image": pa.array([b"a" * 100, bytes(2 * 1024 * 1024)], pa.binary())})
    pq.write_table(table, path, use_dictionary=False, column_encoding={"image": "DELTA_LENGTH_BYTE_ARRAY"})
    monkeypatch.setattr(sources, "_cache", None)
    with pytest.raises(OSError, match="its row group 0 was not read: it has a page of 2,097,"):
        sources.read_bytes(("parquet", str(path), 0, 0, "image"))


def test_a_saved_dataset_cell_over_the_cap_is_refused_and_the_others_tagged(
    tmp_path: Path, tiny_files, capsys, monkeypatch
) -> None:
    import datasets

    monkeypatch.setattr(safefs, "MAX_IMAGE_BYTES", 1024 * 1024)
    cells = [image_bytes(40, 40, 1), bytes(3 * 1024 * 1024), image_bytes(48, 32, 2)]
    features = datasets.Features({"image": datasets.Image()})
    rows = {"image": [{"bytes": b, "path": None} for b in cells]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    result = run_bulk(capsys, tiny_files, str(tmp_path / "ds"), "--out", str(out), "--format", "parquet")
    assert result.code == 0, result.err
    assert "2 images tagged, 1 unreadable" in result.out
    assert "ds#1: it is 3,145,728 bytes, over the limit of 1 MiB per image" in result.err
    assert [r["key"] for r in parquet_rows(out) if r["error"] is None] == ["ds/000000000", "ds/000000002"]


def test_a_zip_whose_names_claim_utf8_but_are_not_gets_a_sentence(tmp_path: Path, tiny_files, capsys) -> None:
    archive = write_zip(tmp_path / "a.zip", {"caf\u00e9.png": image_bytes(32, 32, 1)})
    archive.write_bytes(archive.read_bytes().replace("caf\u00e9".encode(), b"caf\xe9!"))  # UTF-8 flag kept
    result = run_bulk(capsys, tiny_files, str(archive), "--out", str(tmp_path / "out"))
    assert result.code == 2 and "is not a readable zip archive" in result.err and "Traceback" not in result.err


def _damage(out: Path, what: str) -> Path:
    if what.startswith("manifest"):
        path = out / "bulk.json"
        manifest = json.loads(path.read_text())
        text = {
            "manifest-garbage": "{not json",
            "manifest-list": "[]",
            "manifest-edited": json.dumps({**manifest, "inputs": "by hand", "options": 3}),
        }[what]
        path.write_text(text)
        return path
    if what.startswith("marker"):
        path = out / ".bulk" / "done" / "shard-000001.json"
        path.write_text({"marker-garbage": "{{", "marker-edited": '{"shard": 1, "images": "two"}'}[what])
        return path
    path = out / ".bulk" / "parts" / "shard-000007" / "part-000000000014.parquet"
    path.parent.mkdir(parents=True)
    if what == "part-garbage":
        path.write_bytes(b"PAR1 not really a parquet file PAR1")
    else:
        pq.write_table(pa.table({"index": [14], "key": [3]}), path)
    return path


@pytest.mark.parametrize(
    "what",
    [
        "manifest-garbage",
        "manifest-list",
        "manifest-edited",
        "marker-garbage",
        "marker-edited",
        "part-garbage",
        "part-edited",
    ],
)
def test_a_damaged_state_file_is_named_with_what_to_do(what: str, tmp_path: Path, tiny_files, capsys) -> None:
    folder = tmp_path / "data"
    write_images(folder, [f"{i}.png" for i in range(4)])
    out = tmp_path / "out"
    args = [str(folder), "--out", str(out), "--format", "jsonl", "--shard-size", "2"]
    assert run_bulk(capsys, tiny_files, *args).code == 0
    path = _damage(out, what)
    result = run_bulk(capsys, tiny_files, *args)
    assert result.code == 2
    assert "Traceback" not in result.err and str(path) in result.err
    assert "delete it" in result.err or "new --out folder" in result.err or "move it away" in result.err
    assert len(result.err.strip().splitlines()) == 1
    if what.startswith(("marker", "part")):  # doing what the sentence says repairs the folder
        path.unlink()
        repaired = run_bulk(capsys, tiny_files, *args)
        assert repaired.code == 0, repaired.err
        assert sorted(line["filename"] for line in jsonl_lines(out)) == [f"data/{i}.png" for i in range(4)]


@needs_posix
def test_devices_and_folders_are_never_read(tmp_path: Path) -> None:
    with pytest.raises(safefs.NotRegularFile, match="it is a device, not a regular file"):
        safefs.read_regular("/dev/zero", safefs.MAX_IMAGE_BYTES)
    with pytest.raises(safefs.NotRegularFile, match="it is a folder"):
        safefs.read_regular(tmp_path, safefs.MAX_IMAGE_BYTES)
