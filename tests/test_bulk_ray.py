"""``--engine ray``: the Ray Data pipeline writes the same rows as the local engine, and resumes.

One small local Ray instance (two CPUs) serves the module; the tiny model runs in a CPU actor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bulk_support import captions, jsonl_lines, parquet_rows, run_bulk, start_local_ray, write_images

ray = pytest.importorskip("ray")

# Ray Data warns about its own deprecated settings when it copies its context.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray():
    started = start_local_ray()
    yield ray
    if started:
        ray.shutdown()


def test_ray_engine_writes_the_local_engines_rows_and_resumes_a_local_run(
    tmp_path: Path, tiny_files, capsys, local_ray
) -> None:
    from bulk_support import write_tar
    from support import image_bytes, write_zip

    folder = tmp_path / "data"
    write_images(folder, [f"c/{i}.png" for i in range(6)] + ["d/x.jpg", "d/y.png"])
    (folder / "bad.png").write_bytes(b"broken")
    zipped = write_zip(tmp_path / "z.zip", {"s/a.png": image_bytes(40, 24, 1), "s/b.png": image_bytes(24, 40, 2)})
    tar = write_tar(tmp_path / "w.tar", {"k/0.png": image_bytes(32, 32, 3), "k/0.json": b"{}"})
    inputs = [str(folder), str(zipped), str(tar)]
    args = ["--format", "txt,jsonl,parquet", "--txt-location", "out", "--descriptors", "--shard-size", "4"]
    args += ["--batch-size", "2", "--threshold", "0.4"]

    local = tmp_path / "local"
    result = run_bulk(capsys, tiny_files, *inputs, "--out", str(local), *args)
    assert result.code == 0, result.err
    assert "11 images tagged, 1 unreadable" in result.out

    # Half the shards by the local engine, then the rest by Ray in the same folder.
    mixed = tmp_path / "mixed"
    assert run_bulk(capsys, tiny_files, *inputs, "--out", str(mixed), *args, "--shard", "0/2").code == 0
    result = run_bulk(capsys, tiny_files, *inputs, "--out", str(mixed), *args, "--engine", "ray")
    assert result.code == 0, result.err
    # 12 images in shards of 4: the local run did shards 0 and 2 (bad.png sorts first, into
    # shard 0), Ray did shard 1.
    assert "4 images tagged, 0 unreadable, 8 already done" in result.out

    expected, rows = parquet_rows(local), parquet_rows(mixed)
    assert [r["key"] for r in rows] == [r["key"] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        for column in ("path", "sha256", "width", "height", "error", "tag_ids", "model_repo", "options_hash"):
            assert row[column] == want[column], (row["key"], column)
        if want["error"] is None:
            np.testing.assert_allclose(row["scores"], want["scores"], atol=1e-5)
            np.testing.assert_allclose(row["descriptor"], want["descriptor"], atol=1e-5)
    assert [line["filename"] for line in jsonl_lines(mixed)] == [line["filename"] for line in jsonl_lines(local)]
    assert captions(mixed / "txt") == captions(local / "txt")
