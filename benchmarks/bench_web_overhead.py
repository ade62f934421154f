"""Web overhead: ``/tag`` through the app against the bare ``Tagger`` forward, same image, same process.

``flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_web_overhead.py [--runs 5] [--size 512] [--tiny]``;
``--release-after 64`` runs it under the old rule (memory released after any request that grew
the process by 64 MiB), to compare.

The app runs in this process on loopback with the full-size random checkpoint
(``benchmarks/cache``, written by ``bench_engine.ensure_files`` if absent; ``--tiny``: a tiny
one, to check the script). Each round times one ``gradio_client`` call of ``/tag`` with a
``--size`` px image (and the model call inside it) and bare forwards of the app's own
``Tagger`` on the same file (``prepare`` + ``run``: in this thread, then in one reused worker
thread), interleaved so that a change of machine load hits all; one warm-up round first.
Prints the medians and the ratio of ``/tag`` to the bare forward (target ≤ 1.10).

A random head scores most of the 74,625 tags near 0.5, so ~49,000 clear the default
thresholds and ``/tag`` answers 6 MB of JSON, most of whose cost is Gradio's and
gradio_client's walk over every value of it (looking for files). The real checkpoint passes a
few dozen. So before the first request the head's biases are lowered in memory (spread from
-4 to -16, as the demo model spreads its own) and about a hundred tags pass, as on a real
image; ``--dense`` keeps the random head as it is, to measure that worst case.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    sys.path.insert(0, str(_path))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TARGET = 1.10


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--size", type=int, default=512, help="the square image's side in pixels")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: checks the script in seconds")
    parser.add_argument(
        "--mode", help="/tag's selection mode (default: the app's threshold mode; topk: a few per category)"
    )
    parser.add_argument("--dense", action="store_true", help="keep the random head: ~49,000 tags pass (a 6 MB answer)")
    parser.add_argument(
        "--release-after", type=float, metavar="MIB", help="the memory policy's growth threshold (64: the old rule)"
    )
    args = parser.parse_args()

    logging.getLogger("httpx").setLevel(logging.WARNING)
    import torch
    from bench_engine import DEFAULT_CACHE, ensure_files
    from PIL import Image

    checkpoint = DEFAULT_CACHE.with_name("tiny_random.safetensors") if args.tiny else DEFAULT_CACHE
    vocab, note = ensure_files(checkpoint, tiny=args.tiny)

    from app_server import start_app
    from gradio_client import Client, handle_file

    from tagger.engine import cpu

    if args.release_after is not None:
        cpu.MEMORY.growth_bytes = int(args.release_after * 2**20)

    image = Path(tempfile.mkdtemp(prefix="web-overhead-")) / "image.png"
    Image.open(ROOT / "examples" / "astronaut.jpg").convert("RGB").resize((args.size, args.size)).save(image)
    app = start_app(["--checkpoint", str(checkpoint), "--vocab", str(vocab)])
    tagger = app.context.tagger
    if not args.dense:
        bias = tagger.model.head.layers[-1].bias
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            bias.copy_(torch.linspace(-4.0, -16.0, len(bias))[torch.randperm(len(bias), generator=generator)])
    client = Client(app.url, verbose=False)

    model_calls: list[float] = []  # the model call inside /tag: the rest of /tag is the web's own
    probabilities = app.context.runner.probabilities

    def timed_probabilities(pixels: list) -> object:
        start = time.perf_counter()
        try:
            return probabilities(pixels)
        finally:
            model_calls.append(time.perf_counter() - start)

    app.context.runner.probabilities = timed_probabilities  # type: ignore[method-assign]

    counts: list[int] = []  # tags answered: a random model crosses the threshold thousands of times

    def web() -> None:
        mode = {"mode": args.mode} if args.mode else {}
        result = client.predict(handle_file(str(image)), **mode, api_name="/tag")
        counts.append(result["count"])

    def bare() -> None:
        tagger.run([tagger.prepare(str(image), max_size=app.context.resolution(None))])

    worker = ThreadPoolExecutor(1)  # one thread, reused, as Gradio's workers are

    def in_a_thread() -> None:
        worker.submit(bare).result()

    times: dict[str, list[float]] = {"web": [], "bare": [], "thread": []}
    try:
        for round_ in range(args.runs + 1):
            for name, call in (("web", web), ("bare", bare), ("thread", in_a_thread)):
                start = time.perf_counter()
                call()
                elapsed = time.perf_counter() - start
                if round_:  # round 0 warms up
                    times[name].append(elapsed)
                inside = f" (model call {model_calls[-1]:.2f} s)" if name == "web" else ""
                print(f"round {round_} {name}: {elapsed:.2f} s{inside}, RSS {rss_mib():.0f} MiB", flush=True)
    finally:
        app.close()
    head = ", dense head" if args.dense else ""
    web_s, bare_s = statistics.median(times["web"]), statistics.median(times["bare"])
    ratio = web_s / bare_s
    print(
        f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}; model: {note}; release after "
        f"{cpu.MEMORY.growth_bytes / 2**20:.0f} MiB of growth\n"
        f"{args.size} px, {args.runs} timed rounds: /tag ({counts[-1]} tags{head}) {web_s:.2f} s (median; "
        f"{min(times['web']):.2f}–{max(times['web']):.2f}), bare forward {bare_s:.2f} s "
        f"({min(times['bare']):.2f}–{max(times['bare']):.2f}); the model call inside /tag "
        f"{statistics.median(model_calls[1:]):.2f} s, the bare forward in a worker thread "
        f"{statistics.median(times['thread']):.2f} s; ratio {ratio:.3f} "
        f"({'≤' if ratio <= TARGET else '>'} {TARGET})"
    )


if __name__ == "__main__":
    main()
