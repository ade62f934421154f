"""Start-up of the app: resolve and load the files once, build the UI, launch; ``app.py`` (the
Space's entry point) only calls ``create_app`` and ``launch``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import logging
import os
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import ValidationError
from starlette.middleware import Middleware

from tagger.engine.hub import model_files
from tagger.engine.resolution import size_cap
from tagger.engine.synthetic import DEMO_WARNING
from tagger.engine.tagger import Tagger, resolve_device
from tagger.errors import CheckpointError, ResolutionError, VocabularyError, shorten
from tagger.tags import relations
from tagger.web import fairshare, gradio_compat
from tagger.web.context import HEAVY_QUEUE, AppContext
from tagger.web.demo import CSS, build_demo
from tagger.web.mcp import serve_mcp_callers
from tagger.web.runtime import ModelRunner
from tagger.web.tempfiles import CacheKeeper

log = logging.getLogger("tagger")
# The example images: examples/ of a checkout, installed as the package's tagger/examples/ (pyproject.toml).
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tagger/
EXAMPLES_DIR = next(
    (d for d in (_PACKAGE_DIR / "examples", _PACKAGE_DIR.parent / "examples") if d.is_dir()), _PACKAGE_DIR / "examples"
)
MAX_FILE_SIZE = "200mb"  # per upload (dataset zips for the Batch tab); Gradio refuses larger ones before we see them
# Uploads, URL downloads and results (feature images, caption zips) stay in Gradio's cache for
# the life of the process unless cleaned: every 10 minutes, remove those older than an hour.
CACHE_CLEANUP: tuple[int, int] = (600, 3600)
QUEUE_MAX_SIZE = 64  # waiting requests beyond this are refused with "queue is full"
# One text argument (exclude, prepend, categories, a tag, a colour): a long tag list fits.
MAX_TEXT_CHARS = 10_000
# Each app's upload budget, with the per-client limits it was created with (read again by launch
# for the middleware), shared by the request guard and the MCP tools.
_BUDGETS: weakref.WeakKeyDictionary[gr.Blocks, fairshare.UploadBudget] = weakref.WeakKeyDictionary()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DINOv3 booru tagger: Gradio app")
    parser.add_argument("--checkpoint", default=None, help="local checkpoint (default: $TAGGER_CHECKPOINT or the Hub)")
    parser.add_argument("--vocab", default=None, help="local vocabulary (default: $TAGGER_VOCAB or the Hub)")
    parser.add_argument("--repo", default=None, help="Hub repo (default: $TAGGER_REPO or lodestones/tagger-experiment)")
    parser.add_argument("--revision", default=None, help="Hub revision (default: $TAGGER_REVISION or main)")
    parser.add_argument("--device", default=os.environ.get("TAGGER_DEVICE", "auto"), help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--max-size",
        type=int,
        help="the largest long edge a request may ask for, in pixels (default 1024 on CPU, 2048 on a GPU)",
    )
    parser.add_argument(
        "--size",
        type=int,
        help="the long edge requests run at unless they ask for another (default 512 on CPU, 1024 on a GPU)",
    )
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
            log.warning(DEMO_WARNING)
        with model_files(args) as (checkpoint, vocab):  # loaded into memory, then a demo's folder is removed
            cap = args.max_size or size_cap(resolve_device(args.device).type)
            # A public Space decodes huge images at a reduced scale (decode cost per request).
            tagger = Tagger(checkpoint, vocab, device=args.device, dtype=args.dtype, max_size=cap, reduced_decode=True)
        # Tag relations for the implied option and aliases (README: Tag implications and aliases).
        relations.attach_sources(
            tagger.vocab,
            relations.sources_from_env(relations.ENV_IMPLICATIONS),
            relations.sources_from_env(relations.ENV_ALIASES),
            repo=args.repo,
            revision=args.revision,
        )
    except (ResolutionError, CheckpointError, VocabularyError, ValueError) as e:
        raise SystemExit(f"Cannot start the tagger: {e}") from None
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})
    return AppContext(tagger=tagger, runner=ModelRunner(tagger), demo_mode=args.demo, examples=examples, size=args.size)


def create_app(
    argv: Sequence[str] | None = None, limits: fairshare.FairShareLimits | None = None
) -> tuple[gr.Blocks, AppContext]:
    """The app and its context; ``limits``: the per-client limits (default ``FairShareLimits()``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    context = load_context(parse_args(argv))
    demo = build_demo(context)
    # The model is the scarce resource: on CPU one request at a time, on a GPU a few.
    concurrency = 1 if context.tagger.device.type == "cpu" else 4
    # api_open=False (as on a Space): /gradio_api/run/<api> answers 404 for queued events, which
    # would otherwise skip the queue, its concurrency groups and the per-client limits.
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=concurrency, api_open=False)
    gradio_compat.skip_event_analytics(gradio_compat.app_queue(demo))
    demo.delete_cache = CACHE_CLEANUP  # read by Gradio when the server starts
    limits = limits or fairshare.FairShareLimits()
    fairshare.install(demo, limits, heavy_group=HEAVY_QUEUE)
    _readable_request_errors(demo)
    _BUDGETS[demo] = fairshare.UploadBudget(limits)
    return demo, context


