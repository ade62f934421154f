"""What every tab needs: the loaded tagger, the device runner, and error translation."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import Any, ParamSpec, TypeVar

import gradio as gr
import numpy as np
import torch

from tagger.engine.preprocess import Prepare
from tagger.engine.resolution import default_size as size_for_device
from tagger.engine.resolution import snap_size
from tagger.engine.tagger import Tagger
from tagger.engine.vocab import Vocabulary
from tagger.errors import USER_ERRORS, ImageError, shorten
from tagger.web.runtime import ModelRunner

log = logging.getLogger("tagger")

P = ParamSpec("P")
R = TypeVar("R")

# Concurrency groups of the model work (Gradio ``concurrency_id``): single-image tagging has
# a group of its own, so a long batch or a heatmap never holds it up.
TAG_QUEUE = "tag"  # one image: /tag and the Tag tab
HEAVY_QUEUE = "heavy"  # batches, feature maps, similarity
# The keyword arguments of the UI's own server events (no API endpoints): model work in the
# heavy group, and quick updates that skip the queue and show no progress.
HEAVY_EVENT: dict[str, Any] = {"api_visibility": "private", "concurrency_id": HEAVY_QUEUE}
QUICK_EVENT: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our documented errors into ``gr.Error`` with their sentence; anything else is
    logged with its traceback and reported briefly, and the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as e:
            # Expected, so no traceback in the log; shortened, as it may echo what the client sent.
            raise gr.Error(shorten(str(e)), print_exception=False) from None
        except Exception:
            log.exception("Unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong while processing this request; please try another image.") from None

    return wrapper


def attempt(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """``(fn(...), None)``, or ``(None, the error's sentence)`` (as ``user_errors`` words it):
    for UI events that keep their last good output and show the sentence instead of failing."""
    try:
        return user_errors(fn)(*args, **kwargs), None
    except gr.Error as e:
        return None, str(e.message)


def in_page(trigger: Callable[..., Any] | list, js: str, inputs: Any = None, outputs: Any = None, **kwargs: Any) -> Any:
    """An event that only runs ``js`` in the page: no server call, no endpoint, no progress shown.
    ``trigger``: an event listener (``button.click``), or a list of them (``gr.on``)."""
    listen = functools.partial(gr.on, trigger) if isinstance(trigger, list) else trigger
    return listen(None, inputs=inputs, outputs=outputs, js=js, **QUICK_EVENT, **kwargs)


def download_button(label: str, elem_id: str, **kwargs: Any) -> gr.DownloadButton:
    """A download of a result, offered once there is one."""
    return gr.DownloadButton(label, value=None, interactive=False, elem_id=elem_id, **kwargs)


def warning(sentence: str) -> str:
    """A sentence shown in place of a result that did not come (Markdown)."""
    return f"⚠️ {sentence}"


@dataclass
class AppContext:
    tagger: Tagger
    runner: ModelRunner
    demo_mode: bool = False
    examples: list[str] = field(default_factory=list)
    space_id: str | None = field(default_factory=lambda: os.environ.get("SPACE_ID"))
    # The long edge a request runs at unless it asks for another (None: by device, see
    # tagger.engine.resolution); the Tagger's max_size is the cap no request goes above.
    size: InitVar[int | None] = None
    default_size: int = field(init=False)

    def __post_init__(self, size: int | None) -> None:
        self.default_size = snap_size(size or size_for_device(self.tagger.device.type), self.size_cap, self.size_cap)

    @property
    def vocab(self) -> Vocabulary:
        return self.tagger.vocab

    @property
    def size_cap(self) -> int:
        return self.tagger.max_size

    def resolution(self, max_size: object = None) -> int:
        """A request's long edge: ``max_size`` (None: the default) snapped to 16 and capped."""
        return snap_size(max_size, self.size_cap, self.default_size)

    def preparer(self, max_size: object = None) -> Prepare:
        """``Tagger.prepare`` at a request's resolution, for batches decoding many images."""
        return functools.partial(self.tagger.prepare, max_size=self.resolution(max_size))

    def scores_for(self, image: str | None, max_size: object = None) -> np.ndarray:
        """Probabilities ``[num_tags]`` for one image: decode on the CPU, model on its device."""
        return self.runner.probabilities([prepare_image(self, image, max_size=max_size)])[0]


def prepare_image(ctx: AppContext, image: str | None, what: str = "an image", max_size: object = None) -> torch.Tensor:
    """Decode and preprocess one upload on the CPU at the request's resolution (None: the default)."""
    if image is None:
        raise ImageError(f"Please upload {what} first.")
    # A bad max_size is refused before decoding anything; the upload is named, not the temp path.
    return ctx.tagger.prepare(image, max_size=ctx.resolution(max_size), name=os.path.basename(image))
