"""A large upload at the default resolution costs about what a small one does: ``/tag`` timed end
to end (upload, decode, resize, model, answer) through ``gradio_client`` against the real app
with the full-size random checkpoint (bench_bulk's: real key layout, 74,625 tags, head biases
that answer like the real model), on the CPU.

The app runs at its CPU default (``--size`` 512): a 1536 px upload is resized to 512 px before
the model, so it should be answered within 1.3x the time of a 512 px upload (the goal), where
at the old fixed 1024 px it took several times as long. ``--also`` adds sizes asked for per
request (e.g. ``--also 1024``) to show what a larger ``max_size`` costs. Uploads alternate
round by round after one warm-up call each. Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/bench_resolution.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app_server import start_app  # noqa: E402
from bench_bulk import CACHE, _smooth_jpegs, ensure_model  # noqa: E402

GOAL = 1.3  # the 1536 px upload's time over the 512 px one's, at the default resolution
UPLOADS = {"512 px upload": (512, 384), "1536 px upload": (1536, 1152)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also", type=int, nargs="*", default=[], help="max_size values to time the large upload at")
    args = parser.parse_args(argv)

    import torch
    from gradio_client import Client, handle_file

    checkpoint, vocab = ensure_model("full")
    files = [(f"{name.split()[0]}.jpg", size) for name, size in UPLOADS.items()]
    folder = _smooth_jpegs(CACHE / "resolution_images", files, seed=5, coarseness=25)
    cases: dict[str, tuple[Path, dict]] = {name: (folder / f"{name.split()[0]}.jpg", {}) for name in UPLOADS}
    for size in args.also:
        cases[f"1536 px upload, max_size={size}"] = (folder / "1536.jpg", {"max_size": size})

    app = start_app(["--checkpoint", str(checkpoint), "--vocab", str(vocab), "--device", "cpu"])
    try:
        client = Client(app.url, verbose=False)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for path, kwargs in cases.values():  # warm-up: first-call allocations, thread pools
            client.predict(handle_file(str(path)), api_name="/tag", **kwargs)
        for round_ in range(args.rounds):
            order = list(cases)
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            for name in order:
                path, kwargs = cases[name]
                start = time.perf_counter()
                client.predict(handle_file(str(path)), api_name="/tag", **kwargs)
                times[name].append(time.perf_counter() - start)
                print(f"[bench] round {round_ + 1} {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
        default = app.context.default_size
    finally:
        app.close()

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; app at its CPU default of {default} px; {args.rounds} rounds"
    )
    print("| upload | /tag answered in (median, min–max) |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} s ({min(values):.2f}–{max(values):.2f}) |")
    small, large = (statistics.median(times[name]) for name in UPLOADS)
    ratio = large / small
    print(
        f"1536 px / 512 px at the default resolution: {ratio:.2f}x "
        f"(goal ≤ {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'})"
    )
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
