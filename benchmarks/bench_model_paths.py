"""Model-path benchmark: does each fast path, layout and batching choice pay on this machine?

A script, not a test. Every choice in ``tagger/engine/fast_paths.py`` and every layout choice in
``tagger/engine/model.py`` that exists for speed is measured here against the plain alternative,
in the same run, at the real model's sizes (ViT-H/16+: 1280 channels, 20 heads, SwiGLU 5120;
512 px → 32 × 32 patches + 5 prefix tokens = 1029 tokens; head 6400 → 74,625). Each case
runs in a fresh subprocess (peak memory is per case) and the variants of a case are timed
interleaved, so load from other processes hits them alike. Prints a markdown table::

    .venv/bin/python benchmarks/bench_model_paths.py                 # all cases, CPU
    .venv/bin/python benchmarks/bench_model_paths.py --cases head --runs 9
    .venv/bin/python benchmarks/bench_model_paths.py --device cuda   # same cases on a GPU

Cases:

* ``head``: the tag head stored in float32 (plain ``nn.Linear``) vs stored in bf16 and
  widened whole on each call vs stored in bf16 and widened slab by slab
  (``fast_paths.WidenedLinear``); time for 1 and 8 images, resident weight memory and the
  peak on top of it during a call.
* ``sdpa``: one block's attention at 512 px with q/k/v as the model produces them (RoPE
  outputs and a strided view of v) vs made contiguous first vs one heads-first copy of the
  fused qkv output; the attention alone and the whole Attention module.
* ``batching``: one full-size block on 4 images of 512 px: one at a time vs batched (same
  size, no mask) vs batched with a mask of all-real keys; and 4 different sizes (1029, 901,
  773, 645 tokens) one at a time vs padded into one batch with the mask. Per image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MIB = 1024**2
CASES = ("head", "sdpa", "batching")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed(variants: Mapping[str, Callable[[], object]], runs: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Each variant once to warm up, then ``runs`` rounds timing every variant in turn."""
    for fn in variants.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _rows(case: str, times: dict[str, list[float]], per: int = 1, note: dict[str, str] | None = None) -> list[dict]:
    return [
        {
            "case": case,
            "variant": name,
            "median_ms": 1000 * statistics.median(t) / per,
            "min_ms": 1000 * min(t) / per,
            "note": (note or {}).get(name, ""),
        }
        for name, t in times.items()
    ]


# ------------------------------------------------------------------------------------------
# Workers (one case per process)


def _worker_head(args: argparse.Namespace) -> list[dict]:
    """One storage variant per process, so that peak memory is that variant's own."""
    import torch

    from tagger.engine.fast_paths import WidenedLinear

    torch.manual_seed(0)
    tags, features = 74625, 6400
    storage = torch.float32 if args.variant == "fp32 stored" else torch.bfloat16
    base = _rss()
    weight = torch.empty(tags, features, dtype=storage, device=args.device)
    for start in range(0, tags, 4096):  # filled in slabs: no full-size temporary
        weight[start : start + 4096] = torch.randn(min(4096, tags - start), features) * 0.02
    bias = torch.zeros(tags, dtype=storage, device=args.device)
    resident = _rss() - base
    if args.variant == "fp32 stored":
        with torch.device("meta"):  # no second, randomly initialised copy
            layer = torch.nn.Linear(features, tags)
        layer.weight, layer.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)

        def call(x: torch.Tensor) -> torch.Tensor:
            return layer(x)
    elif args.variant == "bf16 stored, widened whole":

        def call(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, weight.float(), bias.float())
    else:
        slab = WidenedLinear(weight, bias)

        def call(x: torch.Tensor) -> torch.Tensor:
            return slab(x)

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    inputs = {n: torch.randn(n, features, device=args.device) for n in (1, 8)}
    steady_peak = _peak_rss()
    with torch.inference_mode():
        times = _timed({f"{n} image(s)": (lambda x=x: call(x)) for n, x in inputs.items()}, args.runs, sync)
    extra = max(0, _peak_rss() - max(steady_peak, base + resident))
    rows = []
    for name, t in times.items():
        row = _rows("head (per call)", {f"{args.variant}, {name}": t})[0]
        row["note"] = f"weights {resident / MIB:,.0f} MiB, call peak +{extra / MIB:,.0f} MiB"
        rows.append(row)
    return rows


def _block(device: str):  # -> Block (imported in the worker)
    import torch

    from tagger.engine.model import Block, TaggerConfig

    torch.manual_seed(0)
    block = Block(TaggerConfig()).to(device).eval().requires_grad_(False)
    for p in (block.ls1, block.ls2):
        p.fill_(0.1)
    return block


def _rope(grids: list[tuple[int, int]], device: str):  # -> (cos, sin) for the given grids, padded
    import torch.nn.functional as F
    from torch.nn.utils.rnn import pad_sequence

    from tagger.engine.model import rope_angles

    angles = pad_sequence([rope_angles(h, w, 64, 100.0, 2.0) for h, w in grids], batch_first=True)
    angles = F.pad(angles, (0, 0, 5, 0)).to(device)[:, None]
    return angles.cos(), angles.sin()


