"""Progress for people (a tqdm bar: images/s, ETA, errors) and the final summary line."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from tagger.bulk.inference import TokenCounts
from tagger.bulk.outputs import WriteCounts


@dataclass
class Summary:
    """What a run did; ``line()`` is the one line printed at the end."""

    tagged: int = 0
    errors: int = 0
    kept: int = 0  # captions that existed and were kept, images not tagged
    already_done: int = 0  # written by an earlier run in this folder
    shards_finished: int = 0
    captions: dict[str, int] = field(default_factory=dict)
    tokens: TokenCounts = field(default_factory=TokenCounts)
    seconds: float = 0.0
    out: str = ""

    def add(self, counts: WriteCounts) -> None:
        self.tagged += counts.images
        self.errors += counts.errors
        for outcome, n in counts.captions.items():
            self.captions[outcome] = self.captions.get(outcome, 0) + n

    @property
    def rate(self) -> float:
        return (self.tagged + self.errors) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"{self.tagged:,} images tagged", f"{self.errors:,} unreadable"]
        shown_if_any = [(self.kept, "kept (caption exists)"), (self.already_done, "already done")]
        shown_if_any += [(self.captions.get("merged", 0), "captions merged")]
        shown_if_any += [(self.captions.get("refused", 0), "captions left alone (links or not regular files)")]
        parts += [f"{n:,} {what}" for n, what in shown_if_any if n]
        rate = f"{self.rate:.1f}" if self.rate >= 10 else f"{self.rate:.2f}"
        speed = f"{rate} images/s over {self.seconds:.1f} s"
        waste = f"padding waste {self.tokens.waste:.1%} (from the engine's batch plan)" if self.tokens.tokens else ""
        shards = f"{self.shards_finished:,} shard{'s' if self.shards_finished != 1 else ''} completed"
        return "; ".join(p for p in [", ".join(parts), speed, waste, shards, f"outputs in {self.out}"] if p) + "."


class Progress:
    """A tqdm bar on stderr (none with ``quiet``); ``error`` lines always reach stderr."""

    def __init__(self, total: int | None, quiet: bool, label: str | None, position: int | None):
        self.errors = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        if not quiet:
            from tqdm import tqdm

            display = {"desc": label or "tagging", "position": position, "dynamic_ncols": True, "file": sys.stderr}
            self._bar = tqdm(total=total, unit="img", smoothing=0.05, **display)
            self._bar.set_postfix(errors=0, refresh=False)

    def update(self, images: int, errors: int = 0) -> None:
        with self._lock:
            self.errors += errors
            if self._bar is not None:
                if errors:
                    self._bar.set_postfix(errors=self.errors, refresh=False)
                self._bar.update(images)

    def error(self, message: str) -> None:
        text = f"error: {message}"
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
