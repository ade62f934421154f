"""Command line: ``python -m tagger --images a.jpg b.png [--topk N | --threshold T]``.

Images are paths or http(s) URLs, fetched with the app's size and time limits (25 MB,
15 s); unlike the web app, hosts on your own machine and network (a NAS) are allowed. Output
shapes follow the authors' CLI: ``pretty`` (rank, score, bar, tag), ``tags`` (one
comma-separated line per image) and ``json`` (``[{"file", "tags": [{"tag", "score"}]}]``).
An image that cannot be read is reported on stderr, the others still run, and the exit
status is 1 at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence

from tagger.errors import CheckpointError, FetchError, ImageError, ResolutionError, SelectionError, VocabularyError
from tagger.fetch import fetch_url, is_url, local_network_too
from tagger.hub import resolve_model_files
from tagger.options import OPTION_FIELDS, OPTION_NAMES, OPTION_TYPES, TagOptions, option_info
from tagger.predict import Tagger
from tagger.results import authors_json_entry, pretty_text, tag_string

CHUNK = 32  # images decoded ahead of the model; bounds memory on long lists


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per declared tagging option (``--character-threshold 0.9``, ``--underscores``),
    with its type, default and help from ``TagOptions``; read back with ``options_from_args``."""
    group = parser.add_argument_group("tagging options (as in the app and /tag)")
    for f in OPTION_FIELDS:
        info = option_info(f)
        flag = "--" + f.name.replace("_", "-")
        kind = OPTION_TYPES[f.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=info.help)
            continue
        choices = [value for _, value in info.choices] or None
        convert = kind if kind in (int, float) else str
        shown = f" (default {f.default})" if f.default != "" else ""
        group.add_argument(flag, type=convert, default=f.default, choices=choices, help=info.help + shown)


def options_from_args(args: argparse.Namespace) -> TagOptions:
    """The ``TagOptions`` of flags added by ``add_option_arguments``; ``SelectionError`` if invalid."""
    return TagOptions.from_values(**{name: getattr(args, name) for name in OPTION_NAMES})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tagger", description="Tag images with the DINOv3 booru tagger.")
    parser.add_argument(
        "--images", nargs="+", required=True, metavar="IMAGE", help="image files or http(s) URLs to tag"
    )
    parser.add_argument("--checkpoint", help="local .safetensors checkpoint (default: download from the Hub)")
    parser.add_argument("--vocab", help="local vocabulary JSON (default: download from the Hub)")
    parser.add_argument("--repo", help="Hub model repo (default: $TAGGER_REPO or lodestones/tagger-experiment)")
    parser.add_argument("--revision", help="Hub revision: branch, tag or commit (default: $TAGGER_REVISION or main)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--topk", type=int, default=None, help="keep the N best tags (default 30)")
    choice.add_argument("--threshold", type=float, default=None, help="keep tags scoring at least T")
    parser.add_argument("--format", choices=["pretty", "tags", "json"], default="pretty")
    parser.add_argument("--underscores", action="store_true", help="tags format: underscores instead of spaces")
    parser.add_argument("--escape-parentheses", action="store_true", help=r"tags format: write \( and \)")
    parser.add_argument("--max-size", type=int, default=1024, help="long-edge cap in pixels (default 1024)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="bf16, fp32, or int8 (CPU only: faster, scores differ slightly; see the README) "
        "(default: bf16 where the hardware has it, else fp32)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.topk is not None and args.topk < 1:
        print("error: --topk must be at least 1", file=sys.stderr)
        return 2
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        print("error: --threshold must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        files = resolve_model_files(args.checkpoint, args.vocab, repo=args.repo, revision=args.revision)
        tagger = Tagger(files.checkpoint, files.vocab, device=args.device, dtype=args.dtype, max_size=args.max_size)
    except (ResolutionError, CheckpointError, VocabularyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    failures = 0
    json_entries: list[dict] = []
    downloads = tempfile.TemporaryDirectory(prefix="tagger-cli-")
    for start in range(0, len(args.images), CHUNK):
        names, pixels = [], []
        for name in args.images[start : start + CHUNK]:
            try:
                # URLs as the authors' CLI takes them, through the app's fetcher; the user owns this
                # machine, so its own network is allowed (the web app allows public addresses only).
                source = fetch_url(name, downloads.name, policy=local_network_too) if is_url(name) else name
                pixels.append(tagger.prepare(source))
                names.append(name)
            except (ImageError, FetchError) as e:
                print(f"error: {e}", file=sys.stderr)
                failures += 1
        for name, scores in zip(names, tagger.run(pixels), strict=True):
            try:
                tags = tagger.select(scores, topk=args.topk, threshold=args.threshold)
            except SelectionError as e:  # pragma: no cover - arguments were checked above
                print(f"error: {e}", file=sys.stderr)
                return 2
            if args.format == "json":
                json_entries.append(authors_json_entry(name, tags))
            elif args.format == "tags":
                print(tag_string(tags, underscores=args.underscores, escape_parentheses=args.escape_parentheses))
            else:
                print(f"== {name} ({len(tags)} tags)")
                print(pretty_text(tags))
    downloads.cleanup()
    if args.format == "json":
        print(json.dumps(json_entries, ensure_ascii=False, indent=2))
    return 1 if failures else 0
