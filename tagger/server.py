"""Start-up of the app: resolve and load the files once, build the UI, launch.

``app.py`` (the Space's entry point) only calls ``create_app`` and ``launch``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from tagger.errors import CheckpointError, ResolutionError, VocabularyError
from tagger.hub import resolve_model_files
from tagger.predict import Tagger
from tagger.runtime import ModelRunner
from tagger.synthetic import write_demo_files
from tagger.ui import CSS, build_demo
from tagger.ui.context import AppContext

log = logging.getLogger("tagger")
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
MAX_FILE_SIZE = "200mb"  # per upload (dataset zips for the Batch tab); Gradio refuses larger ones before we see them
# Uploads and URL downloads stay in Gradio's cache for the life of the process unless cleaned:
# every hour, remove those older than a day (batch results are kept as long, see tagger.batch).
CACHE_CLEANUP: tuple[int, int] = (3600, 24 * 3600)
QUEUE_MAX_SIZE = 64  # waiting requests beyond this are refused with "queue is full"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DINOv3 booru tagger: Gradio app")
    parser.add_argument("--checkpoint", default=None, help="local checkpoint (default: $TAGGER_CHECKPOINT or the Hub)")
    parser.add_argument("--vocab", default=None, help="local vocabulary (default: $TAGGER_VOCAB or the Hub)")
    parser.add_argument("--repo", default=None, help="Hub repo (default: $TAGGER_REPO or lodestones/tagger-experiment)")
    parser.add_argument("--revision", default=None, help="Hub revision (default: $TAGGER_REVISION or main)")
    parser.add_argument("--device", default=os.environ.get("TAGGER_DEVICE", "auto"), help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--max-size", type=int, default=1024, help="long-edge cap in pixels (default 1024)")
    parser.add_argument(
        "--dtype",
        default=os.environ.get("TAGGER_DTYPE") or None,
        help="bf16, fp32, or int8 (CPU only: faster, scores differ slightly) (default: $TAGGER_DTYPE, "
        "else bf16 where the hardware has it, else fp32)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        default=os.environ.get("TAGGER_DEMO", "") not in ("", "0", "false"),
        help="tiny random model generated at start-up (offline UI work; tags are meaningless)",
    )
    return parser.parse_args(argv)


def load_context(args: argparse.Namespace) -> AppContext:
    """Resolve, load and wrap the model; raises SystemExit with one sentence on failure."""
    try:
        if args.demo:
            directory = Path(tempfile.mkdtemp(prefix="tagger-demo-"))
            checkpoint, vocab = write_demo_files(directory)
            log.info("Demo mode: tiny random model in %s", directory)
        else:
            files = resolve_model_files(args.checkpoint, args.vocab, repo=args.repo, revision=args.revision)
            checkpoint, vocab = files.checkpoint, files.vocab
        tagger = Tagger(checkpoint, vocab, device=args.device, dtype=args.dtype, max_size=args.max_size)
    except (ResolutionError, CheckpointError, VocabularyError, ValueError) as e:
        raise SystemExit(f"Cannot start the tagger: {e}") from None
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})
    return AppContext(tagger=tagger, runner=ModelRunner(tagger), demo_mode=args.demo, examples=examples)


def create_app(argv: Sequence[str] | None = None) -> tuple[gr.Blocks, AppContext]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    context = load_context(parse_args(argv))
    demo = build_demo(context)
    # The model is the scarce resource: on CPU one request at a time, on a GPU a few.
    concurrency = 1 if context.tagger.device.type == "cpu" else 4
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=concurrency)
    if demo.delete_cache is None:  # read by Gradio when the server starts
        demo.delete_cache = CACHE_CLEANUP
    return demo, context


def launch(demo: gr.Blocks, **kwargs: object) -> tuple:
    """Launch with host and port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads
    them); ``kwargs`` go to ``Blocks.launch``. Returns what it returns (app, local URL, share URL)."""
    return demo.launch(
        max_file_size=MAX_FILE_SIZE,
        show_error=True,
        css=CSS,
        allowed_paths=[str(EXAMPLES_DIR)],
        ssr_mode=False,
        **kwargs,  # type: ignore[arg-type]
    )
