"""Engine benchmark: checkpoint load time and memory, forward latency on CPU (and CUDA).

A script, not a test. It writes (or reuses) a full-size random-weight bf16 checkpoint in
the real key layout (``--checkpoint-cache``, default ``benchmarks/cache/``, git-ignored;
about 2.6 GB), then runs every measurement in a fresh subprocess so that one
measurement's allocations, caches and thread pools cannot colour the next, and prints a
markdown table ready to paste into the README::

    .venv/bin/python benchmarks/bench_engine.py                      # load + CPU bf16 + fp32
    .venv/bin/python benchmarks/bench_engine.py --skip-fp32 --runs 3
    .venv/bin/python benchmarks/bench_engine.py --device cuda --sizes 512,768,1024
    .venv/bin/python benchmarks/bench_engine.py --baseline-authors-style

Measurements:

* load: ``tagger.weights.load_model(path, dtype=bf16, head_dtype=bf16)`` on the CPU with
  the file already in the page cache (read once just before); wall time to a ready model
  (``--load-runs`` fresh processes, median and min) and peak RSS (``ru_maxrss``), next to
  the RSS of a bare ``import torch`` process.
* CPU forward: one image per size, ``torch.inference_mode()``, one warm-up and ``--runs``
  timed runs (median and min); bf16 backbone with a bf16-stored head computed in fp32, and
  optionally the same in fp32.
* CUDA forward (``--device cuda`` or ``auto`` with a GPU): bf16 backbone, fp32 head.
* ``--baseline-authors-style``: the authors' way of loading (fp32 model with random init,
  ``safetensors.torch.load_file`` of the whole file, ``load_state_dict``, cast to bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_CACHE = ROOT / "benchmarks" / "cache" / "full_random.safetensors"
GIB = 1024**3

# Targets on the reference 2-core AVX512-BF16/AMX machine (see the README).
LOAD_TARGET_S = 3.0
LOAD_RSS_TARGET_GIB = 3.2
CPU_BF16_512_TARGET_S = 6.0


# --------------------------------------------------------------------------------------
# Helpers shared by parent and workers
# --------------------------------------------------------------------------------------


def _rss_now_bytes() -> int:
    """Current resident set size of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _warm_page_cache(path: Path, chunk: int = 64 * 1024 * 1024) -> float:
    """Read the whole file once (like ``cat file > /dev/null``) so loads start warm."""
    start = time.perf_counter()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _total_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _timed_runs(fn, runs: int, sync=None) -> list[float]:
    times = []
    for _ in range(runs):
        if sync is not None:
            sync()
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------------------
# Workers (each runs in its own fresh interpreter)
# --------------------------------------------------------------------------------------


def _worker_baseline_rss(_: dict) -> dict:
    import torch

    return {
        "rss_after_import_torch": _rss_now_bytes(),
        "peak_rss_after_import_torch": _peak_rss_bytes(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _worker_load(args: dict) -> dict:
    import torch

    from tagger.weights import load_model

    rss_import = _rss_now_bytes()
    peak_import = _peak_rss_bytes()
    start = time.perf_counter()
    model = load_model(args["checkpoint"], dtype=torch.bfloat16, head_dtype=torch.bfloat16)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss_bytes(),
        "rss_after": _rss_now_bytes(),
        "rss_after_import_torch": rss_import,
        "peak_rss_after_import_torch": peak_import,
        "params": params,
    }


def _worker_authors_load(args: dict) -> dict:
    """The authors' loader, emulated on our model: fp32 random init, whole-file load, cast.

    Every checkpoint tensor is copied into its (fp32) parameter, as ``load_state_dict``
    does; q/k/v and gate/up are copied into their slices of our fused parameters.
    """
    import torch
    from safetensors.torch import load_file

    from tagger.model import TaggerModel
    from tagger.weights import _canonical_backbone_key, _param_sources, inspect_checkpoint

    rss_import = _rss_now_bytes()
    start = time.perf_counter()
    plan = inspect_checkpoint(args["checkpoint"])
    model = TaggerModel(plan.config)  # float32, random init, like the authors' script
    raw = load_file(args["checkpoint"])  # the whole state dict in memory
    tensors = {_canonical_backbone_key(k): v for k, v in raw.items() if k.startswith("backbone.")}
    sources = _param_sources(plan.config)
    for n, (weight_key, bias_key) in enumerate(plan.head_keys):
        tensors[weight_key], sources[f"head.layers.{n}.weight"] = raw[weight_key], [weight_key]
        if bias_key is not None:
            tensors[bias_key], sources[f"head.layers.{n}.bias"] = raw[bias_key], [bias_key]
    params = dict(model.named_parameters())
    if set(sources) != set(params):
        raise RuntimeError(f"parameters without a source: {sorted(set(params) - set(sources))}")
    with torch.no_grad():
        for name, keys in sources.items():
            param, row = params[name], 0
            for key in keys:
                rows = plan.config.hidden_size if key is None else tensors[key].shape[0]
                block = param[row : row + rows]
                if key is None:
                    block.zero_()
                else:
                    block.copy_(tensors[key].view(block.shape))
                row += rows
    del raw, tensors
    model = model.to(torch.bfloat16).eval().requires_grad_(False)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss_bytes(),
        "rss_after": _rss_now_bytes(),
        "rss_after_import_torch": rss_import,
    }


