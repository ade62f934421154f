"""CPU engine benchmark: ours against the authors' way, load and forward, in the same run.

A script, not a test. It writes (or reuses) a full-size random-weight bf16 checkpoint in the
real key layout (``--checkpoint-cache``, default ``benchmarks/cache/``, git-ignored; 2.46 GiB)
and a random 74,625-tag vocabulary next to it. Every measurement runs in a fresh interpreter
so that one measurement's allocations, caches and thread pools cannot colour the next, and
the paths are interleaved round by round (their order rotating), so that a shared machine's
changing load falls on all of them alike. It prints a markdown table for the README::

    .venv/bin/python benchmarks/bench_engine.py                       # authors-fp32, fp32, int8
    .venv/bin/python benchmarks/bench_engine.py --rounds 5 --accuracy --gemm-peak
    .venv/bin/python benchmarks/bench_engine.py --paths fp32,bf16 --sizes 512,1024
    .venv/bin/python benchmarks/bench_engine.py --tiny --rounds 1     # smoke run, seconds

Paths (``--paths``):

* ``authors-fp32``: the authors' script on a CPU without native bf16 (``authors_style.py``):
  float32 model with random init, ``safetensors.torch.load_file`` of the whole file,
  ``load_state_dict``, plain eager forward under ``torch.no_grad``.
* ``fp32``, ``bf16``, ``int8``: ``tagger.engine.tagger.Tagger(..., device="cpu", dtype=...)``, the
  path users get, from ``Tagger.prepare`` output to ``Tagger.run``'s probabilities.

Each path process loads (wall time and peak RSS), runs one warm-up and ``--runs`` timed
forwards per size, and counts minor page faults per forward (``getrusage``). ``--accuracy``
compares int8 with fp32 probabilities on the example images and random ones (max |Δprob|,
top-30 overlap); ``--gemm-peak`` measures this CPU's matrix-multiply rate at the model's
shapes, to say how close the whole forward gets.
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
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

DEFAULT_CACHE = ROOT / "benchmarks" / "cache" / "full_random.safetensors"
EXAMPLES = ROOT / "examples"
GIB = 1024**3
PATHS = ("authors-fp32", "fp32", "bf16", "int8")
DEFAULT_PATHS = "authors-fp32,fp32,int8"
BASELINE = "authors-fp32"

# Targets against the authors' way, measured in the same run (see the README).
TARGET_RATIO = {"fp32": 0.9, "int8": 0.5}


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


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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


def forward_flops(config, height: int, width: int, batch: int = 1) -> float:
    """Multiply-adds × 2 of one forward: patch embedding, blocks (GEMMs + attention), head."""
    c, i, p = config.hidden_size, config.intermediate_size, config.patch_size
    patches = (height // p) * (width // p)
    n = config.num_prefix_tokens + patches
    per_block = 2 * n * c * (3 * c + c + 2 * i) + 2 * n * i * c + 4 * n * n * c
    head_in = [config.descriptor_dim] + ([config.head_rank] if config.head_rank else [])
    head_out = ([config.head_rank] if config.head_rank else []) + [config.num_tags]
    head = sum(2 * a * b for a, b in zip(head_in, head_out, strict=True))
    return float(batch * (2 * patches * c * 3 * p * p + config.num_layers * per_block + head))


def _bench_config(tiny: bool):
    from tagger.engine.model import TaggerConfig

    return TaggerConfig.tiny(num_tags=600) if tiny else TaggerConfig()


# --------------------------------------------------------------------------------------
# Workers (each runs in its own fresh interpreter)
# --------------------------------------------------------------------------------------


def _worker_info(_: dict) -> dict:
    import torch

    return {
        "rss_after_import_torch": _rss_now_bytes(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def _worker_path(args: dict) -> dict:
    """Load one path, then time ``runs`` forwards per size after a warm-up."""
    import numpy as np
    import torch
    from PIL import Image

    path, sizes, runs = args["path"], args["sizes"], args["runs"]
    rss_import = _rss_now_bytes()
    faults_start = _minor_faults()
    start = time.perf_counter()
    if path == BASELINE:
        from authors_style import load_authors_style

        model = load_authors_style(args["checkpoint"], _bench_config(args["tiny"]))

        def make_input(size: int) -> torch.Tensor:
            return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))

        def forward(pixels: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return torch.sigmoid(model(pixels)).numpy()

    else:
        from tagger.engine.tagger import Tagger

        tagger = Tagger(args["checkpoint"], args["vocab"], device="cpu", dtype=path)

        def make_input(size: int):  # whatever Tagger.prepare makes of an RGB image
            rng = np.random.default_rng(size)
            image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
            return tagger.prepare(image)

        def forward(pixels) -> np.ndarray:
            return tagger.run([pixels])

    load_seconds = time.perf_counter() - start
    result: dict = {
        "path": path,
        "load_seconds": load_seconds,
        "load_peak_rss": _peak_rss_bytes(),
        "rss_after_load": _rss_now_bytes(),
        "rss_after_import_torch": rss_import,
        "load_faults": _minor_faults() - faults_start,
        "threads": torch.get_num_threads(),
        "sizes": {},
    }
    for size in sizes:
        pixels = make_input(size)
        forward(pixels)  # warm-up
        times, faults = [], []
        for _ in range(runs):
            before = _minor_faults()
            t0 = time.perf_counter()
            forward(pixels)
            times.append(time.perf_counter() - t0)
            faults.append(_minor_faults() - before)
        result["sizes"][str(size)] = {"times": times, "faults": faults}
    result["peak_rss"] = _peak_rss_bytes()
    return result


def _example_images(count: int, tiny: bool) -> list:
    """The repository's example images plus random-noise ones: ``count`` images in all."""
    import numpy as np
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*")) if p.suffix in (".jpg", ".png")]
    rng = np.random.default_rng(0)
    while len(images) < count:
        h, w = (int(v) for v in rng.integers(256, 768, 2))
        images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB"))
    return images[:count]