def _worker_sdpa(args: argparse.Namespace) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from tagger.engine.model import apply_rope

    block = _block(args.device)
    attn = block.attn
    x = torch.randn(1, 1029, 1280, device=args.device)
    rope = _rope([(32, 32)], args.device)
    batch, tokens, channels, heads, dim = 1, 1029, 1280, 20, 64
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    def qkv_views() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = attn.qkv(x)
        q, k, v = qkv.view(batch, tokens, 3, heads, dim).permute(2, 0, 3, 1, 4)
        return apply_rope(q, *rope), apply_rope(k, *rope), v

    def qkv_contiguous() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = qkv_views()
        return q.contiguous(), k.contiguous(), v.contiguous()

    def qkv_heads_first() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = attn.qkv(x)
        q, k, v = qkv.view(batch, tokens, 3, heads, dim).permute(2, 0, 3, 1, 4).contiguous()
        return apply_rope(q, *rope), apply_rope(k, *rope), v

    layouts = {"as the model makes them": qkv_views, "each made contiguous": qkv_contiguous}
    layouts["one heads-first copy of qkv"] = qkv_heads_first
    with torch.inference_mode():
        made = {name: make() for name, make in layouts.items()}
        note = {
            name: "q " + ("contiguous" if q.is_contiguous() else "strided") + ", v " + str(tuple(v.stride()))
            for name, (q, _, v) in made.items()
        }
        sdpa = {name: (lambda t=t: F.scaled_dot_product_attention(*t, scale=dim**-0.5)) for name, t in made.items()}

        def attention(make: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
            out = F.scaled_dot_product_attention(*make(), scale=dim**-0.5)
            return attn.proj(out.transpose(1, 2).reshape(batch, tokens, channels))

        whole = {name: (lambda make=make: attention(make)) for name, make in layouts.items()}
        rows = _rows("sdpa: attention only", _timed(sdpa, args.runs, sync), note=note)
        rows += _rows("sdpa: whole Attention", _timed(whole, args.runs, sync))
    return rows


def _worker_batching(args: argparse.Namespace) -> list[dict]:
    import torch

    block = _block(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    same = [(32, 32)] * 4
    mixed = [(32, 32), (28, 32), (24, 32), (20, 32)]  # 1029, 901, 773, 645 tokens
    xs = {grid: torch.randn(1, 5 + grid[0] * grid[1], 1280, device=args.device) for grid in set(same + mixed)}
    ropes = {grid: _rope([grid], args.device) for grid in xs}
    lengths = torch.tensor([5 + h * w for h, w in mixed], device=args.device)
    padded = torch.nn.utils.rnn.pad_sequence([xs[g][0] for g in mixed], batch_first=True)
    mask = (torch.arange(padded.shape[1], device=args.device) < lengths[:, None])[:, None, None]
    all_real = torch.ones(4, 1, 1, 1029, dtype=torch.bool, device=args.device)
    stacked = torch.cat([xs[(32, 32)]] * 4)
    variants = {
        "512 px × 4, one at a time": lambda: [block(xs[g], ropes[g]) for g in same],
        "512 px × 4, one batch": lambda: block(stacked, ropes[(32, 32)]),
        "512 px × 4, one batch with a mask of real keys": lambda: block(stacked, ropes[(32, 32)], all_real),
        "4 sizes, one at a time": lambda: [block(xs[g], ropes[g]) for g in mixed],
        "4 sizes, padded into one batch + mask": lambda: block(padded, _rope(mixed, args.device), mask),
    }
    note = {"4 sizes, padded into one batch + mask": f"{4 * 1029} token positions for {int(lengths.sum())} real"}
    with torch.inference_mode():
        return _rows("batching (one block, per image)", _timed(variants, args.runs, sync), per=4, note=note)


HEAD_VARIANTS = ("fp32 stored", "bf16 stored, widened whole", "bf16 stored, slab-widened (fast path)")


def _run_worker(argv: list[str]) -> list[dict]:
    command = [sys.executable, os.path.abspath(__file__), "--worker", *argv]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {argv} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        worker = {"head": _worker_head, "sdpa": _worker_sdpa, "batching": _worker_batching}[args.case]
        print(json.dumps(worker(args)))
        return

    import torch

    common = ["--runs", str(args.runs), "--device", args.device, "--threads", str(args.threads)]
    rows: list[dict] = []
    for case in args.cases.split(","):
        if case == "head":
            for variant in HEAD_VARIANTS:
                rows += _run_worker(["--case", "head", "--variant", variant, *common])
        else:
            rows += _run_worker(["--case", case, *common])

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    print(f"\n{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}),")
    print(f"device {args.device}, {args.runs} interleaved runs, float32.\n")
    print("| case | variant | median ms | min ms | note |")
    print("|---|---|---:|---:|---|")
    for row in rows:
        print(f"| {row['case']} | {row['variant']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | {row['note']} |")


if __name__ == "__main__":
    main()
