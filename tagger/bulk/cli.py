"""``python -m tagger.bulk INPUT... --out DIR``: tag a dataset, resumably.

Exit status: 0 when every image was handled (unreadable images are reported, counted and
written as error rows: they do not fail the run), 2 for a bad flag, input or model file, an
output folder that cannot be resumed with these settings or that another run is writing to,
1 when the GPU runs out of memory or an output cannot be written, and 130 when interrupted
(run the same command again to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from tagger.bulk.local import run_local
from tagger.bulk.lock import OutputLock, admission
from tagger.bulk.names import escape_name
from tagger.bulk.outputs import FORMATS, ON_EXISTING, Layout, OutputWriter, RunInfo
from tagger.bulk.plan import Plan
from tagger.bulk.progress import Progress, Summary
from tagger.bulk.resume import ResumeState, check_manifest, new_manifest, options_hash
from tagger.bulk.sharding import ShardSpec, gpu_workers, launch_workers
from tagger.bulk.sources import Inputs, InputSettings
from tagger.engine.hub import ModelFiles, resolve_model_files
from tagger.engine.synthetic import DEMO_WARNING, demo_files
from tagger.engine.tagger import Tagger, resolve_device
from tagger.errors import BulkError, CheckpointError, ResolutionError, SelectionError, VocabularyError
from tagger.export import OnnxExtraMissing
from tagger.onnx.backend import OnnxTagger, onnx_model_files
from tagger.tags.flags import (
    add_model_arguments,
    add_option_arguments,
    add_relation_arguments,
    attach_relation_arguments,
    check_relation_arguments,
    options_from_args,
)
from tagger.tags.options import TagOptions

log = logging.getLogger("tagger")

DEFAULT_SHARD_SIZE = 1000
# The flags that change what is written, recorded in the manifest in this order.
MANIFEST_FLAGS = ("max_size", "reduced_decode", "format", "on_existing", "txt_location", "descriptors", "shard_size")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _formats(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    if not chosen or any(f not in FORMATS for f in chosen):
        raise argparse.ArgumentTypeError(f"choose one or more of {', '.join(FORMATS)} (comma-separated)")
    return chosen


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """``prog``: the name in usage lines (default: the running script, e.g. ``tagger-bulk``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tag a dataset: folders, zips, tar/webdataset shards, Parquet or datasets in; "
        "captions, JSONL and Parquet out; resumable.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a folder (recursive), an image, a .zip, a .tar webdataset shard, a .parquet, a dataset folder "
        "written by save_to_disk, or hf:owner/name[@revision] (a Hub dataset, streamed)",
    )
    parser.add_argument("--out", required=True, help="output folder: manifest, outputs and resume state")
    out = parser.add_argument_group("outputs")
    out.add_argument(
        "--format", type=_formats, default=("txt",), help="any of txt, jsonl, parquet, comma-separated (default txt)"
    )
    out.add_argument(
        "--on-existing",
        choices=ON_EXISTING,
        default="skip",
        help="when a caption file exists: keep it (skip, the default: with only txt output the image is not "
        "tagged at all), overwrite it, or append/prepend the tags it does not have yet",
    )
    out.add_argument(
        "--txt-location",
        choices=("beside", "out"),
        default="beside",
        help="captions beside each image file (default; images inside archives and datasets always go to "
        "OUT/txt/) or under OUT/txt/ mirroring the inputs",
    )
    out.add_argument("--descriptors", action="store_true", help="parquet: add each image's 6400-d descriptor")
    source = parser.add_argument_group("inputs")
    source.add_argument("--no-recursive", dest="recursive", action="store_false", help="folders: top level only")
    source.add_argument("--split", help="datasets: the split (default train, or the only one)")
    source.add_argument("--image-column", help="Parquet/datasets: the image column (default: found by type)")
    source.add_argument("--key-column", help="Parquet/datasets: a column of unique ids for keys (default: row number)")
    add_model_arguments(parser.add_argument_group("model"))
    add_relation_arguments(parser)
    speed = parser.add_argument_group("speed")
    speed.add_argument("--batch-size", type=_positive, help="images per model call (default 32 on a GPU, 8 on CPU)")
    speed.add_argument(
        "--workers",
        type=_not_negative,
        help="decoding processes (default: cores - 1 up to 16 with a GPU, a quarter of the cores on CPU; "
        "0 decodes inline)",
    )
    speed.add_argument(
        "--reduced-decode",
        action="store_true",
        help="decode big JPEGs at a reduced scale (Pillow's draft mode; keeps 3 pixels per model pixel): "
        "faster decoding, scores not bit-identical (README: Bulk numbers)",
    )
    split = parser.add_argument_group("splitting and resuming")
    split.add_argument("--shard", help="i/N: tag only this process's share of the shards (one process per GPU/node)")
    split.add_argument(
        "--shard-size",
        type=_positive,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per shard: the unit of resume and of the jsonl/parquet files (default {DEFAULT_SHARD_SIZE})",
    )
    split.add_argument("--gpus", help="all, or GPU ids such as 0,2: one worker process per GPU, sharing the work")
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default) or ray: the same pipeline on Ray Data (pip install '.[bulk]')",
    )
    engine.add_argument(
        "--ray-address",
        help="Ray cluster address (default: $RAY_ADDRESS, as `ray job submit` sets it, else a new local instance)",
    )
    engine.add_argument("--ray-actors", type=_positive, help="model actors (default: one per GPU, or 1 without GPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar: errors and the summary line only")
    parser.add_argument("--progress-label", help=argparse.SUPPRESS)
    parser.add_argument("--progress-position", type=int, help=argparse.SUPPRESS)
    add_option_arguments(parser)
    return parser