def _worker_forward(args: dict) -> dict:
    import torch

    from tagger.weights import load_model

    device = torch.device(args["device"])
    dtype = getattr(torch, args["dtype"])
    head_dtype = getattr(torch, args["head_dtype"])
    model = load_model(args["checkpoint"], device=device, dtype=dtype, head_dtype=head_dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    generator = torch.Generator().manual_seed(0)
    results = {"threads": torch.get_num_threads(), "sizes": {}}
    for size in args["sizes"]:
        pixels = torch.randn(1, 3, size, size, generator=generator).to(device)
        with torch.inference_mode():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _timed_runs(lambda pixels=pixels: model(pixels), 1, sync)  # warm-up
            times = _timed_runs(lambda pixels=pixels: model(pixels), args["runs"], sync)
            descriptor = model.descriptor(pixels)
            head_times = _timed_runs(lambda d=descriptor: model.head(d), args["runs"], sync)
        entry = {"times": times, "head_times": head_times}
        if device.type == "cuda":
            entry["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        results["sizes"][str(size)] = entry
    results["peak_rss"] = _peak_rss_bytes()
    return results


def _worker_write(args: dict) -> dict:
    import torch

    from tagger.model import TaggerConfig
    from tagger.synthetic import write_random_checkpoint

    path = Path(args["path"])
    tmp = path.with_name(path.name + ".partial")
    write_random_checkpoint(tmp, TaggerConfig(), dtype=torch.bfloat16)
    os.replace(tmp, path)
    return {"peak_rss": _peak_rss_bytes()}


WORKERS = {
    "write": _worker_write,
    "baseline": _worker_baseline_rss,
    "load": _worker_load,
    "authors_load": _worker_authors_load,
    "forward": _worker_forward,
}


def _run_worker(kind: str, args: dict, env: dict[str, str] | None = None) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is a JSON result."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--worker-args", json.dumps(args)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(ROOT), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{proc.stderr.strip()[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------


def _checkpoint_is_valid(path: Path) -> tuple[bool, str]:
    import torch

    from tagger.model import TaggerConfig
    from tagger.weights import CheckpointError, inspect_checkpoint

    if not path.is_file():
        return False, "absent"
    try:
        plan = inspect_checkpoint(path)
    except CheckpointError as e:
        return False, str(e)
    expected = TaggerConfig()
    if plan.config != expected:
        return False, f"config {plan.config} differs from the full-size defaults"
    dtypes = {info.dtype for info in plan.tensors.values()}
    if dtypes != {torch.bfloat16}:
        return False, f"tensor dtypes {sorted(map(str, dtypes))}, expected only bfloat16"
    return True, "ok"


def ensure_checkpoint(path: Path, env: dict[str, str] | None = None) -> str:
    """Reuse a valid full-size checkpoint at ``path`` or write one (in a subprocess: ~6 GB peak)."""
    ok, why = _checkpoint_is_valid(path)
    if ok:
        return f"reused {path}"
    print(f"[bench] writing a full-size random checkpoint to {path} ({why}); this can take minutes", file=sys.stderr)
    start = time.perf_counter()
    _run_worker("write", {"path": str(path)}, env)
    ok, why = _checkpoint_is_valid(path)
    if not ok:
        raise RuntimeError(f"the checkpoint just written is not valid: {why}")
    return f"wrote {path} in {time.perf_counter() - start:.0f} s"


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _fmt_gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _latency(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s (min {min(times):.2f})"


def _target(value: float, target: float, unit: str) -> str:
    return f"≤ {target:.1f} {unit} {'✅' if value <= target else '❌'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-cache", type=Path, default=DEFAULT_CACHE, help="full-size random checkpoint")
    parser.add_argument(
        "--sizes", default=None, help="comma-separated square image sizes (CPU default 512; CUDA 512,768,1024)"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed forward runs per size, after one warm-up")
    parser.add_argument("--load-runs", type=int, default=3, help="load measurements, each in a fresh process")
    parser.add_argument("--skip-fp32", action="store_true", help="skip the slow CPU fp32 forward")
    parser.add_argument("--skip-load", action="store_true", help="skip the load measurement")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="forward passes on the CPU, on CUDA, or auto: CPU plus CUDA when available",
    )
    parser.add_argument("--baseline-authors-style", action="store_true", help="also emulate the authors' loader")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](json.loads(args.worker_args))))
        return 0

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    command = f"{python} benchmarks/bench_engine.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    checkpoint = args.checkpoint_cache.resolve()
    note = ensure_checkpoint(checkpoint, env)
    print(f"[bench] checkpoint: {note}", file=sys.stderr)
    load_avg_start = os.getloadavg()[0]

    info = _run_worker("baseline", {}, env)
    if args.device == "cuda" and not info["cuda_available"]:
        parser.error("--device cuda: torch sees no CUDA device")
    use_cpu = args.device in ("auto", "cpu")
    use_cuda = args.device == "cuda" or (args.device == "auto" and info["cuda_available"])
    cpu_sizes = [int(s) for s in (args.sizes or "512").split(",")]
    cuda_sizes = [int(s) for s in (args.sizes or "512,768,1024").split(",")]
    ckpt = str(checkpoint)

    rows: list[tuple[str, str, str]] = [
        ("checkpoint file (bf16, random weights, real key layout)", _fmt_gib(checkpoint.stat().st_size), ""),
        ("RSS of a bare `import torch` process", _fmt_gib(info["rss_after_import_torch"]), ""),
    ]

    if not args.skip_load:
        loads = []
        for n in range(args.load_runs):
            warm = _warm_page_cache(checkpoint)
            print(f"[bench] load {n + 1}/{args.load_runs} (page cache warmed in {warm:.1f} s)", file=sys.stderr)
            loads.append(_run_worker("load", {"checkpoint": ckpt}, env))
        seconds = [load["seconds"] for load in loads]
        peak = max(load["peak_rss"] for load in loads)
        above = max(load["peak_rss"] - load["rss_after_import_torch"] for load in loads)
        rows += [
            (
                f"`load_model` to ready, bf16, warm page cache ({len(loads)} fresh processes)",
                _latency(seconds),
                _target(statistics.median(seconds), LOAD_TARGET_S, "s"),
            ),
            ("`load_model` peak RSS (ru_maxrss)", _fmt_gib(peak), _target(peak / GIB, LOAD_RSS_TARGET_GIB, "GiB")),
            ("  of which above `import torch`", _fmt_gib(above), ""),
        ]

    if args.baseline_authors_style:
        _warm_page_cache(checkpoint)
        print("[bench] measuring the authors-style load", file=sys.stderr)
        authors = _run_worker("authors_load", {"checkpoint": ckpt}, env)
        rows += [
            (
                "authors-style load (fp32 random init, `load_file`, cast to bf16)",
                _fmt_s(authors["seconds"]),
                "(comparison)",
            ),
            ("authors-style load peak RSS", _fmt_gib(authors["peak_rss"]), "(comparison)"),
        ]

    forward_threads = None
    if use_cpu:
        variants = [("bfloat16", "bfloat16", "bf16 (head stored bf16, computed fp32)")]
        if not args.skip_fp32:
            variants.append(("float32", "float32", "fp32"))
        for dtype, head_dtype, label in variants:
            print(f"[bench] CPU forward {label}, sizes {cpu_sizes}", file=sys.stderr)
            job = {"checkpoint": ckpt, "device": "cpu", "dtype": dtype, "head_dtype": head_dtype}
            fwd = _run_worker("forward", {**job, "sizes": cpu_sizes, "runs": args.runs}, env)
            forward_threads = fwd["threads"]
            for size, entry in fwd["sizes"].items():
                target = ""
                if dtype == "bfloat16" and size == "512":
                    target = _target(statistics.median(entry["times"]), CPU_BF16_512_TARGET_S, "s")
                rows.append((f"CPU forward {size}px, {label}", _latency(entry["times"]), target))
                rows.append(("  of which the tag head", _latency(entry["head_times"]), ""))
            rows.append((f"  process peak RSS ({label}, load + forward)", _fmt_gib(fwd["peak_rss"]), ""))

    if use_cuda:
        print(f"[bench] CUDA forward, sizes {cuda_sizes}", file=sys.stderr)
        job = {"checkpoint": ckpt, "device": "cuda", "dtype": "bfloat16", "head_dtype": "float32"}
        fwd = _run_worker("forward", {**job, "sizes": cuda_sizes, "runs": max(args.runs, 10)}, env)
        for size, entry in fwd["sizes"].items():
            times = entry["times"]
            value = f"{statistics.median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f})"
            rows.append((f"CUDA forward {size}px, bf16 backbone + fp32 head", value, ""))
            rows.append(("  peak CUDA memory", _fmt_gib(entry["peak_cuda_bytes"]), ""))

    flags = _cpu_flags()
    isa = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "none listed"
    threads = forward_threads if forward_threads is not None else info["threads"]
    print()
    print(f"Machine: {_cpu_model()}, {os.cpu_count()} logical cores ({isa}), {_fmt_gib(_total_ram_bytes())} RAM")
    print(f"Software: Python {platform.python_version()}, torch {info['torch']}, {threads} intra-op threads")
    if use_cuda:
        print(f"GPU: {info['cuda_device']}")
    print(
        f"Command: `{command}` (forward: 1 warm-up + {args.runs} timed runs, median (min); "
        f"every measurement in a fresh process; 1-min load average {load_avg_start:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end)"
    )
    print()
    print("| metric | value | target |")
    print("|---|---|---|")
    for metric, value, target in rows:
        print(f"| {metric} | {value} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
