"""Resume: a bulk run killed at a known point picks up where it stopped, with the same outputs.

To kill the run at a known point without timing games, the run holds before reading one
image (``bulk_support.held_run``), after committing everything before it. The test then kills
the process with SIGKILL and runs the command again.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from bulk_support import (
    captions,
    environment_for_subprocess,
    held_run,
    jsonl_lines,
    model_args,
    parquet_rows,
    run_bulk,
    write_images,
)

from tagger.bulk.sharding import ShardSpec, Worker, launch_workers

ARGS = ["--format", "txt,jsonl,parquet", "--txt-location", "out", "--batch-size", "2", "--shard-size", "12"]


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early with status {process.returncode}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run did not reach the blocking image in time")
        time.sleep(0.05)


def test_killed_mid_run_resumes_to_the_same_outputs_without_duplicates(tmp_path: Path, tiny_files, capsys) -> None:
    names = [f"{i:02d}.png" for i in range(30)]
    folder = tmp_path / "data"
    write_images(folder, names)
    out = tmp_path / "out"
    process = held_run(folder / "22.png", [str(folder), "--out", str(out), *ARGS], tiny_files)
    parts = out / ".bulk" / "parts" / "shard-000001"
    # Shard 0 (images 0-11) completes; shard 1 commits images 12-19 (4 batches), then the run
    # blocks on image 22 while images 20-21 wait in the next window.
    wait_for(lambda: len(list(parts.glob("part-*.parquet"))) == 4, process)
    time.sleep(0.2)
    process.kill()
    process.wait()
    assert (out / ".bulk" / "done" / "shard-000000.json").exists()
    assert not (out / "parquet" / "shard-000001.parquet").exists()
    for part in parts.glob("*.parquet"):
        assert pq.read_table(part).num_rows == 2  # committed parts are whole
    assert len(captions(out / "txt")) == 20

    # A write the kill interrupted leaves only a temporary file: never read, removed on resume.
    (parts / ".part-000000000020.parquet.999.tmp").write_bytes(b"PAR1 half a file")
    resumed = run_bulk(capsys, tiny_files, str(folder), "--out", str(out), *ARGS)
    assert resumed.code == 0, resumed.err
    assert "10 images tagged" in resumed.out and "20 already done" in resumed.out
    assert not list((out / ".bulk").rglob("*.tmp")) and not parts.exists()

    clean = tmp_path / "clean"
    assert run_bulk(capsys, tiny_files, str(folder), "--out", str(clean), *ARGS).code == 0
    rows, expected = parquet_rows(out), parquet_rows(clean)
    assert [r["key"] for r in rows] == [r["key"] for r in expected] == sorted(f"data/{n}" for n in names)
    for row, want in zip(rows, expected, strict=True):
        assert row["tag_ids"] == want["tag_ids"] and row["sha256"] == want["sha256"]
        np.testing.assert_allclose(row["scores"], want["scores"], atol=1e-6)
    lines = jsonl_lines(out)
    assert len(lines) == len({line["filename"] for line in lines}) == 30
    assert [line["filename"] for line in lines] == [line["filename"] for line in jsonl_lines(clean)]
    assert captions(out / "txt") == captions(clean / "txt")


def test_one_worker_process_per_device_share_the_work(tmp_path: Path, tiny_files, monkeypatch) -> None:
    """``--gpus`` machinery: two CPU "devices" stand in for two GPUs."""
    folder = tmp_path / "data"
    write_images(folder, [f"{i:02d}.png" for i in range(10)])
    out = tmp_path / "out"
    monkeypatch.setenv("PYTHONPATH", environment_for_subprocess()["PYTHONPATH"])
    argv = [str(folder), "--out", str(out), "--format", "parquet", "--shard-size", "3", "--workers", "0", "--quiet"]
    argv += [a for a in model_args(tiny_files) if a not in ("--device", "cpu")]
    workers = [Worker("cpu-a", "cpu", {}), Worker("cpu-b", "cpu", {})]
    assert launch_workers(argv, workers, ShardSpec()) == 0
    keys = [r["key"] for r in parquet_rows(out)]
    assert len(keys) == len(set(keys)) == 10
    # Worker a took shards 0 and 2 (--shard 0/2), worker b shards 1 and 3: each completed once.
    assert sorted(p.name for p in (out / "parquet").iterdir()) == [f"shard-00000{i}.parquet" for i in range(4)]


def test_a_worker_killed_by_a_signal_fails_the_run(monkeypatch) -> None:
    """A worker the OOM killer ends (wait() -9) must not let the run exit 0: 137, as a shell says."""
    statuses = iter([0, -9])

    class Child:
        def __init__(self, command, env) -> None:
            self.status = next(statuses)

        def wait(self) -> int:
            return self.status

    monkeypatch.setattr("tagger.bulk.sharding.subprocess.Popen", Child)
    workers = [Worker("cpu-a", "cpu", {}), Worker("cpu-b", "cpu", {})]
    assert launch_workers(["data", "--out", "out"], workers, ShardSpec()) == 137
