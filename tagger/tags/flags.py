"""The command-line flags ``tagger`` and ``tagger-bulk`` share: tagging options (derived from
``TagOptions``), tag relation files, and the model choice."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from tagger.engine.hub import DEFAULT_REPO
from tagger.engine.vocab import Vocabulary
from tagger.errors import SelectionError
from tagger.tags.options import OPTION_FIELDS, OPTION_NAMES, OPTION_TYPES, TagOptions, option_info
from tagger.tags.relations import attach_sources


def option_flag(name: str) -> str:
    """The command-line flag of a declared option: ``character_threshold`` → ``--character-threshold``."""
    return "--" + name.replace("_", "-")


def add_option_arguments(
    parser: argparse.ArgumentParser, *, unset: bool = False, notes: Mapping[str, str] | None = None
) -> None:
    """One flag per declared tagging option, read back with ``options_from_args``. ``unset``: flags
    not given read as ``None`` (the default still applies), so a caller can tell which ones the user
    chose. ``notes``: text added to an option's help."""
    group = parser.add_argument_group("tagging options (as in the app and /tag)")
    notes = notes or {}
    for f in OPTION_FIELDS:
        info = option_info(f)
        kind = OPTION_TYPES[f.name]
        note = f" {notes[f.name]}" if f.name in notes else ""
        if kind is bool:
            how: dict[str, Any] = {"action": argparse.BooleanOptionalAction, "help": info.help + note}
        else:
            shown = f" (default {f.default})" if f.default != "" else ""
            choices = [value for _, value in info.choices] or None
            how = {"type": kind if kind in (int, float) else str, "choices": choices, "help": info.help + shown + note}
        group.add_argument(option_flag(f.name), default=None if unset else f.default, **how)


def options_from_args(args: argparse.Namespace) -> TagOptions:
    """The ``TagOptions`` of flags added by ``add_option_arguments``; ``SelectionError`` if invalid."""
    return TagOptions.from_values(**{name: getattr(args, name) for name in OPTION_NAMES})


def add_relation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--implications FILE…`` and ``--aliases FILE…``, the same in ``tagger`` and ``tagger-bulk``."""
    group = parser.add_argument_group("tag relations (for --implied, and aliases in typed tags and output)")
    where = "paths, http(s) URLs (downloaded once into the cache) or hub:FILENAME"
    for flag, files in (("--implications", "tag_implications"), ("--aliases", "tag_aliases")):
        described = f"e621 {files}-*.csv(.gz) or Danbooru {files}.json files: {where}"
        group.add_argument(flag, nargs="+", default=[], metavar="FILE", help=described)


def check_relation_arguments(args: argparse.Namespace, options: TagOptions) -> None:
    """``SelectionError`` for ``--implied remove|add`` without implication files (it would do nothing)."""
    if options.implied != "keep" and not args.implications:
        raise SelectionError(f"--implied {options.implied} needs --implications FILE (README: Tag implications).")


def attach_relation_arguments(args: argparse.Namespace, vocab: Vocabulary) -> None:
    """Load the relation files of ``add_relation_arguments`` onto ``vocab``; the report goes to the log."""
    attach_sources(vocab, args.implications, args.aliases, repo=args.repo, revision=args.revision)


def add_model_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags that choose and load the model, the same in ``tagger`` and ``tagger-bulk``."""
    parser.add_argument("--checkpoint", help="local .safetensors checkpoint (default: download from the Hub)")
    parser.add_argument("--vocab", help="local vocabulary JSON (default: download from the Hub)")
    parser.add_argument("--repo", help=f"Hub model repo (default: $TAGGER_REPO or {DEFAULT_REPO})")
    parser.add_argument("--revision", help="Hub revision: branch, tag or commit (default: $TAGGER_REVISION or main)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="a tiny random model made on the spot instead of the real one (no download; tags are meaningless)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="bf16, fp32, or int8 (CPU only: faster, scores differ slightly; see the README) "
        "(default: bf16 where the hardware has it, else fp32)",
    )
    parser.add_argument("--max-size", type=int, default=1024, help="long-edge cap in pixels (default 1024)")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),
        default="torch",
        help='torch (default), or onnxruntime: an ONNX export on the CPU (--onnx; pip install ".[onnx]")',
    )
    parser.add_argument(
        "--onnx",
        metavar="PATH",
        help="with --backend onnxruntime: the folder python -m tagger.export wrote, or one of its .onnx files "
        "(tagger/model_quantized.onnx: int8, tagger/model_q4.onnx: 4-bit)",
    )
