"""Tag relations at e621's size: load time and memory, and what each ``implied`` mode adds per image.

A script, not a test: ``.venv/bin/python benchmarks/bench_relations.py [VOCAB] [--rows N]``.
VOCAB defaults to ``../shared/reference/tagger_vocab.json`` (the real 74,625 tags). It writes
an e621 db-export-shaped ``tag_implications-*.csv.gz`` of N active rows (default 400,000, plus
5% deleted rows that are skipped) and a ``tag_aliases-*.csv.gz`` of N/2, into a temporary
folder: a hierarchy eight levels deep over the vocabulary's tags (written with underscores,
artists without ``by``) and as many names the vocabulary lacks, each tag implying one parent or,
one time in five, two. Then it measures, in this one process: reading the files, building the
graph (aliases applied, cycles checked), mapping it onto the vocabulary (closure), the memory
that stays, and per image (random scores, skewed low like a real image's, best of 50) the
selection and the page's payload in each mode.
"""

from __future__ import annotations

import argparse
import csv
import gc
import gzip
import io
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import best_ms  # noqa: E402

from tagger.engine.vocab import Vocabulary  # noqa: E402
from tagger.tags.options import TagOptions  # noqa: E402
from tagger.tags.relations import Relations, attach, read_pairs  # noqa: E402
from tagger.tags.selection import select_tags  # noqa: E402
from tagger.web.page_scores import page_scores  # noqa: E402

LEVELS = 8


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def as_written(tag: str) -> str:
    """A vocabulary tag as e621 writes it."""
    return (tag[3:] if tag.startswith("by ") else tag).replace(" ", "_")


def hierarchy(vocab: Vocabulary, rows: int, rng: random.Random) -> list[tuple[str, str]]:
    """``rows`` implications, level ``L`` → level ``L+1``, over vocabulary tags and other names."""
    names = [as_written(t) for t in vocab.tags]
    names += [f"not_in_vocab_{i}" for i in range(max(0, int(rows / 1.2) - len(names)))]
    rng.shuffle(names)
    # Level sizes shrink by 3 from the leaves up, as broad tags are fewer.
    weights = [3.0**-level for level in range(LEVELS)]
    total = sum(weights)
    levels, start = [], 0
    for w in weights:
        size = max(1, round(len(names) * w / total))
        levels.append(names[start : start + size])
        start += size
    pairs: list[tuple[str, str]] = []
    while len(pairs) < rows:
        for level in range(LEVELS - 1):
            for child in levels[level]:
                for _ in range(2 if rng.random() < 0.2 else 1):
                    pairs.append((child, rng.choice(levels[level + 1])))
                if len(pairs) >= rows:
                    return pairs
    return pairs


def write_export(path: Path, pairs: list[tuple[str, str]], rng: random.Random) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "antecedent_name", "consequent_name", "created_at", "status"])
    n = 0
    for a, c in pairs:
        n += 1
        writer.writerow([n, a, c, "2021-03-04 05:06:07.891011", "active"])
        if rng.random() < 0.05:
            n += 1
            writer.writerow([n, c, a, "2019-01-01 00:00:00", "deleted"])  # would be a cycle if read
    path.write_bytes(gzip.compress(buffer.getvalue().encode(), compresslevel=6))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vocab", nargs="?", default=str(ROOT.parent / "shared" / "reference" / "tagger_vocab.json"))
    parser.add_argument("--rows", type=int, default=400_000)
    args = parser.parse_args()
    rng = random.Random(0)
    vocab = Vocabulary.load(args.vocab)
    plain = Vocabulary(list(vocab.tags), vocab.category_ids)
    with tempfile.TemporaryDirectory() as tmp:
        implications = write_export(
            Path(tmp) / "tag_implications-2026-01-01.csv.gz", hierarchy(vocab, args.rows, rng), rng
        )
        aliases_rows = [(f"old_name_{i}", as_written(rng.choice(vocab.tags))) for i in range(args.rows // 2)]
        aliases = write_export(Path(tmp) / "tag_aliases-2026-01-01.csv.gz", aliases_rows, rng)
        print(f"vocabulary: {args.vocab} ({len(vocab):,} tags)")
        print(
            f"files: {implications.name} {implications.stat().st_size / 2**20:.1f} MB gzipped, "
            f"{aliases.name} {aliases.stat().st_size / 2**20:.1f} MB\n"
        )
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        imp_pairs = read_pairs(implications)
        alias_pairs = read_pairs(aliases)
        t1 = time.perf_counter()
        relations = Relations.from_pairs(imp_pairs, alias_pairs)
        t2 = time.perf_counter()
        report = attach(vocab, relations)
        t3 = time.perf_counter()
        del imp_pairs, alias_pairs
        gc.collect()
        after = rss_mb()
    closure = vocab.relations.ancestor_idx.size if vocab.relations else 0
    print("| step | time |\n|---|---|")
    counts = f"{relations.implication_rows:,} implications, {relations.alias_rows:,} aliases"
    print(f"| read both files ({counts}) | {t1 - t0:.2f} s |")
    print(f"| build the graph (aliases applied, cycles checked) | {t2 - t1:.2f} s |")
    print(f"| map onto the vocabulary (closure: {closure:,} tag → implied-tag pairs) | {t3 - t2:.2f} s |")
    print(f"| total | {t3 - t0:.2f} s |")
    print(f"\nmemory kept (RSS after - before): {after - before:.0f} MB")
    print(report.sentence() + "\n")

    scores = (np.random.default_rng(0).random(len(vocab)) ** 40).astype(np.float32)
    print("| per image | tags | selection + string | page payload (rows, JSON size) |\n|---|---|---|---|")
    import json

    def row(label: str, v: Vocabulary, implied: str) -> None:
        options = TagOptions(implied=implied)

        def render() -> list:
            tags = select_tags(scores, v, options.selection)
            options.tag_string(tags, v)
            return tags

        payload = page_scores(scores, v, 0.05)
        size = len(json.dumps(payload)) / 1024
        ms = best_ms(render, 50)
        page_ms = best_ms(lambda: page_scores(scores, v, 0.05), 20)
        sent = f"{page_ms:.1f} ms ({len(payload['tags'])} rows, {size:.0f} kB)"
        print(f"| {label} | {len(render())} | {ms:.1f} ms | {sent} |")

    row("no relations", plain, "keep")
    for mode in ("keep", "remove", "add"):
        row(f"relations, implied={mode}", vocab, mode)
    glob = TagOptions(exclude="*censor*, by *")
    first = time.perf_counter()
    select_tags(scores, vocab, glob.selection)
    first_ms = (time.perf_counter() - first) * 1000
    later = best_ms(lambda: select_tags(scores, vocab, glob.selection), 50)
    print(
        f"\nexclude '*censor*, by *': first image {first_ms:.1f} ms (matches the vocabulary once), later {later:.1f} ms"
    )


if __name__ == "__main__":
    main()
