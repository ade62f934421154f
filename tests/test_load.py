"""Load on the in-process app over loopback: many clients at once, every answer right, the
model never runs more requests at once than the queue allows, memory stays put, and a full
queue refuses politely. Bounded: 8 clients x 5 requests, hard time limits, 127.0.0.1 only.

The numbers (requests, errors, p50/p99 latency, RSS) are printed and written to
``test-artifacts/load.json``.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest
from app_server import RunningApp
from gradio_client import Client, handle_file
from PIL import Image

from tagger.runtime import ModelRunner

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from test apps

CLIENTS = 8
REQUESTS_PER_CLIENT = 5
HARD_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0
RSS_GROWTH_LIMIT_MB = 300.0  # generous: 40 tiny requests should cost a few MB at most
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


class InFlight:
    """Wraps ``ModelRunner.call`` to count how many model calls run at the same moment."""

    def __init__(self, runner: ModelRunner, hold_s: float = 0.0, gate: threading.Event | None = None):
        self.original: Callable[..., object] = runner.call
        self.hold_s = hold_s  # keep each call open a little so that overlaps would show
        self.gate = gate
        self.now = 0
        self.peak = 0
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        try:
            if self.gate is not None:
                self.gate.wait(REQUEST_TIMEOUT_S)
            time.sleep(self.hold_s)
            return self.original(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("load")
    paths = []
    for i, (w, h) in enumerate([(64, 48), (96, 96), (40, 120)]):
        path = folder / f"load_{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def concurrency_limit(app: RunningApp) -> int:
    limit = app.demo._queue.default_concurrency_limit
    assert isinstance(limit, int) and limit >= 1
    return limit


def test_concurrent_clients(app: RunningApp, images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    warm = Client(app.url, verbose=False)
    expected = [warm.submit(handle_file(str(p)), api_name="/tag").result(timeout=REQUEST_TIMEOUT_S) for p in images]
    counter = InFlight(app.context.runner, hold_s=0.02)
    monkeypatch.setattr(app.context.runner, "call", counter)
    gc.collect()
    rss_before = rss_mb()

    latencies: list[float] = []
    errors: list[str] = []
    wrong: list[str] = []
    record = threading.Lock()
    deadline = time.monotonic() + HARD_TIMEOUT_S

    def one_client(index: int) -> None:
        client = Client(app.url, verbose=False)
        for n in range(REQUESTS_PER_CLIENT):
            which = (index + n) % len(images)
            started = time.perf_counter()
            try:
                left = max(1.0, min(REQUEST_TIMEOUT_S, deadline - time.monotonic()))
                result = client.submit(handle_file(str(images[which])), api_name="/tag").result(timeout=left)
            except Exception as e:  # counted and reported, not raised: the test asserts on the totals
                with record:
                    errors.append(f"client {index} request {n}: {type(e).__name__}: {e}")
                continue
            with record:
                latencies.append(time.perf_counter() - started)
                if result != expected[which]:
                    wrong.append(f"client {index} request {n}: {images[which].name}")

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(one_client, i) for i in range(CLIENTS)]
        done, pending = wait(futures, timeout=HARD_TIMEOUT_S + 5)
        assert not pending, "load test ran past its hard time limit"
        for f in done:
            f.result()
    wall = time.perf_counter() - started
    gc.collect()
    rss_after = rss_mb()

    total = CLIENTS * REQUESTS_PER_CLIENT
    stats = {
        "clients": CLIENTS,
        "requests": total,
        "answered": len(latencies),
        "errors": len(errors),
        "wrong_answers": len(wrong),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2) if wall else None,
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "concurrency_limit": concurrency_limit(app),
        "peak_model_calls_at_once": counter.peak,
        "model_calls": counter.calls,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "device": app.context.tagger.device.type,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(stats, indent=2) + "\n")
    print("\nload:", json.dumps(stats))

    assert not errors, errors[:5]
    assert not wrong, wrong[:5]
    assert len(latencies) == total
    assert counter.calls == total
    assert 1 <= counter.peak <= concurrency_limit(app)
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB


def test_full_queue_refuses_and_recovers(app: RunningApp, images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """With the model busy and the queue at its limit, further requests are refused with
    Gradio's queue-full message; the accepted ones all finish once the model is free."""
    gate = threading.Event()
    counter = InFlight(app.context.runner, gate=gate)
    monkeypatch.setattr(app.context.runner, "call", counter)
    monkeypatch.setattr(app.demo._queue, "max_size", 2)
    client = Client(app.url, verbose=False)
    image = handle_file(str(images[0]))
    try:
        first = client.submit(image, api_name="/tag")
        wait_until(lambda: counter.now == concurrency_limit(app) or first.done(), 10)
        jobs = [client.submit(image, api_name="/tag") for _ in range(4)]
        outcomes: list[str] = []
        for job in jobs:
            wait_until(lambda job=job: job.status().code.name not in ("STARTING", "JOINING_QUEUE"), 10)
        for job in jobs:
            if job.done():
                try:
                    job.result(timeout=1)
                    outcomes.append("done")
                except Exception as e:
                    outcomes.append(str(e))
            else:
                outcomes.append("queued")
    finally:
        gate.set()
    refused = [o for o in outcomes if o not in ("done", "queued")]
    assert refused, outcomes
    assert all("queue is full" in o.lower() for o in refused), refused
    assert first.result(timeout=REQUEST_TIMEOUT_S)["count"] >= 0
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome == "queued":
            assert job.result(timeout=REQUEST_TIMEOUT_S)["count"] >= 0
    assert counter.peak <= concurrency_limit(app)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(0.02)
