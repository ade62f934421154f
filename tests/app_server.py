"""Start the real app (demo mode: tiny random model) in this process on a free loopback port.

In-process so that tests can watch the model (``count_passes(context.tagger)``) while
talking to the server over HTTP like any client.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import gradio as gr

from tagger.web.context import AppContext
from tagger.web.server import create_app, launch


@dataclass
class RunningApp:
    demo: gr.Blocks
    context: AppContext
    url: str

    def close(self) -> None:
        self.demo.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(argv: list[str] | None = None, **create: Any) -> RunningApp:
    """``create``: more keyword arguments for ``create_app`` (``limits=FairShareLimits(...)``)."""
    demo, context = create_app(argv if argv is not None else ["--demo"], **create)
    _, url, _ = launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    return RunningApp(demo, context, url)
