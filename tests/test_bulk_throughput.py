"""Bulk keeps every GPU fed: decoders per GPU, small torch pools in GPU processes, the opt-in
reduced JPEG decode, and the Ray actor reading pixels from Arrow without a copy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from bulk_support import captions, run_bulk
from PIL import Image

from tagger.bulk import decode, sharding
from tagger.bulk.cli import build_parser
from tagger.bulk.decode import GPU_PROCESS_THREADS, default_workers, share_cores_with_decoders


def test_decoders_per_gpu_are_the_gpus_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 GPUs on 64 cores: 7 decoders each (8 × 8 = 64 processes), not 16 each (128)."""
    cuda = torch.device("cuda")
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.delenv(sharding.HOST_GPUS_ENV, raising=False)
    assert default_workers(cuda) == 16  # one GPU: all cores but one, at most 16
    for gpus, expected in [(2, 16), (4, 15), (8, 7), (64, 1), (100, 1)]:
        monkeypatch.setenv(sharding.HOST_GPUS_ENV, str(gpus))
        assert default_workers(cuda) == expected, gpus
        assert gpus * default_workers(cuda) <= max(64, gpus)
    monkeypatch.setenv(sharding.HOST_GPUS_ENV, "nonsense")
    assert default_workers(cuda) == 16


def test_gpus_all_tells_each_child_how_many_share_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharding, "visible_gpus", lambda: ["0", "1", "2"])
    workers = sharding.gpu_workers("all")
    assert [w.env for w in workers] == [
        {"CUDA_VISIBLE_DEVICES": gpu, sharding.HOST_GPUS_ENV: "3"} for gpu in ("0", "1", "2")
    ]
    assert [w.env[sharding.HOST_GPUS_ENV] for w in sharding.gpu_workers("0,2")] == ["2", "2"]


def test_a_gpu_process_keeps_a_small_torch_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(sharding.HOST_GPUS_ENV, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    try:
        share_cores_with_decoders(torch.device("cuda"), default_workers(torch.device("cuda")))
        assert torch.get_num_threads() == GPU_PROCESS_THREADS  # not 64
        share_cores_with_decoders(torch.device("cpu"), 16)
        assert torch.get_num_threads() == 48  # the CPU model gets what the decoders leave
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        share_cores_with_decoders(torch.device("cuda"), 15)
        assert torch.get_num_threads() == 48  # the user's setting wins
    finally:
        torch.set_num_threads(threads)


def test_reduced_decode_is_opt_in_and_tags_big_jpegs(tmp_path: Path, tiny_files, capsys) -> None:
    assert build_parser().parse_args(["x", "--out", "y"]).reduced_decode is False
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photo = Image.fromarray(coarse).resize((2400, 1800), Image.Resampling.BICUBIC)
    photo.save(folder / "photo.jpg", quality=90)
    seen: list[bool] = []
    original = decode.decode_locator

    def spy(locator, shown, prepare):  # type: ignore[no-untyped-def]
        seen.append(prepare.reduced_decode)
        return original(locator, shown, prepare)

    results = {}
    for flag in ([], ["--reduced-decode"]):
        out = tmp_path / ("reduced" if flag else "exact")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(decode, "decode_locator", spy)
            args = [str(folder), "--out", str(out), "--format", "txt", "--max-size", "128", "--txt-location", "out"]
            result = run_bulk(capsys, tiny_files, *args, *flag)
        assert result.code == 0, result.err
        results[bool(flag)] = captions(out)
    assert seen == [False, True]
    assert len(results[False]) == 1 and results[False].keys() == results[True].keys()
    assert all(results[False].values()) and all(results[True].values())  # a caption each time


def test_ray_actor_views_pixels_in_the_arrow_buffer_without_copying() -> None:
    from tagger.bulk.ray_engine import _pixel_views

    images = [np.arange(3 * 32 * 48, dtype=np.uint8).reshape(3, 32, 48) % 251, None, np.full((3, 16, 16), 7, np.uint8)]
    column = pa.array([None if a is None else a.tobytes() for a in images], pa.large_binary())
    table = pa.table(
        {
            "pixels": pa.chunked_array([column.slice(0, 2), column.slice(2)]),  # two chunks, one sliced
            "shape": pa.array([None if a is None else list(a.shape) for a in images], pa.list_(pa.int64())),
            "dtype": pa.array([None if a is None else "uint8" for a in images], pa.string()),
        }
    )
    views = _pixel_views(table)
    assert views[1] is None
    buffer = column.buffers()[2]
    for view, image in zip(views, images, strict=True):
        if image is None:
            continue
        assert torch.equal(view, torch.from_numpy(image))
        # The tensor's memory is inside Arrow's data buffer: nothing was copied.
        assert buffer.address <= view.data_ptr() < buffer.address + buffer.size


def test_reduced_decode_really_decodes_smaller() -> None:
    """The flag reaches Pillow's draft mode: a 12 MP JPEG at 512 px decodes at half scale."""
    from tagger.engine.preprocess import Preprocessor

    buffer = io.BytesIO()
    Image.new("RGB", (4032, 3024), (120, 80, 40)).save(buffer, "JPEG")
    exact = Preprocessor(512, 16, False)(buffer.getvalue())
    reduced = Preprocessor(512, 16, True)(buffer.getvalue())
    assert exact.shape == reduced.shape == (3, 384, 512)
    assert int((exact.int() - reduced.int()).abs().max()) <= 4