def _worker_accuracy(args: dict) -> dict:
    """int8 against fp32 on the same images: probabilities, top-k overlap, timings."""
    import gc

    import numpy as np

    from tagger.engine.tagger import Tagger

    images = _example_images(args["images"], args["tiny"])
    max_size = args["max_size"]
    probs = {}
    for dtype in ("fp32", "int8"):
        tagger = Tagger(args["checkpoint"], args["vocab"], device="cpu", dtype=dtype, max_size=max_size)
        pixels = [tagger.prepare(image) for image in images]
        probs[dtype] = np.stack([tagger.run([p])[0] for p in pixels])
        shapes = [tuple(int(s) for s in p.shape[-2:]) for p in pixels]
        del tagger, pixels
        gc.collect()
    reference, quantized = probs["fp32"], probs["int8"]
    delta = np.abs(quantized - reference)
    k = args["topk"]
    overlaps = []
    for ref_row, q_row in zip(reference, quantized, strict=True):
        top_ref = set(np.argsort(-ref_row)[:k].tolist())
        top_q = set(np.argsort(-q_row)[:k].tolist())
        overlaps.append(len(top_ref & top_q) / k)
    above = [(float(((r >= t) != (q >= t)).sum())) for t in (0.35,) for r, q in zip(reference, quantized, strict=True)]
    return {
        "images": len(images),
        "sizes": shapes,
        "max_abs_dprob": float(delta.max()),
        "mean_abs_dprob": float(delta.mean()),
        "p99_abs_dprob": float(np.quantile(delta, 0.99)),
        "topk": k,
        "topk_overlap_min": min(overlaps),
        "topk_overlap_mean": float(np.mean(overlaps)),
        "flips_at_0.35_mean": float(np.mean(above)),
    }


