"""How many forward passes need an attention mask, and how much padding they compute.

A mask rules flash attention out on a GPU, and padding is work for nothing. This script
plans forward passes with the engine's own planner (``tagger.engine.tagger.plan_batches``, the GPU
defaults: 16 images per pass and at most 25 % padding for the web, 32 for bulk) over two
size mixes, as the web batch (chunks of 16 in upload order) and bulk (windows of 128 sorted
by token count, cut into 32s) form them. No model runs; it takes a second.

* ``bulk``: the bulk benchmark's folder (alternating 2000 × 1500 photos, 600 × 900 drawings);
* ``phone``: phone photos, 3:4, 4:3, 9:16 and square, each at several resolutions.

    .venv/bin/python benchmarks/bench_batching.py            # --max-size 1024 and 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(os.path.abspath(__file__)).parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHONE_SIZES = {
    "3:4": [(3024, 4032), (2268, 3024), (1536, 2048), (3000, 4000)],
    "4:3": [(4032, 3024), (4000, 3000), (1600, 1200), (2048, 1536)],
    "9:16": [(1080, 1920), (720, 1280), (2160, 3840), (1440, 2560)],
    "square": [(1080, 1080), (2048, 2048), (640, 640), (3024, 3024)],
}
BULK_SIZES = [(2000, 1500), (600, 900)]
WEB_CHUNK, WEB_BATCH, BULK_WINDOW, BULK_BATCH, GPU_PADDING = 16, 16, 128, 32, 0.25


def size_mix(name: str, count: int, seed: int = 0) -> list[tuple[int, int]]:
    import random

    rng = random.Random(seed)
    if name == "bulk":
        return [BULK_SIZES[i % 2] for i in range(count)]
    return [rng.choice(PHONE_SIZES[rng.choice(list(PHONE_SIZES))]) for _ in range(count)]


def token_counts(sizes: list[tuple[int, int]], max_size: int) -> list[int]:
    from tagger.engine.preprocess import target_size

    return [5 + (w // 16) * (h // 16) for w, h in (target_size(w, h, max_size) for w, h in sizes)]


def summary(groups: list[list[int]], max_batch: int) -> dict:
    """Masked share and padding waste of planning each group (one model call) separately."""
    from tagger.engine.tagger import plan_batches

    passes = [b for lengths in groups for b in plan_batches(lengths, max_batch, GPU_PADDING)]
    real, padded = sum(b.tokens for b in passes), sum(b.padded_tokens for b in passes)
    masked = [b for b in passes if b.padded_tokens > b.tokens]
    return {
        "passes": len(passes),
        "masked_passes": len(masked),
        "masked_share": len(masked) / len(passes),
        "images_in_masked_passes": sum(len(b.indices) for b in masked) / sum(len(b.indices) for b in passes),
        "padding_waste": padded / real - 1,
    }


def measure(max_sizes: tuple[int, ...] = (1024, 512), count: int = 512) -> dict:
    out: dict = {}
    for mix in ("bulk", "phone"):
        for max_size in max_sizes:
            lengths = token_counts(size_mix(mix, count), max_size)
            web = [lengths[i : i + WEB_CHUNK] for i in range(0, len(lengths), WEB_CHUNK)]
            bulk = []
            for start in range(0, len(lengths), BULK_WINDOW):
                window = sorted(lengths[start : start + BULK_WINDOW])
                bulk += [window[i : i + BULK_BATCH] for i in range(0, len(window), BULK_BATCH)]
            out[f"{mix}@{max_size}"] = {
                "distinct_token_counts": len(set(lengths)),
                "web": summary(web, WEB_BATCH),
                "bulk": summary(bulk, BULK_BATCH),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per mix (default 512)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    result = measure(count=args.images)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("| mix @ max size | distinct token counts | path | passes | masked passes | images in masked passes "
          "| padding waste |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in result.items():
        for path in ("web", "bulk"):
            s = r[path]
            print(
                f"| {name} | {r['distinct_token_counts']} | {path} | {s['passes']} | {s['masked_passes']} "
                f"({s['masked_share']:.0%}) | {s['images_in_masked_passes']:.0%} | {s['padding_waste']:.1%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
