"""GPU benchmark: one command, one JSON, everything a GPU user meets (under 5 minutes on an H100).

    python benchmarks/bench_gpu.py --out benchmarks/gpu_results.json          # on a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --tiny --out /tmp/smoke.json  # the same on the CPU, < 1 min

On the full-size random-weight checkpoint (written once by ``bench_engine.py``'s writer; about
2.5 GiB) and a random 74,625-tag vocabulary (``--tiny``: a 2-block model), the JSON holds:

* ``first_call``: a fresh process (as a fresh ZeroGPU worker): CUDA context, load, the first
  ``Tagger.run`` on one image and the second, each timed;
* ``thread_per_call``: single-image latency of ``Tagger.run`` with a new thread per call (as
  ZeroGPU runs every call) and a random shape each time (long edge ≤ 1024, any aspect),
  against the same calls on one warm thread;
* ``padded_vs_alone``: the largest |Δp| between images tagged in padded mixed-size batches
  and the same images alone;
* ``attention_backend``: the SDPA kernel that ran (profiler), without and with a mask, and
  whether cuDNN attention is enabled;
* ``throughput``: batched images/s and MFU (model FLOPs ÷ the device's peak) at 512 and
  1024 px; on CUDA also at 512 px with cuDNN attention turned back on (bulk's long-lived
  threads: kept off unless it wins there);
* ``batching``: masked passes and padding waste the planner makes on realistic size mixes
  (``bench_batching.py``);
* ``zerogpu_durations``: what ``tagger.web.runtime`` asks ZeroGPU for against what the calls took;
* ``peak_memory``: peak GPU memory per stage (CUDA), and the host's peak RSS.

Goals printed next to the results: ≤ 15 ms per 512 px image warm, ≥ 150 images/s at 512 px
batch 32 (H100), ZeroGPU durations within 3× of what the calls use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_batching  # noqa: E402  (after the path set-up above)
import bench_engine  # noqa: E402

GOAL_LATENCY_512_MS = 15.0
GOAL_IMAGES_PER_S = 150.0
GOAL_DURATION_RATIO = 3.0
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment;
# fp32 peaks for GPUs that compute in fp32 here (below compute capability 8.0).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "A10G": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "T4": 8.1,
    "V100": 15.7,
}


def _stats_ms(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "max_ms": ms[-1], "runs": len(ms)}  # fmt: skip


def forward_flops(config, tokens: int) -> float:  # type: ignore[no-untyped-def]
    """Multiply-add FLOPs (×2) of one forward over ``tokens`` tokens: linears, attention, head."""
    c, i = config.hidden_size, config.intermediate_size
    per_token = 2 * (3 * c * c + c * c + 2 * c * i + i * c)
    attention = 2 * 2 * tokens * tokens * c  # q·kᵀ and p·v
    head = 2 * config.descriptor_dim * config.num_tags
    return config.num_layers * (per_token * tokens + attention) + 2 * 3 * 256 * c * (tokens - 5) + head


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def random_shape(rng: random.Random) -> tuple[int, int]:
    """(width, height) with a long edge of 256-1024 and an aspect ratio of 1:3 to 3:1."""
    long = rng.randrange(256, 1025)
    short = max(16, int(long / rng.uniform(1.0, 3.0)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def first_call_worker(device_name: str, checkpoint: str, vocab: str) -> dict:
    """Runs in a fresh process: what a new ZeroGPU worker pays before its first answer."""
    started = time.perf_counter()
    import numpy as np
    import torch
    from PIL import Image

    from tagger.engine.tagger import Tagger

    out: dict = {}
    out["import_s"] = time.perf_counter() - started
    t0 = time.perf_counter()
    if device_name.startswith("cuda"):
        torch.empty(1, device=device_name)
        torch.cuda.synchronize()
    out["cuda_context_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tagger = Tagger(checkpoint, vocab, device=device_name)
    out["load_s"] = time.perf_counter() - t0
    pixels = [tagger.prepare(Image.fromarray(np.full((512, 512, 3), 128, np.uint8)))]
    for name in ("first_run_s", "second_run_s"):
        t0 = time.perf_counter()
        tagger.run(pixels)
        out[name] = time.perf_counter() - t0
    out["total_to_first_answer_s"] = time.perf_counter() - started - out["second_run_s"]
    return out


def run_first_call(device_name: str, checkpoint: Path, vocab: Path) -> dict:
    command = [sys.executable, __file__, "--first-call-worker", "--device", device_name]
    command += ["--checkpoint-cache", str(checkpoint), "--vocab", str(vocab), "--out", os.devnull]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0  # the interpreter and torch's import included
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def run(device_name: str, tiny: bool, runs: int, checkpoint: Path, vocab: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from tagger.engine.tagger import Tagger
    from tagger.web.runtime import gpu_duration, gpu_seconds

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    peaks: dict[str, float | None] = {}

    def stage(name: str) -> None:
        if cuda:
            peaks[name] = torch.cuda.max_memory_allocated(device) / bench_engine.GIB
            torch.cuda.reset_peak_memory_stats(device)

    def image(width: int, height: int, seed: int) -> Image.Image:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
        return Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)

    name = torch.cuda.get_device_name(device) if cuda else bench_engine._cpu_model()
    out: dict = {
        "device": name,
        "capability": list(torch.cuda.get_device_capability(device)) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "model": "tiny random" if tiny else "full-size random (ViT-H/16+, 74,625 tags)",
        "runs": runs,
    }
    out["first_call"] = run_first_call(device_name, checkpoint, vocab)

    tagger = Tagger(checkpoint, vocab, device=device_name, max_batch_size=32)
    out["dtype"] = str(tagger.dtype).removeprefix("torch.")
    config = tagger.model.config
    stage("load")

    # ---- one image per call: a new thread each time, random shapes --------------------
    rng = random.Random(0)
    shapes = [random_shape(rng) for _ in range(runs)]
    prepared = [tagger.prepare(image(w, h, i)) for i, (w, h) in enumerate(shapes)]
    tagger.run(prepared[:1])  # the process is warm; what is measured is the thread and the shape

    def call(pixels: torch.Tensor) -> None:
        tagger.run([pixels])
        sync()

    def in_new_thread(pixels: torch.Tensor) -> float:
        elapsed: list[float] = []

        def work() -> None:
            t0 = time.perf_counter()
            call(pixels)
            elapsed.append(time.perf_counter() - t0)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        return elapsed[0]

    new_threads = [in_new_thread(p) for p in prepared]
    same_thread = []
    for p in prepared:  # the same shapes again, now all seen, on this one thread
        t0 = time.perf_counter()
        call(p)
        same_thread.append(time.perf_counter() - t0)
    square = tagger.prepare(image(512, 512, 99))
    call(square)
    warm_512 = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call(square)
        warm_512.append(time.perf_counter() - t0)
    out["thread_per_call"] = {
        "shapes": [list(s) for s in shapes],
        "new_thread_random_shapes": _stats_ms(new_threads),
        "same_thread_seen_shapes": _stats_ms(same_thread),
        "warm_512": _stats_ms(warm_512),
        "new_thread_over_same_thread": statistics.median(new_threads) / statistics.median(same_thread),
    }
    stage("thread_per_call")

    # ---- padded batches against images alone --------------------------------------------
    mixed = prepared[:8]
    padded = Tagger(checkpoint, vocab, device=device_name, dtype=tagger.dtype, max_batch_size=8, max_padding=1e9)
    plan = padded.plan(mixed)
    together = padded.run(mixed)
    alone = np.concatenate([tagger.run([p]) for p in mixed])
    out["padded_vs_alone"] = {
        "max_abs_dp": float(np.abs(together - alone).max()),
        "passes": len(plan),
        "masked_passes": sum(b.masked for b in plan),
        "images": len(mixed),
    }
    del padded
    stage("padded_vs_alone")

    # ---- which attention kernel runs ----------------------------------------------------
    def kernels(pixels: object) -> list[str]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch.inference_mode(), profile(activities=activities) as prof:
            tagger.model(pixels)
            sync()
        names = {e.key for e in prof.key_averages()}
        return sorted(n for n in names if "attention" in n.lower() and n.startswith("aten::_"))

    same = torch.randn(2, 3, 256, 256, device=device).to(tagger.dtype)
    both = [torch.randn(3, 256, 256, device=device), torch.randn(3, 128, 256, device=device)]
    out["attention_backend"] = {
        "cudnn_sdp_enabled": torch.backends.cuda.cudnn_sdp_enabled(),
        "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
        "mem_efficient_sdp_enabled": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "unmasked": kernels(same),
        "masked": kernels(both),
    }

    # ---- throughput and MFU ---------------------------------------------------------------
    peak = peak_tflops(name) if cuda else None
    batch = 8 if tiny else 32

    def throughput(side: int, n: int) -> dict:
        pixels = [tagger.prepare(image(side, side, side))] * n
        tagger.run(pixels)
        sync()
        times = []
        for _ in range(max(2, runs // 4)):
            t0 = time.perf_counter()
            tagger.run(pixels)
            sync()
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
        tokens = 5 + (side // 16) ** 2
        achieved = forward_flops(config, tokens) * n / seconds / 1e12
        return {"batch": n, "images_per_s": n / seconds, "achieved_tflops": achieved,
                "mfu": None if peak is None else achieved / peak, **_stats_ms(times)}  # fmt: skip

    out["throughput"] = {
        "peak_tflops": peak,
        "512": throughput(512, batch),
        "1024": throughput(1024, max(2, batch // 4)),
    }
    if cuda:  # cuDNN attention back on, only for this measurement (long-lived threads, as bulk's)
        torch.backends.cuda.enable_cudnn_sdp(True)
        try:
            out["throughput"]["512_cudnn_attention_on"] = throughput(512, batch)
        finally:
            torch.backends.cuda.enable_cudnn_sdp(False)
    stage("throughput")

    # ---- ZeroGPU durations against what the calls took --------------------------------------
    def took(pixels: list[torch.Tensor]) -> float:
        t0 = time.perf_counter()
        tagger.run(pixels)
        sync()
        return time.perf_counter() - t0

    one, chunk = [tagger.prepare(image(1024, 768, 7))], [tagger.prepare(image(1024, 1024, 8))] * 16
    warm = {
        "one_1024": (gpu_duration(Tagger.run, one), took(one)),
        "chunk_16x1024": (gpu_duration(Tagger.run, chunk), took(chunk)),
    }
    first = out["first_call"]
    durations = {k: {"asked_s": a, "used_s": u, "ratio": a / u} for k, (a, u) in warm.items()}
    fresh_used = first["cuda_context_s"] + first["load_s"] + first["first_run_s"]
    fresh_asked = gpu_seconds([torch.zeros(3, 512, 512)], fresh_worker=True)
    durations["fresh_worker_one_512"] = {
        "asked_s": fresh_asked,
        "used_s": fresh_used,
        "ratio": fresh_asked / fresh_used,
    }
    out["zerogpu_durations"] = durations

    out["peak_memory"] = {
        "gpu_gib_by_stage": peaks if cuda else None,
        "host_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / bench_engine.GIB,
    }
    out["batching"] = bench_batching.measure()
    lat = statistics.median(warm_512) * 1e3
    rate = out["throughput"]["512"]["images_per_s"]
    out["goals"] = {
        "latency_512_ms": {"goal": GOAL_LATENCY_512_MS, "measured": lat, "met": lat <= GOAL_LATENCY_512_MS},
        "images_per_s_512": {"goal": GOAL_IMAGES_PER_S, "measured": rate, "met": rate >= GOAL_IMAGES_PER_S},
        "zerogpu_duration_ratio": {
            "goal": GOAL_DURATION_RATIO,
            "measured": max(d["ratio"] for d in durations.values()),
            "met": all(d["ratio"] <= GOAL_DURATION_RATIO for d in durations.values()),
        },
    }
    return out


REQUIRED_KEYS = ("thread_per_call", "first_call", "padded_vs_alone", "attention_backend", "throughput", "peak_memory")


def _print_summary(r: dict) -> None:
    t, f, p = r["thread_per_call"], r["first_call"], r["padded_vs_alone"]
    print(f"\nDevice: {r['device']} ({r['dtype']}); torch {r['torch']} (CUDA {r['cuda']}); model: {r['model']}")
    print(f"Wall time of the whole run: {r['wall_s']:.0f} s\n")
    print("| metric | measured | goal |")
    print("|---|---|---|")
    print(f"| fresh process: context + load + first call | {f['cuda_context_s']:.2f} + {f['load_s']:.2f} + "
          f"{f['first_run_s']:.3f} s (second call {f['second_run_s'] * 1e3:.1f} ms) | |")  # fmt: skip
    new, same = t["new_thread_random_shapes"], t["same_thread_seen_shapes"]
    print(f"| one image, new thread per call, random shapes | {new['median_ms']:.1f} ms (p90 {new['p90_ms']:.1f}); "
          f"same thread {same['median_ms']:.1f} ms | |")  # fmt: skip
    g = r["goals"]
    print(f"| one 512 px image, warm | {g['latency_512_ms']['measured']:.1f} ms | ≤ {GOAL_LATENCY_512_MS:.0f} ms "
          f"{'✅' if g['latency_512_ms']['met'] else '❌'} |")  # fmt: skip
    for side in ("512", "1024"):
        th = r["throughput"][side]
        mfu = "n/a" if th["mfu"] is None else f"{th['mfu']:.0%}"
        goal = f"≥ {GOAL_IMAGES_PER_S:.0f}/s {'✅' if g['images_per_s_512']['met'] else '❌'}" if side == "512" else ""
        print(f"| batch {th['batch']} at {side} px | {th['images_per_s']:.1f} images/s, MFU {mfu} | {goal} |")
    if "512_cudnn_attention_on" in r["throughput"]:
        on = r["throughput"]["512_cudnn_attention_on"]
        print(f"| batch at 512 px, cuDNN attention on | {on['images_per_s']:.1f} images/s | |")
    print(
        f"| padded batches vs alone | max Δp {p['max_abs_dp']:.2e} ({p['masked_passes']} masked of {p['passes']}) | |"
    )
    a = r["attention_backend"]
    print(
        f"| attention kernels | unmasked {a['unmasked']}, masked {a['masked']}; cuDNN on: {a['cudnn_sdp_enabled']} | |"
    )
    d = g["zerogpu_duration_ratio"]
    verdict = "✅" if d["met"] else "❌"
    print(f"| ZeroGPU asked / used (worst) | {d['measured']:.1f}× | ≤ {GOAL_DURATION_RATIO:.0f}× {verdict} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (CPU check, under a minute)")
    parser.add_argument("--checkpoint-cache", type=Path, default=None, help="random checkpoint (written if absent)")
    parser.add_argument("--runs", type=int, default=None, help="calls per latency measurement (default 20, --tiny 4)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--first-call-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_call_worker:
        print(json.dumps(first_call_worker(args.device, str(args.checkpoint_cache), str(args.vocab))))
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("torch sees no CUDA device; on the CPU use --device cpu --tiny")
    started = time.perf_counter()
    default = bench_engine.DEFAULT_CACHE
    checkpoint = args.checkpoint_cache or (default.with_name("tiny_random.safetensors") if args.tiny else default)
    checkpoint = checkpoint.absolute()
    vocab, note = bench_engine.ensure_files(checkpoint, args.tiny)
    print(f"[bench_gpu] checkpoint: {note}", file=sys.stderr)
    runs = args.runs if args.runs is not None else (4 if args.tiny else 20)
    result = run(args.device, args.tiny, runs, checkpoint, vocab)
    result["command"] = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["wall_s"] = time.perf_counter() - started
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise SystemExit(f"bench_gpu: the results lack {missing}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    _print_summary(result)
    print(f"\n[bench_gpu] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
