"""GPU benchmark: one short run (under 5 minutes on an H100), results to a JSON file.

    python benchmarks/bench_gpu.py --out benchmarks/gpu_results.json        # on a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --tiny --out /tmp/smoke.json  # checks the script

Measures, on the full-size random-weight checkpoint (written once by ``bench_engine.py``'s
writer; about 2.5 GiB) and a random 74,625-tag vocabulary:

* load to GPU: ``Tagger(checkpoint, vocab, device="cuda")`` wall time (CUDA context created
  beforehand and timed apart), peak GPU memory after loading;
* single-image latency at 448/512/768/1024 px, warm: ``Tagger.run`` on one prepared image
  (host-to-device copy, bf16 backbone, fp32 head, probabilities back on the host), and the
  model's forward alone;
* images/s at batch 8 and 32 at 512 px (``Tagger.run`` on 8 or 32 prepared images);
* the heatmap (``tagger.relevance.relevance``) and the PCA view (``tagger.pca.analyse``) on one
  512 px image;
* peak GPU memory of each stage;
* the authors' way in the same process (``authors_style.py``: fp32 model built on the CPU,
  ``load_file``, ``load_state_dict``, moved to the GPU, backbone cast to bf16, one image per
  call), for ratios.

Goals printed next to the results: ≤ 15 ms per 512 px image warm, ≥ 150 images/s batched.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_engine  # noqa: E402  (after the path set-up above)

GOAL_LATENCY_512_MS = 15.0
GOAL_IMAGES_PER_S = 150.0
SIZES = (448, 512, 768, 1024)
BATCHES = (8, 32)


def _stats_ms(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    return {
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
        "runs": len(ms),
    }


def run(device_name: str, tiny: bool, warmup: int, runs: int, checkpoint: Path, vocab: Path) -> dict:
    import numpy as np
    import torch
    from authors_style import load_authors_style
    from PIL import Image

    from tagger.pca import analyse
    from tagger.predict import Tagger
    from tagger.relevance import DEFAULT_LAYERS_FROM_END, relevance

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def reset_peak() -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib() -> float | None:
        return torch.cuda.max_memory_allocated() / bench_engine.GIB if cuda else None

    def timed(fn, n: int = runs, warm: int = warmup) -> list[float]:
        for _ in range(warm):
            fn()
        sync()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return times

    def image(size: int) -> Image.Image:
        rng = np.random.default_rng(size)
        return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")

    out: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else bench_engine._cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "model": "tiny random" if tiny else "full-size random (ViT-H/16+, 74,625 tags)",
        "warmup": warmup,
        "runs": runs,
    }
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.init()
        torch.empty(1, device=device)
        sync()
    out["cuda_context_s"] = time.perf_counter() - t0

    # ---- the authors' way ------------------------------------------------------------
    config = bench_engine._bench_config(tiny)
    bench_engine._warm_page_cache(checkpoint)
    reset_peak()
    t0 = time.perf_counter()
    theirs = load_authors_style(str(checkpoint), config, device, torch.bfloat16 if cuda else torch.float32)
    sync()
    authors: dict = {"load_s": time.perf_counter() - t0, "peak_gib_after_load": peak_gib(), "latency": {}}
    for size in SIZES:
        pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))

        def their_call(pixels: torch.Tensor = pixels, model: torch.nn.Module = theirs) -> np.ndarray:
            with torch.no_grad():  # their script: CPU preprocessing, one image per call
                return torch.sigmoid(model(pixels.to(device))).cpu().numpy()

        authors["latency"][str(size)] = _stats_ms(timed(their_call))
    authors["images_per_s_512"] = 1e3 / authors["latency"]["512"]["median_ms"]
    out["authors"] = authors
    del theirs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    # ---- ours ------------------------------------------------------------------------
    bench_engine._warm_page_cache(checkpoint)
    reset_peak()
    t0 = time.perf_counter()
    tagger = Tagger(checkpoint, vocab, device=device_name, max_batch_size=max(BATCHES))
    sync()
    ours: dict = {
        "load_s": time.perf_counter() - t0,
        "dtype": str(tagger.dtype).removeprefix("torch."),
        "peak_gib_after_load": peak_gib(),
        "latency": {},
        "forward_only": {},
        "batched": {},
    }
    model = tagger.model
    for size in SIZES:
        prepared = tagger.prepare(image(size))
        reset_peak()
        ours["latency"][str(size)] = {**_stats_ms(timed(lambda p=prepared: tagger.run([p]))), "peak_gib": peak_gib()}
        # Normalised pixels already on the device: the model's own share of the latency.
        batch = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)

        def forward(batch=batch) -> None:
            with torch.inference_mode():
                model(batch)

        ours["forward_only"][str(size)] = _stats_ms(timed(forward))
    prepared = tagger.prepare(image(512))
    for n in BATCHES:
        reset_peak()
        times = timed(lambda n=n: tagger.run([prepared] * n), n=max(3, runs // 4), warm=1)
        ours["batched"][str(n)] = {
            **_stats_ms(times),
            "images_per_s": n / statistics.median(times),
            "peak_gib": peak_gib(),
        }
    reset_peak()
    layers = min(DEFAULT_LAYERS_FROM_END, config.num_layers)  # the tiny model has 2 blocks
    heatmap = timed(lambda: relevance(tagger, [prepared], 0, layers), n=max(3, runs // 2))
    ours["heatmap_512"] = {**_stats_ms(heatmap), "peak_gib": peak_gib()}
    reset_peak()
    pca = timed(lambda: analyse(tagger, [prepared]), n=max(3, runs // 2))
    ours["pca_512"] = {**_stats_ms(pca), "peak_gib": peak_gib()}
    out["ours"] = ours

    lat = ours["latency"]["512"]["median_ms"]
    best_rate = max(b["images_per_s"] for b in ours["batched"].values())
    out["ratios"] = {
        "load_ours_over_authors": ours["load_s"] / authors["load_s"],
        "latency_512_ours_over_authors": lat / authors["latency"]["512"]["median_ms"],
        "batched_speedup_over_authors_per_image": best_rate / authors["images_per_s_512"],
    }
    out["goals"] = {
        "latency_512_ms": {"goal": GOAL_LATENCY_512_MS, "measured": lat, "met": lat <= GOAL_LATENCY_512_MS},
        "images_per_s": {"goal": GOAL_IMAGES_PER_S, "measured": best_rate, "met": best_rate >= GOAL_IMAGES_PER_S},
    }
    return out


def _print_summary(r: dict) -> None:
    ours, authors = r["ours"], r["authors"]

    def gib(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} GiB"

    print(
        f"\nDevice: {r['device']}; torch {r['torch']} (CUDA {r['cuda']}); model: {r['model']}; "
        f"{r['warmup']} warm-up + {r['runs']} timed runs, median (min)"
    )
    print(f"Wall time of the whole run: {r['wall_s']:.0f} s\n")
    print("| metric | ours | the authors' way | goal |")
    print("|---|---|---|---|")
    print(
        f"| load to device | {ours['load_s']:.2f} s (peak {gib(ours['peak_gib_after_load'])}) | "
        f"{authors['load_s']:.2f} s (peak {gib(authors['peak_gib_after_load'])}) | |"
    )
    for size in map(str, SIZES):
        o, a, f = ours["latency"][size], authors["latency"][size], ours["forward_only"][size]
        goal = ""
        if size == "512":
            goal = f"≤ {GOAL_LATENCY_512_MS:.0f} ms {'✅' if o['median_ms'] <= GOAL_LATENCY_512_MS else '❌'}"
        print(
            f"| one image {size} px (forward alone) | {o['median_ms']:.1f} ms ({o['min_ms']:.1f}); "
            f"{f['median_ms']:.1f} ms; peak {gib(o['peak_gib'])} | "
            f"{a['median_ms']:.1f} ms ({a['min_ms']:.1f}) | {goal} |"
        )
    for n, b in ours["batched"].items():
        goal = f"≥ {GOAL_IMAGES_PER_S:.0f} /s {'✅' if b['images_per_s'] >= GOAL_IMAGES_PER_S else '❌'}"
        print(
            f"| batch of {n} at 512 px | {b['images_per_s']:.0f} images/s ({b['median_ms']:.0f} ms); "
            f"peak {gib(b['peak_gib'])} | {authors['images_per_s_512']:.0f} images/s (one per call) | {goal} |"
        )
    for key, label in (("heatmap_512", "heatmap, 512 px"), ("pca_512", "PCA view, 512 px")):
        h = ours[key]
        print(f"| {label} | {h['median_ms']:.1f} ms ({h['min_ms']:.1f}); peak {gib(h['peak_gib'])} | | |")
    ratios = r["ratios"]
    print(
        f"\nRatios (ours / the authors'): load {ratios['load_ours_over_authors']:.2f}×, one 512 px image "
        f"{ratios['latency_512_ours_over_authors']:.2f}×; batched throughput "
        f"{ratios['batched_speedup_over_authors_per_image']:.1f}× theirs."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (smoke run)")
    parser.add_argument("--checkpoint-cache", type=Path, default=None, help="random checkpoint (written if absent)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 3, --tiny 1)")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per measurement (default 20, --tiny 3)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("torch sees no CUDA device; for a smoke run use --device cpu --tiny")
    started = time.perf_counter()
    default = bench_engine.DEFAULT_CACHE
    checkpoint = args.checkpoint_cache or (default.with_name("tiny_random.safetensors") if args.tiny else default)
    checkpoint = checkpoint.absolute()
    vocab, note = bench_engine.ensure_files(checkpoint, args.tiny)
    print(f"[bench_gpu] checkpoint: {note}", file=sys.stderr)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    runs = args.runs if args.runs is not None else (3 if args.tiny else 20)
    result = run(args.device, args.tiny, warmup, runs, checkpoint, vocab)
    result["command"] = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    _print_summary(result)
    print(f"\n[bench_gpu] wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
