"""Re-render cost with the real vocabulary: selection + tag string per mode, and tag lookup.

A script, not a test: ``.venv/bin/python benchmarks/bench_selection.py [VOCAB]``. VOCAB
defaults to ``../shared/reference/tagger_vocab.json`` (the real 74,625 tags); scores are
random, skewed low like a real image's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import best_ms  # noqa: E402

from tagger.engine.vocab import Vocabulary  # noqa: E402
from tagger.tags.options import TagOptions  # noqa: E402
from tagger.tags.selection import select_tags  # noqa: E402
from tagger.web.tabs.tag import lookup_rows  # noqa: E402


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "reference" / "tagger_vocab.json"
    vocab = Vocabulary.load(path)
    scores = (np.random.default_rng(0).random(len(vocab)) ** 40).astype(np.float32)
    print(f"vocabulary: {path} ({len(vocab):,} tags)\n")
    print("| re-render | tags | best of 20 |\n|---|---|---|")
    for mode in ("threshold", "topk", "mcut"):
        options = TagOptions(mode=mode, exclude="solo, long_hair")

        def render(options: TagOptions = options) -> list:
            tags = select_tags(scores, vocab, options.selection)
            options.tag_string(tags)
            return tags

        print(f"| {mode} | {len(render())} | {best_ms(render):.1f} ms |")
    lookup_rows("warm", scores, vocab)  # builds the normalised index once, as the first search does
    rows = lookup_rows("hair", scores, vocab)
    print(f"| lookup 'hair' | {len(rows)} rows | {best_ms(lambda: lookup_rows('hair', scores, vocab)):.1f} ms |")


if __name__ == "__main__":
    main()
