"""Refused ``/tag`` calls in a loop: does each one leave memory behind in the server?

A script, not a test: ``.venv/bin/python benchmarks/bench_refused_calls.py [--calls 2400]
[--every 150] [--gradio-analytics]``.

The app (demo model) and a ``gradio_client`` client run in this process, the way Gradio's MCP
server calls the app through its loopback client. The client sends ``/tag`` a file that is not
an image, ``--calls`` times; every ``--every`` calls the process's RSS after ``gc`` +
``malloc_trim(0)`` is printed. ``--gradio-analytics`` puts back what Gradio's queue does by
default (a record of each event and a pandas summary of them all, rebuilt after each one),
which the app turns off (``tagger.web.gradio_compat.skip_event_analytics``), to compare.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app_server import start_app  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tagger.web import gradio_compat  # noqa: E402
from tagger.web.fairshare import FairShareLimits  # noqa: E402


def trimmed_rss_mib() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2400)
    parser.add_argument("--every", type=int, default=150)
    parser.add_argument("--gradio-analytics", action="store_true", help="Gradio's default event analytics")
    args = parser.parse_args()

    app = start_app(["--demo"], limits=FairShareLimits(upload_bytes_per_client=2**40))
    if args.gradio_analytics:
        queue = gradio_compat.app_queue(app.demo)
        queue.ANALYTICS_MAX_EVENTS, queue.ANAYLTICS_CACHE_FREQUENCY = 10_000, 1  # Gradio's defaults
    with tempfile.TemporaryDirectory() as folder:
        not_an_image = Path(folder) / "x.png"
        not_an_image.write_bytes(b"not an image")
        client = Client(app.url, verbose=False, download_files=False, headers={"x-gradio-user": "mcp"})
        start, readings = time.monotonic(), []
        for done in range(1, args.calls + 1):
            try:
                client.predict(handle_file(str(not_an_image)), api_name="/tag")
            except AppError:
                pass
            else:
                raise SystemExit("the app tagged a file that is not an image")
            if done % args.every == 0:
                readings.append(trimmed_rss_mib())
                print(f"{done:>6} calls  {readings[-1]:.1f} MiB  {time.monotonic() - start:.0f} s", flush=True)
    analytics = "Gradio's default analytics" if args.gradio_analytics else "the app's queue (no analytics)"
    print(f"{analytics}: RSS after trim {readings[0]:.1f} -> {readings[-1]:.1f} MiB over {args.calls} refused calls")
    app.close()


if __name__ == "__main__":
    main()