def _without(argv: Sequence[str], flags: set[str]) -> list[str]:
    """``argv`` without the given flags and their values (``--flag v`` and ``--flag=v``)."""
    kept: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg.split("=", 1)[0] not in flags:
            kept.append(arg)
        elif "=" not in arg:
            next(rest, None)  # its value
    return kept


def model_identity(files: ModelFiles) -> tuple[str, str, str]:
    """(repo, revision, checkpoint) for the manifest and the Parquet output. A Hub download is
    pinned to its commit (from the cache path), so a branch that moves on is noticed on resume."""
    checkpoint = f"{files.checkpoint.name} ({files.checkpoint.stat().st_size:,} bytes)"
    if files.source == "local files":
        return "local", files.checkpoint.name, checkpoint
    repo, _, revision = files.source.split(" ", 1)[0].rpartition("@")
    commit = files.checkpoint.parent.name
    return repo, commit if _COMMIT.fullmatch(commit) else revision, checkpoint


# The modules of the bulk extra and what needs each, so that a missing one is named in one sentence.
EXTRA_MODULES = {
    "pyarrow": "Bulk tagging needs pyarrow (its resume state and Parquet files are Parquet)",
    "datasets": "datasets inputs (saved dataset folders and hf:owner/name) need the datasets package",
    "ray": "--engine ray needs Ray",
}
EXTRA_HINT = 'pip install "dinov3-tagger[bulk]" (or pip install -r requirements-bulk.txt)'


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The sentence saying what to install, when ``error`` is about a module of the bulk extra."""
    name = (error.name or "").split(".")[0]
    if name not in EXTRA_MODULES:
        return None
    return f"{EXTRA_MODULES[name]}, which is not installed; install the bulk extra: {EXTRA_HINT}."


def require_extra(name: str) -> None:
    """Import a module of the bulk extra before any work starts; a broken install is a sentence too."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        broken = f"{name} is installed but cannot be imported ({e}); reinstall the bulk extra: {EXTRA_HINT}."
        raise BulkError(missing_extra(e) or broken) from None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.demo:
            print(f"warning: {DEMO_WARNING}", file=sys.stderr)
            # Kept for the whole run: the Ray actors and --gpus workers load the model from these files.
            with demo_files() as (args.checkpoint, args.vocab):
                return _run(args, argv)
        return _run(args, argv)
    except (BulkError, SelectionError, ResolutionError, CheckpointError, VocabularyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (sentence := missing_extra(e)) is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    options = options_from_args(args)
    check_relation_arguments(args, options)
    require_extra("pyarrow")
    if args.engine == "ray":
        require_extra("ray")
    shard = ShardSpec.parse(args.shard)
    if args.backend == "onnxruntime" and (args.engine == "ray" or args.gpus):
        raise BulkError("--backend onnxruntime runs in this process on the CPU; leave out --engine ray and --gpus.")
    if args.max_size < 16:
        raise BulkError(f"--max-size must be at least 16 pixels, not {args.max_size}.")
    if args.gpus:
        per_gpu = gpu_workers(args.gpus)
        if not per_gpu:
            print("--gpus: no CUDA GPU is visible; running one process on the CPU.", file=sys.stderr)
            args.device = "cpu"
        elif args.engine == "ray":
            raise BulkError("--gpus starts local processes; with --engine ray, Ray places one actor per GPU itself.")
        else:
            return launch_workers(_without(argv, {"--gpus", "--shard", "--device"}), per_gpu, shard)
    with contextlib.ExitStack() as stack:  # the output folder's lock, held until the run ends
        plan, writer, files = _plan(args, options, shard, argv, stack)
        return _tag(args, options, plan, writer, files)


def _tag(args: argparse.Namespace, options: TagOptions, plan: Plan, writer: OutputWriter, files: ModelFiles) -> int:
    summary = Summary(out=escape_name(str(writer.layout.root)))
    progress: Progress | None = None
    message: str | None
    code, message = 0, None  # what the run ends with: its exit status, and why it stopped early if it did
    try:
        if args.engine == "ray":
            from tagger.bulk.ray_engine import run_ray

            progress = Progress(plan.total, args.quiet, args.progress_label, args.progress_position)
            run_ray(plan, writer, args=args, files=files, options=options, summary=summary, progress=progress)
        else:
            tagger, batch_size = _load_tagger(args, files)
            progress = Progress(plan.total, args.quiet, args.progress_label, args.progress_position)
            run_local(
                plan, tagger, writer, args, options=options, batch_size=batch_size, summary=summary, progress=progress
            )
    except KeyboardInterrupt:
        code, message = 130, "Interrupted: run the same command again to resume."
    except torch.cuda.OutOfMemoryError:
        code = 1
        message = (
            f"error: the GPU ran out of memory with batches of {args.batch_size or 'the default size'}; run the "
            "same command with a smaller --batch-size (or --max-size) to resume."
        )
    except OSError as e:  # the output folder or a caption's folder: full, read-only, gone
        where = f" ({e.filename})" if e.filename else ""
        code, message = 1, f"error: could not write the outputs{where}: {e.strerror or str(e)}; fix that and run again."
    if progress is not None:
        progress.close()
    print(summary.line(), flush=True)
    if message:
        print(message, file=sys.stderr)
    return code


def _plan(
    args: argparse.Namespace, options: TagOptions, shard: ShardSpec, argv: list[str], stack: contextlib.ExitStack
) -> tuple[Plan, OutputWriter, ModelFiles]:
    """Inputs, model files and output folder checked (the manifest written or compared); what to tag."""
    inputs = Inputs.open(args.inputs, InputSettings(args.recursive, args.split, args.image_column, args.key_column))
    if args.backend == "onnxruntime":
        try:
            files = onnx_model_files(args)
        except (ValueError, OnnxExtraMissing) as e:  # a flag that does not go with it; the extra missing
            raise BulkError(str(e)) from None
    else:
        files = resolve_model_files(args.checkpoint, args.vocab, repo=args.repo, revision=args.revision)
    repo, revision, checkpoint = model_identity(files)
    survey = inputs.survey()
    counts = [s.get("images") for s in survey]
    if all(c == 0 for c in counts):
        raise BulkError(f"No images found in {' '.join(args.inputs)}.")
    layout = Layout(Path(args.out).expanduser().resolve())
    flags = {name: getattr(args, name) for name in MANIFEST_FLAGS}
    flags["format"] = list(args.format)  # as JSON reads it back, so a resume compares equal
    model = {"repo": repo, "revision": revision, "checkpoint": checkpoint}
    manifest = new_manifest(options=options, inputs=survey, **model, **flags, **relation_files(args))
    locks = layout.state / "locks"
    with admission(locks):  # one starting run at a time: lock, manifest, leftover temporaries
        lock = OutputLock.acquire(layout.root, locks, shard, ["tagger.bulk", *argv])
        stack.callback(lock.release)
        resumed = check_manifest(layout, manifest)
        state = ResumeState.load(layout, shard.owns)
    plan = Plan(
        inputs=inputs,
        layout=layout,
        shard=shard,
        shard_size=args.shard_size,
        state=state,
        txt="txt" in args.format,
        beside=args.txt_location == "beside",
        keep_existing_only=args.format == ("txt",) and args.on_existing == "skip",
        counts=counts,
    )
    if resumed:
        log.info("Resuming in %s: %d shards finished before", layout.root, len(state.finished))
    writer = OutputWriter(
        layout.root, args.format, args.on_existing, RunInfo(repo, revision, options_hash(options), args.descriptors)
    )
    return plan, writer, files


def relation_files(args: argparse.Namespace) -> dict[str, list[str]]:
    """The manifest's record of the relation files: each source with the SHA-256 of its content
    (a changed file changes the tags, so a resume with it is refused)."""
    from tagger.tags.relations import resolve_source

    recorded: dict[str, list[str]] = {}
    for name in ("implications", "aliases"):
        sources = getattr(args, name) or []
        if sources:
            paths = [resolve_source(s, args.repo, args.revision) for s in sources]
            recorded[name] = [
                f"{s} (sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]})"
                for s, p in zip(sources, paths, strict=True)
            ]
    return recorded


def _load_tagger(args: argparse.Namespace, files: ModelFiles) -> tuple[Tagger, int]:
    """The model, loaded once, and the batch size for its device."""
    try:
        device = resolve_device(args.device)
        batch_size = args.batch_size or (32 if device.type == "cuda" else 8)
        if args.backend == "onnxruntime":
            onnx = OnnxTagger(files.checkpoint, files.vocab, args.max_size, batch_size, args.reduced_decode)
            # Duck-typed: OnnxTagger has every member of Tagger that the bulk pipeline uses.
            tagger = cast(Tagger, onnx)
        else:
            tagger = Tagger(
                files.checkpoint,
                files.vocab,
                device=device,
                dtype=args.dtype,
                max_size=args.max_size,
                max_batch_size=batch_size,
                reduced_decode=args.reduced_decode,
            )
    except (ValueError, OnnxExtraMissing) as e:  # unknown device or dtype, a bad model file; the onnx extra missing
        raise BulkError(str(e)) from None
    attach_relation_arguments(args, tagger.vocab)
    return tagger, batch_size
