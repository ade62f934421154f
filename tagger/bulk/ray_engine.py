"""``--engine ray``: the same pipeline on Ray Data, for a cluster (an optional extra).

    from_items(records) → map_batches(decode_batch)         CPU tasks, as many as Ray schedules
                        → map_batches(TagActor, num_gpus=1)  one model per actor, loaded once,
                                                             with CPUs of its own
                        → write_datasink(BulkDatasink)       captions and parts, on the workers

The driver makes the local engine's plan (shards, resume, captions kept) and sends the records
to tag; the stages run the local engine's own functions (``decode_locator``, ``batches_by_tokens``,
``score_batch``, ``batch_rows``) and ``OutputWriter``, so both engines write the same rows; the
driver completes the shards after the write. A Ray run killed midway leaves committed parts, and
the next run, with either engine, resumes after them. The actor reads pixels straight from the
decode tasks' Arrow buffers (no copy), and formats batch i's rows in a thread while the model
runs batch i + 1.

Inputs must be readable from every node (a shared file system) and cannot be streamed:
compressed tars and ``hf:`` datasets are refused. Every node needs this package and the model
files (or Hub access: each actor resolves them like the local engine).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagger.bulk.decode import GPU_PROCESS_THREADS, Decoded, decode_locator
from tagger.bulk.inference import batch_rows, batches_by_tokens, count_tokens, error_row, score_batch
from tagger.bulk.local import WINDOW_BATCHES
from tagger.bulk.names import escape_name, unescape_name
from tagger.bulk.outputs import OutputWriter, TagRow, WriteCounts, rows_table
from tagger.bulk.plan import Kept, Plan, ShardEnd
from tagger.bulk.progress import Progress, Summary
from tagger.bulk.sources import Record
from tagger.engine.hub import ModelFiles
from tagger.engine.preprocess import Preprocessor
from tagger.errors import BulkError
from tagger.tags.options import TagOptions

try:
    Datasink: Any = importlib.import_module("ray.data").Datasink
except ImportError:  # the extra is not installed: run_ray says how to get it
    Datasink = object  # a stand-in base class, never instantiated

DECODE_BATCH = 16
# CPUs a GPU actor reserves: the thread feeding the GPU and the one formatting rows. Without a
# reservation (num_cpus=0) decode tasks take every core and the actor waits for one.
ACTOR_CPUS_ON_GPU = GPU_PROCESS_THREADS
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


# The fields of a Record that travel with it through the pipeline, as columns of the same names.
RECORD_COLUMNS = ("index", "shard", "key", "path", "concept", "locator", "caption_file", "error")


def _record_item(record: Record) -> dict[str, Any]:
    item = {name: getattr(record, name) for name in RECORD_COLUMNS}
    item["locator"] = json.dumps(list(record.locator))
    item["caption_file"] = None if record.caption_file is None else escape_name(record.caption_file)  # Arrow text
    return item


def _item_record(item: dict[str, Any]) -> Record:
    fields = {name: item[name] for name in RECORD_COLUMNS}
    fields["locator"] = tuple(json.loads(item["locator"]))
    return Record(**fields)


def decode_batch(table: Any, prepare: Preprocessor) -> Any:
    """The CPU stage: read, hash, measure and prepare each image (pixels as raw bytes + shape)."""
    import pyarrow as pa

    types = {"error": pa.string(), "sha256": pa.string(), "width": pa.int32(), "height": pa.int32()}
    types |= {"pixels": pa.large_binary(), "shape": pa.list_(pa.int64()), "dtype": pa.string()}
    out: dict[str, list[Any]] = {name: [] for name in types}
    for item in table.to_pylist():
        error = item["error"]
        pixels = digest = width = height = None
        if error is None:
            pixels, digest, width, height, error = decode_locator(
                tuple(json.loads(item["locator"])), item["path"], prepare
            )
        array = None if pixels is None else np.ascontiguousarray(np.asarray(pixels))
        raw = (None, None, None) if array is None else (array.tobytes(), list(array.shape), str(array.dtype))
        row = dict(error=error, sha256=digest, width=width, height=height, pixels=raw[0], shape=raw[1], dtype=raw[2])
        for name, value in row.items():
            out[name].append(value)
    columns = {name: table.column(name) for name in RECORD_COLUMNS if name != "error"}  # error: decoding's own
    return pa.table(columns | {name: pa.array(values, types[name]) for name, values in out.items()})


def _pixel_views(table: Any) -> list[torch.Tensor | None]:
    """Each row's pixels as a tensor over the Arrow column's own buffer (no copy; read-only
    memory, which the model only reads)."""
    views: list[torch.Tensor | None] = []
    shapes, dtypes = table.column("shape").to_pylist(), table.column("dtype").to_pylist()
    for chunk in table.column("pixels").chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = chunk.buffers()[2]
        for i in range(len(chunk)):
            row = len(views)
            if not chunk[i].is_valid:
                views.append(None)
                continue
            dtype = np.dtype(dtypes[row])
            start, end = int(offsets[i]), int(offsets[i + 1])
            array = np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start)
            with warnings.catch_warnings():  # "not writable": the buffer is Arrow's and stays unwritten
                warnings.simplefilter("ignore", UserWarning)
                views.append(torch.from_numpy(array.reshape(shapes[row])))
    return views


def _table_rows(table: Any) -> list[TagRow]:
    plain = ("index", "shard", "key", "path", "sha256", "width", "height", "error", "caption")
    return [
        TagRow(
            **{name: item[name] for name in plain},
            tag_ids=np.asarray(item["tag_ids"], dtype=np.int32),
            scores=np.asarray(item["scores"], dtype=np.float32),
            json_line=item["json"],
            caption_file=None if item["caption_file"] is None else unescape_name(item["caption_file"]),
            descriptor=None if item.get("descriptor") is None else np.asarray(item["descriptor"], dtype=np.float32),
        )
        for item in table.to_pylist()
    ]


class TagActor:
    """The GPU stage: one model per actor, loaded once; each call tags one window of images."""

    def __init__(self, model: dict[str, Any], options: dict[str, Any], batch_size: int, descriptors: bool):
        from tagger.engine.hub import resolve_model_files
        from tagger.engine.tagger import Tagger
        from tagger.tags.relations import attach_sources

        files = resolve_model_files(model["checkpoint"], model["vocab"], repo=model["repo"], revision=model["revision"])
        self.tagger = Tagger(
            files.checkpoint,
            files.vocab,
            device=model["device"],
            dtype=model["dtype"],
            max_size=model["max_size"],
            max_batch_size=batch_size,
        )
        # Relations load once per actor process, from the same sources (URLs: the cached download).
        attach_sources(
            self.tagger.vocab, model["implications"], model["aliases"], repo=model["repo"], revision=model["revision"]
        )
        if self.tagger.device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(ACTOR_CPUS_ON_GPU)
        self.options, self.batch_size, self.descriptors = TagOptions.from_values(**options), batch_size, descriptors
        self._formatter = ThreadPoolExecutor(1, thread_name_prefix="tag-rows")

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        meta = table.drop_columns(["pixels"]).to_pylist()  # the decode stage's table, pixels viewed in place
        window = [
            Decoded(_item_record(item), pixels, item["sha256"], item["width"], item["height"], item["error"])
            for item, pixels in zip(meta, _pixel_views(table), strict=True)
        ]
        rows = [error_row(item) for item in window if item.pixels is None]
        # Each batch's token counts ride on its first row (the write stage sums them).
        tokens, padded = [0] * len(rows), [0] * len(rows)
        formatted: list[Future[list[TagRow]]] = []
        for batch in batches_by_tokens(window, self.batch_size, self.tagger.model.config.patch_size):
            real, computed = count_tokens(self.tagger, batch)
            probabilities, features = score_batch(self.tagger, batch, self.descriptors)
            formatted.append(
                self._formatter.submit(batch_rows, self.tagger, batch, probabilities, features, self.options)
            )
            tokens += [real] + [0] * (len(batch) - 1)
            padded += [computed] + [0] * (len(batch) - 1)
        for future in formatted:
            rows += future.result()
        out = rows_table(rows, self.descriptors)  # the part's columns, then what the write stage needs besides
        out = out.append_column("shard", pa.array([r.shard for r in rows], pa.int64()))
        out = out.append_column("caption_file", pa.array([r.caption_file for r in rows], pa.string()))
        out = out.append_column("caption", pa.array([r.caption for r in rows], pa.string()))
        out = out.append_column("tokens", pa.array(tokens, pa.int64()))
        return out.append_column("padded", pa.array(padded, pa.int64()))


class BulkDatasink(Datasink):
    """Writes each block's captions and parts with the local engine's ``OutputWriter``."""

    def __init__(self, writer: OutputWriter):
        self.writer = writer
        self.results: list[dict[str, Any]] = []

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"counts": [], "tokens": 0, "padded": 0, "messages": []}
        for block in blocks:
            if block.num_rows == 0:
                continue
            result["tokens"] += sum(block.column("tokens").to_pylist())
            result["padded"] += sum(block.column("padded").to_pylist())
            by_shard: dict[int, list[TagRow]] = {}
            for row in _table_rows(block):
                by_shard.setdefault(row.shard, []).append(row)
                if row.error is not None:
                    result["messages"].append(row.error)
            for shard, rows in by_shard.items():
                counts = self.writer.write_batch(shard, rows)
                result["messages"] += counts.messages
                result["counts"].append(counts)
        return result

    def on_write_complete(self, write_result: Any) -> None:
        self.results = list(write_result.write_returns)


def _start_ray(address: str | None, quiet: bool) -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise BulkError("--engine ray needs Ray Data: pip install '.[bulk]' (or requirements-bulk.txt)") from None
    if not ray.is_initialized():
        # A new local instance gets this package on its workers' path. A cluster (--ray-address,
        # or RAY_ADDRESS as `ray job submit` sets it) brings its own: the job's working_dir.
        joining = bool(address or os.environ.get("RAY_ADDRESS"))
        runtime_env = None if joining else {"env_vars": {"PYTHONPATH": PACKAGE_ROOT}}
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=not quiet)
    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    return ray


def run_ray(
    plan: Plan,
    writer: OutputWriter,
    *,
    args: argparse.Namespace,
    files: ModelFiles,
    options: TagOptions,
    summary: Summary,
    progress: Progress,
) -> None:
    """Tag everything ``plan`` yields on Ray Data; counts go into ``summary``."""
    from tagger.bulk.resume import options_values
    from tagger.engine.weights import inspect_checkpoint

    streamed = [s.spec for s in plan.inputs.sources if s.streamed]
    if streamed:
        raise BulkError(
            f"--engine ray reads inputs from a shared file system and cannot stream {streamed[0]}; "
            "save the dataset to disk (datasets' save_to_disk) or use uncompressed .tar shards."
        )

    started = time.perf_counter()
    items: list[dict[str, Any]] = []
    finished: list[int] = []
    for item in plan.items():
        if isinstance(item, ShardEnd):
            finished.append(item.shard)
        elif isinstance(item, Kept):
            summary.kept += 1
            progress.update(1)
        else:
            items.append(_record_item(item))
    summary.already_done = plan.already_done
    ray = _start_ray(args.ray_address, args.quiet)

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if args.device.startswith("cuda") and gpus == 0:
        raise BulkError(f"--device {args.device}: the Ray cluster has no GPU; use --device cpu or auto.")
    on_gpu = gpus > 0 and args.device != "cpu"
    batch_size = args.batch_size or (32 if on_gpu else 8)
    actors = args.ray_actors or (gpus if on_gpu else 1)
    patch = inspect_checkpoint(files.checkpoint).config.patch_size
    # What each actor needs to load the model as the local engine would (files given, or from the Hub).
    model = {name: getattr(args, name) for name in ("repo", "revision", "dtype", "max_size", "implications", "aliases")}
    model["checkpoint"] = os.fspath(files.checkpoint) if args.checkpoint else None
    model["vocab"] = os.fspath(files.vocab) if args.vocab else None
    model["device"] = "cuda" if on_gpu else "cpu"
    if items:
        dataset = ray.data.from_items(items)
        dataset = dataset.map_batches(
            decode_batch,
            fn_kwargs={"prepare": Preprocessor(args.max_size, patch, args.reduced_decode)},
            batch_size=DECODE_BATCH,
            batch_format="pyarrow",
            num_cpus=1,
        )
        dataset = dataset.map_batches(
            TagActor,
            fn_constructor_kwargs={
                "model": model,
                "options": options_values(options),
                "batch_size": batch_size,
                "descriptors": args.descriptors,
            },
            batch_size=batch_size * WINDOW_BATCHES,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if on_gpu else 0,
            num_cpus=ACTOR_CPUS_ON_GPU if on_gpu else 1,
        )
        sink = BulkDatasink(writer)
        dataset.write_datasink(sink)
        for result in sink.results:
            written: list[WriteCounts] = result["counts"]
            for counts in written:
                summary.add(counts)
            summary.tokens.add(result["tokens"], result["padded"])
            for message in result["messages"]:
                progress.error(message)
            errors = sum(c.errors for c in written)
            progress.update(sum(c.images for c in written) + errors, errors)
    for shard in finished:
        writer.finish_shard(shard)
        summary.shards_finished += 1
    summary.seconds = time.perf_counter() - started