def _worker_gemm(args: dict) -> dict:
    """fp32 (MKL via ``F.linear``) and int8 (``DynamicInt8Linear``) rates at the model's shapes."""
    import warnings

    import torch
    import torch.nn.functional as F

    from tagger.engine.cpu import DynamicInt8Linear, int8_engine

    warnings.filterwarnings("ignore")
    config = _bench_config(args["tiny"])
    c, i = config.hidden_size, config.intermediate_size
    size = args["size"]
    n = config.num_prefix_tokens + (size // config.patch_size) ** 2
    shapes = {"qkv": (n, c, 3 * c), "proj": (n, c, c), "gate_up": (n, c, 2 * i), "down": (n, i, c)}
    generator = torch.Generator().manual_seed(0)
    try:
        engine = int8_engine()
    except ValueError:
        engine = None
    out: dict = {"tokens": n, "shapes": {}}
    for name, (m, k, nn_) in shapes.items():
        x = torch.randn(m, k, generator=generator)
        linear = torch.nn.Linear(k, nn_)
        flops = 2.0 * m * k * nn_
        weight, bias = linear.weight.detach(), linear.bias.detach()
        candidates = {"fp32": lambda x=x, w=weight, b=bias: F.linear(x, w, b)}
        if engine is not None:
            quantized = DynamicInt8Linear(linear, engine)
            candidates["int8"] = lambda x=x, q=quantized: q(x)
        entry = {}
        for label, fn in candidates.items():
            fn()
            rates = []
            for _ in range(args["repeats"]):
                t0 = time.perf_counter()
                fn()
                rates.append(flops / (time.perf_counter() - t0) / 1e9)
            entry[label] = {"best_gflops": max(rates), "median_gflops": statistics.median(rates)}
        out["shapes"][name] = {"mkn": [m, k, nn_], **entry}
    # Attention (SDPA, fp32) at the same sequence length.
    q = torch.randn(1, config.num_heads, n, config.head_dim, generator=generator)
    torch.nn.functional.scaled_dot_product_attention(q, q, q)
    rates = []
    for _ in range(args["repeats"]):
        t0 = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        rates.append(4.0 * n * n * c / (time.perf_counter() - t0) / 1e9)
    out["sdpa"] = {"best_gflops": max(rates), "median_gflops": statistics.median(rates)}
    return out


def _worker_write(args: dict) -> dict:
    import torch

    from tagger.engine.synthetic import write_random_checkpoint

    path = Path(args["path"])
    tmp = path.with_name(path.name + ".partial")
    write_random_checkpoint(tmp, _bench_config(args["tiny"]), dtype=torch.bfloat16)
    os.replace(tmp, path)
    return {"peak_rss": _peak_rss_bytes()}


WORKERS = {
    "write": _worker_write,
    "info": _worker_info,
    "path": _worker_path,
    "accuracy": _worker_accuracy,
    "gemm": _worker_gemm,
}


def run_worker(kind: str, args: dict, env: dict[str, str] | None = None, script: str | None = None) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is a JSON result."""
    command = [sys.executable, script or os.path.abspath(__file__), "--worker", kind, "--worker-args", json.dumps(args)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(ROOT), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{proc.stderr.strip()[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------


def _checkpoint_is_valid(path: Path, tiny: bool) -> tuple[bool, str]:
    import torch

    from tagger.engine.weights import CheckpointError, inspect_checkpoint

    if not path.is_file():
        return False, "absent"
    try:
        plan = inspect_checkpoint(path)
    except CheckpointError as e:
        return False, str(e)
    expected = _bench_config(tiny)
    if plan.config != expected:
        return False, f"config {plan.config} differs from {expected}"
    dtypes = {info.dtype for info in plan.tensors.values()}
    if dtypes != {torch.bfloat16}:
        return False, f"tensor dtypes {sorted(map(str, dtypes))}, expected only bfloat16"
    return True, "ok"


def ensure_files(path: Path, tiny: bool = False, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Reuse or write the random checkpoint at ``path`` (a subprocess: ~6 GB peak at full
    size) and its random vocabulary; returns ``(vocab_path, note)``."""
    from tagger.engine.synthetic import write_random_vocabulary

    ok, why = _checkpoint_is_valid(path, tiny)
    note = f"reused {path}"
    if not ok:
        print(f"[bench] writing a random checkpoint to {path} ({why}); this can take minutes", file=sys.stderr)
        start = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        run_worker("write", {"path": str(path), "tiny": tiny}, env)
        ok, why = _checkpoint_is_valid(path, tiny)
        if not ok:
            raise RuntimeError(f"the checkpoint just written is not valid: {why}")
        note = f"wrote {path} in {time.perf_counter() - start:.0f} s"
    # Random tag names (only their number matters), kept in the cache, never beside a real checkpoint.
    vocab = DEFAULT_CACHE.parent / (path.stem + "_vocab.json")
    num_tags = _bench_config(tiny).num_tags
    if not vocab.is_file() or len(json.loads(vocab.read_text(encoding="utf-8"))["idx2tag"]) != num_tags:
        write_random_vocabulary(vocab, num_tags)
    return vocab, note


def _fmt_gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB"


def _spread(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    med, lo, hi = (v * scale for v in (statistics.median(values), min(values), max(values)))
    if len(values) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def _label(path: str) -> str:
    return {
        BASELINE: "the authors' way (fp32)",
        "fp32": "ours, fp32",
        "bf16": "ours, bf16",
        "int8": "ours, int8 (opt-in)",
    }[path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-cache", type=Path, default=None, help="random checkpoint (written if absent)")
    parser.add_argument("--paths", default=DEFAULT_PATHS, help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--sizes", default="512", help="comma-separated square image sizes (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, one fresh process per path each")
    parser.add_argument("--runs", type=int, default=2, help="timed forwards per size per process, after a warm-up")
    parser.add_argument("--accuracy", action="store_true", help="int8 against fp32 on example and random images")
    parser.add_argument("--accuracy-images", type=int, default=8, help="images for --accuracy (examples first)")
    parser.add_argument("--gemm-peak", action="store_true", help="matrix-multiply rates at the model's shapes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: checks the script in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write every raw result to this JSON file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](json.loads(args.worker_args))))
        return 0

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s) {unknown}; choose from {', '.join(PATHS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    command = f"{python} benchmarks/bench_engine.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    default_cache = DEFAULT_CACHE.with_name("tiny_random.safetensors") if args.tiny else DEFAULT_CACHE
    checkpoint = (args.checkpoint_cache or default_cache).absolute()
    vocab, note = ensure_files(checkpoint, args.tiny, env)
    print(f"[bench] checkpoint: {note}", file=sys.stderr)
    config = _bench_config(args.tiny)
    info = run_worker("info", {}, env)
    loads = [os.getloadavg()[0]]
    job = {"checkpoint": str(checkpoint), "vocab": str(vocab), "tiny": args.tiny}

    results: dict[str, list[dict]] = {p: [] for p in paths}
    for r in range(args.rounds):
        order = paths[r % len(paths) :] + paths[: r % len(paths)]
        for path in order:
            warm = _warm_page_cache(checkpoint)
            print(f"[bench] round {r + 1}/{args.rounds}: {path} (page cache warmed in {warm:.1f} s)", file=sys.stderr)
            results[path].append(run_worker("path", {**job, "path": path, "sizes": sizes, "runs": args.runs}, env))
            loads.append(os.getloadavg()[0])

    accuracy = gemm = None
    if args.accuracy:
        print("[bench] accuracy: int8 against fp32", file=sys.stderr)
        accuracy = run_worker("accuracy", {**job, "images": args.accuracy_images, "max_size": 512, "topk": 30}, env)
        loads.append(os.getloadavg()[0])
    if args.gemm_peak:
        print("[bench] GEMM rates at the model's shapes", file=sys.stderr)
        gemm = run_worker("gemm", {"tiny": args.tiny, "size": sizes[0], "repeats": 10}, env)
        loads.append(os.getloadavg()[0])

    # ---- report ---------------------------------------------------------------------
    flags = _cpu_flags()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    threads = next((res[0]["threads"] for res in results.values() if res), info["threads"])
    print()
    print(
        f"Machine: {_cpu_model()}, {os.cpu_count()} logical cores ({', '.join(isa) or 'no ISA flags listed'}), "
        f"{_fmt_gib(_total_ram_bytes())} RAM"
    )
    print(
        f"Software: Python {platform.python_version()}, torch {info['torch']} (CPU capability "
        f"{info['capability']}), {threads} intra-op threads"
    )
    print(f"Command: `{command}`")
    print(
        f"Method: {args.rounds} interleaved round(s), one fresh process per path per round, order rotating; "
        f"each process loads, warms up, then times {args.runs} forward(s) per size; forward = median over "
        f"all timed runs (min–max); 1-min load average {min(loads):.2f}–{max(loads):.2f} "
        f"(median {statistics.median(loads):.2f})."
    )
    print()
    print(
        "| path | load | load peak RSS | "
        + " | ".join(f"forward {s} px" for s in sizes)
        + " | vs the authors' | minor faults / forward | GFLOP/s |"
    )
    print("|---|---|---|" + "---|" * len(sizes) + "---|---|---|")
    base_times = {s: [t for res in results.get(BASELINE, []) for t in res["sizes"][str(s)]["times"]] for s in sizes}
    for path in paths:
        runs = results[path]
        if not runs:
            continue
        load = _spread([res["load_seconds"] for res in runs])
        peak = _fmt_gib(max(res["load_peak_rss"] for res in runs))
        cells, ratio = [], ""
        for s in sizes:
            times = [t for res in runs for t in res["sizes"][str(s)]["times"]]
            cells.append(_spread(times))
        s0 = sizes[0]
        times0 = [t for res in runs for t in res["sizes"][str(s0)]["times"]]
        if path != BASELINE and base_times.get(s0):
            # Per-round ratios (same load conditions), then their median and range.
            ratios = [
                statistics.median(res["sizes"][str(s0)]["times"]) / statistics.median(base["sizes"][str(s0)]["times"])
                for res, base in zip(runs, results[BASELINE], strict=False)
            ]
            ratio = _spread(ratios, "×")
            if path in TARGET_RATIO:
                met = "✅" if statistics.median(ratios) <= TARGET_RATIO[path] else "❌"
                ratio += f" (target ≤ {TARGET_RATIO[path]}× {met})"
        faults = statistics.median(f for res in runs for f in res["sizes"][str(s0)]["faults"])
        gflops = forward_flops(config, s0, s0) / statistics.median(times0) / 1e9
        row = [_label(path), load, peak, *cells, ratio, f"{faults:,.0f}", f"{gflops:.0f}"]
        print("| " + " | ".join(row) + " |")
    print()
    print(
        f"Forward at {sizes[0]} px: {forward_flops(config, sizes[0], sizes[0]) / 1e12:.2f} TFLOP "
        "(GEMMs, attention, patch embedding and head)."
    )
    if accuracy:
        print()
        print(
            f"int8 against fp32 on {accuracy['images']} images (repository examples + random noise, "
            "long edge ≤ 512): "
            f"max |Δprob| {accuracy['max_abs_dprob']:.4f}, mean {accuracy['mean_abs_dprob']:.5f}, "
            f"99th percentile {accuracy['p99_abs_dprob']:.4f}; top-{accuracy['topk']} overlap "
            f"mean {accuracy['topk_overlap_mean']:.1%}, worst image {accuracy['topk_overlap_min']:.1%}; "
            f"tags crossing 0.35 per image: {accuracy['flips_at_0.35_mean']:.1f} (mean)."
        )
    if gemm:
        print()
        print(f"GEMM rates at {sizes[0]} px ({gemm['tokens']} tokens), GFLOP/s best (median) of 10:")
        print()
        print("| op | M×K×N | fp32 (MKL) | int8 (dynamic) |")
        print("|---|---|---|---|")
        for name, entry in gemm["shapes"].items():
            m, k, n = entry["mkn"]
            cells = [
                f"{entry[p]['best_gflops']:.0f} ({entry[p]['median_gflops']:.0f})" if p in entry else "n/a"
                for p in ("fp32", "int8")
            ]
            print(f"| {name} | {m}×{k}×{n} | {cells[0]} | {cells[1]} |")
        sd = gemm["sdpa"]
        print(
            f"| attention (SDPA, fp32) | {gemm['tokens']}² × {config.hidden_size} | "
            f"{sd['best_gflops']:.0f} ({sd['median_gflops']:.0f}) | |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": command,
                    "info": info,
                    "paths": results,
                    "accuracy": accuracy,
                    "gemm": gemm,
                    "load_average": loads,
                },
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