def mcp_server_wanted() -> bool:
    """The MCP server is on unless GRADIO_MCP_SERVER=false, and needs the ``mcp`` package."""
    if os.environ.get("GRADIO_MCP_SERVER", "true").lower() in ("0", "false", "no"):
        return False
    if importlib.util.find_spec("mcp") is None:
        log.warning("MCP server off: the `mcp` package is not installed (pip install -r requirements.txt).")
        return False
    return True


def launch(demo: gr.Blocks, **kwargs: Any) -> tuple:
    """``Blocks.launch(**kwargs)`` (host and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT), the endpoints
    also MCP tools at ``/gradio_api/mcp/``, ``fairshare.RequestGuard`` in front of Gradio's routes."""
    kwargs.setdefault("mcp_server", mcp_server_wanted())
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    budget = _BUDGETS.get(demo) or fairshare.UploadBudget(fairshare.FairShareLimits())
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(fairshare.RequestGuard, budget=budget)]
    app_kwargs["lifespan"] = _with_our_start_up(demo, budget, app_kwargs.get("lifespan"))
    return demo.launch(
        max_file_size=MAX_FILE_SIZE,
        show_error=True,
        css=CSS,
        allowed_paths=[str(EXAMPLES_DIR)],
        ssr_mode=False,
        enable_monitoring=False,  # its summary would be rebuilt after every event (gradio_compat)
        app_kwargs=app_kwargs,
        **kwargs,
    )


def _with_our_start_up(
    demo: gr.Blocks, budget: fairshare.UploadBudget, lifespan: Callable[[Any], Any] | None
) -> Callable[[Any], Any]:
    """``lifespan`` (or none) with, once the server starts, the MCP server's calls made fit for a public
    Space (``tagger.web.mcp``) and the cache folder swept at start-up and on the cleanup schedule
    (``tagger.web.tempfiles``: Gradio's own clean-up only knows the files it registered)."""
    every, older_than = demo.delete_cache or CACHE_CLEANUP
    keeper = CacheKeeper(
        gradio_compat.get_upload_folder(),
        every,
        older_than,
        functools.partial(gradio_compat.files_kept, demo),
        functools.partial(gradio_compat.files_written, demo),
        functools.partial(gradio_compat.forget_files, demo),
    )

    @contextlib.asynccontextmanager
    async def with_sweeps(app: Any) -> AsyncIterator[Any]:
        mcp_server = gradio_compat.mcp_server_of(demo)
        if mcp_server is not None:
            serve_mcp_callers(mcp_server, budget)
        async with keeper.running():
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state

    return with_sweeps


def main(argv: Sequence[str] | None = None) -> int:
    """``tagger-app``: the same app as ``python app.py``, for an installed package."""
    demo, _ = create_app(argv)
    launch(demo)
    return 0


def _readable_request_errors(demo: gr.Blocks) -> None:
    """Gradio's own messages for malformed raw API calls are written for developers (component
    reprs with memory addresses, pydantic dumps, server paths); give each a sentence instead."""

    def names(components: list[Any]) -> str:
        return ", ".join(str(getattr(b, "label", None) or type(b).__name__) for b in components)

    def check(components: list[Any], inputs: list[Any]) -> None:
        if len(inputs) < len(components):
            raise gr.Error(
                f"This endpoint takes {len(components)} values ({shorten(names(components), 300)}); "
                f"{len(inputs)} were sent.",
                print_exception=False,
            )
        for block, value in zip(components, inputs, strict=False):
            if isinstance(block, (gr.File, gr.Image)):
                continue  # file payloads and data URLs have their own limits
            texts = value if isinstance(value, list) else [value]
            length = sum(len(t) for t in texts if isinstance(t, str))
            if length > MAX_TEXT_CHARS:
                label = getattr(block, "label", None) or type(block).__name__
                raise gr.Error(
                    f"The value sent for '{label}' is {length:,} characters long; the limit is {MAX_TEXT_CHARS:,}.",
                    print_exception=False,
                )

    def preprocess_error(error: Exception, components: list[Any]) -> gr.Error:
        if isinstance(error, gradio_compat.InvalidPathError):
            return gr.Error(
                "A file in this request was not uploaded to this Space; upload it first "
                "(gradio_client's handle_file does this).",
                print_exception=False,
            )
        if isinstance(error, ValidationError):
            return gr.Error(
                'A file value in this request is malformed; send files as {"path": ..., "meta": '
                '{"_type": "gradio.FileData"}} after uploading them (gradio_client\'s handle_file does this).',
                print_exception=False,
            )
        log.info("Refused malformed input: %s", shorten(str(error), 300))
        index = gradio_compat.failed_input_index(error)
        if index is not None and index < len(components):
            label = getattr(components[index], "label", None) or f"value {index + 1}"
            message = f"The value sent for '{label}' is not valid for this endpoint."
        else:
            message = f"A value in this request is not valid for this endpoint (it takes: {names(components)})."
        return gr.Error(shorten(message), print_exception=False)

    def postprocess_error(error: Exception) -> gr.Error:
        log.error("Could not prepare an answer", exc_info=error)
        return gr.Error("Something went wrong while preparing the answer; please try again.")

    gradio_compat.hook_request_processing(demo, check, preprocess_error, postprocess_error)
