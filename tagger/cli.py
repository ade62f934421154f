"""Command line: ``python -m tagger --images a.jpg b.png [--topk N | --threshold T] [--mode mcut ...]``.
Every tagging option of the app and ``/tag`` is a flag (from ``TagOptions``); without a rule
option (``--mode`` ...) the authors' rules apply (see ``build_parser``). URLs are fetched with the
app's size and time limits, but hosts on the user's own machine and network (a NAS) are allowed.
Output shapes follow the authors' CLI: ``pretty`` (rank, score, bar, tag), ``tags`` (one
comma-separated line per image) and ``json`` (``[{"file", "tags": [{"tag", "score"}]}]``). An
image that cannot be read is reported on stderr, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace

from tagger.engine.hub import model_files
from tagger.engine.synthetic import DEMO_WARNING
from tagger.engine.tagger import Tagger
from tagger.errors import FetchError, ImageError, ResolutionError, SelectionError
from tagger.export import OnnxExtraMissing
from tagger.fetch import fetch_url, is_url, local_network_too
from tagger.onnx.backend import OnnxTagger, onnx_model_files
from tagger.tags.flags import (
    add_model_arguments,
    add_option_arguments,
    add_relation_arguments,
    attach_relation_arguments,
    check_relation_arguments,
    options_from_args,
)
from tagger.tags.formats import authors_json_entry, pretty_text
from tagger.tags.options import TagOptions
from tagger.tags.selection import Selection, select_tags

CHUNK = 32  # images decoded ahead of the model; bounds memory on long lists

# The declared options that choose a selection rule: with none of them given, the CLI keeps the
# authors' rules (--topk N best tags, or every tag at or above --threshold T).
RULE_OPTIONS = ("mode", "character_threshold", "topk_per_category", "category_thresholds")
AUTHORS_TOPK = 30


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """``prog``: the name in usage lines (default: the running script, e.g. ``tagger``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tag images with the DINOv3 booru tagger. Without --mode (or another rule option) the "
        f"authors' rules apply: the {AUTHORS_TOPK} best tags, --topk N best, or every tag scoring at least "
        "--threshold T; with --mode the rules are the app's and /tag's.",
    )
    parser.add_argument(
        "--images", nargs="+", required=True, metavar="IMAGE", help="image files or http(s) URLs to tag"
    )
    parser.add_argument(
        "--topk",
        type=int,
        default=None,
        help=f"keep the N best tags (default {AUTHORS_TOPK} without --mode); with --mode, at most N of the tags "
        "the mode keeps",
    )
    parser.add_argument("--format", choices=["pretty", "tags", "json"], default="pretty")
    add_model_arguments(parser.add_argument_group("model"))
    add_relation_arguments(parser)
    add_option_arguments(
        parser,
        unset=True,
        notes={
            "threshold": "Without --mode: keep every tag scoring at least T, characters too (the authors' "
            "--threshold; not with --topk).",
            "mode": "Not given (nor another rule option): the authors' rules, as described above.",
            "floor": "Without --mode the default is 0.",
        },
    )
    return parser


def _selection(args: argparse.Namespace, options: TagOptions, rules: bool) -> Selection:
    """The app's rules when a rule option was given (``rules``), else the authors' (see ``build_parser``)."""
    if rules:
        return replace(options.selection, topk=args.topk)
    authors = replace(options.selection, category_thresholds={}, floor=args.floor or 0.0)
    if args.threshold is not None:
        return replace(authors, threshold=args.threshold, topk=None)
    return replace(authors, threshold=0.0, topk=args.topk or AUTHORS_TOPK)


def _load(args: argparse.Namespace) -> Tagger | OnnxTagger:
    if args.backend == "onnxruntime":
        files = onnx_model_files(args)
        return OnnxTagger(files.checkpoint, files.vocab, max_size=args.max_size)
    if args.demo:
        print(f"warning: {DEMO_WARNING}", file=sys.stderr)
    with model_files(args) as (checkpoint, vocab):  # loaded into memory, then a demo's folder is removed
        return Tagger(checkpoint, vocab, device=args.device, dtype=args.dtype, max_size=args.max_size)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rules = any(getattr(args, name) is not None for name in RULE_OPTIONS)
    if args.topk is not None and args.threshold is not None and not rules:
        parser.error("argument --threshold: not allowed with argument --topk (without --mode)")
    try:  # every option is checked before the model loads
        if args.topk is not None and args.topk < 1:
            raise SelectionError("--topk must be at least 1")
        if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
            raise SelectionError("--threshold must be between 0 and 1")
        options = options_from_args(args)
        selection = _selection(args, options, rules)
        check_relation_arguments(args, options)
        tagger = _load(args)
        attach_relation_arguments(args, tagger.vocab)
    except (ResolutionError, OnnxExtraMissing, ValueError) as e:  # ValueError: CheckpointError, SelectionError...
        print(f"error: {e}", file=sys.stderr)
        return 2

    failures = 0
    json_entries: list[dict] = []
    downloads = tempfile.TemporaryDirectory(prefix="tagger-cli-")
    for start in range(0, len(args.images), CHUNK):
        names, pixels = [], []
        for name in args.images[start : start + CHUNK]:
            try:
                # The user owns this machine, so its own network is allowed (the web app: public only).
                source = fetch_url(name, downloads.name, policy=local_network_too) if is_url(name) else name
                pixels.append(tagger.prepare(source))
                names.append(name)
            except (ImageError, FetchError) as e:
                print(f"error: {e}", file=sys.stderr)
                failures += 1
        for name, scores in zip(names, tagger.run(pixels), strict=True):
            tags = select_tags(scores, tagger.vocab, selection)
            if args.format == "json":
                json_entries.append(authors_json_entry(name, tags))
            elif args.format == "tags":
                print(options.tag_string(tags, tagger.vocab))
            else:
                print(f"== {name} ({len(tags)} tags)")
                print(pretty_text(tags))
    downloads.cleanup()
    if args.format == "json":
        print(json.dumps(json_entries, ensure_ascii=False, indent=2))
    return 1 if failures else 0
