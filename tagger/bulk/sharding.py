"""Splitting a run: fixed shards of the input, ``--shard i/N`` and one process per GPU.

Shard ``k`` holds the images at positions ``k·size … (k+1)·size − 1`` of the inputs' fixed
order; ``--shard i/N`` takes the shards with ``k mod N = i``, so N processes (by hand, SLURM's
array index, torchrun's rank) cover each shard once and can share one output folder: every
file they write belongs to one shard. ``--gpus all`` starts one such process per visible GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tagger.errors import BulkError


@dataclass(frozen=True)
class ShardSpec:
    """This process's part of the shards: ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> ShardSpec:
        if not text:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise BulkError(f"--shard takes i/N, such as 0/4 (this process's number, then how many), not {text!r}.")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise BulkError(f"--shard {text}: i must be between 0 and N-1 (here 0 to {max(count - 1, 0)}).")
        return cls(index, count)

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    def split(self, parts: int, part: int) -> ShardSpec:
        """Part ``part`` of ``parts`` of this process's shards (one GPU worker's share)."""
        return ShardSpec(self.index + part * self.count, self.count * parts)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_sizes(total: int, shard_size: int) -> list[int]:
    full, rest = divmod(total, shard_size)
    return [shard_size] * full + ([rest] if rest else [])


HOST_GPUS_ENV = "TAGGER_HOST_GPUS"  # GPU processes sharing this host's cores (set by --gpus)


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` values."""
    import torch

    if not torch.cuda.is_available():
        return []
    ids = [i.strip() for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip()]
    count = torch.cuda.device_count()
    return ids[:count] if ids else [str(i) for i in range(count)]


@dataclass(frozen=True)
class Worker:
    """One child process: the device it is told to use and the environment it gets."""

    label: str
    device: str
    env: dict[str, str]


def gpu_workers(gpus: str) -> list[Worker]:
    """Workers for ``--gpus all`` or ``--gpus 0,2``; empty when no GPU is visible."""
    visible = visible_gpus()
    if gpus != "all":
        wanted = [g.strip() for g in gpus.split(",") if g.strip()]
        missing = [g for g in wanted if g not in visible]
        if missing:
            shown = ", ".join(visible) if visible else "none"
            raise BulkError(f"--gpus {gpus}: GPU {missing[0]} is not visible (visible: {shown}).")
        visible = wanted
    share = {HOST_GPUS_ENV: str(len(visible))}  # each child sizes its decoders to its share of the cores
    return [Worker(f"cuda:{gpu}", "cuda", {"CUDA_VISIBLE_DEVICES": gpu, **share}) for gpu in visible]


def launch_workers(argv: Sequence[str], workers: Sequence[Worker], shard: ShardSpec) -> int:
    """Run ``python -m tagger.bulk argv`` (without ``--gpus``, ``--shard`` and ``--device``: set per
    worker) once per worker, each on its share of ``shard``; the worst exit status. Ctrl-C reaches
    every child (same process group); each stops after its batch in flight and can be resumed."""
    children = []
    for number, worker in enumerate(workers):
        share = shard.split(len(workers), number)
        command = [sys.executable, "-m", "tagger.bulk", *argv, "--shard", str(share), "--device", worker.device]
        command += ["--progress-label", worker.label, "--progress-position", str(number)]
        children.append(subprocess.Popen(command, env={**os.environ, **worker.env}))
    try:
        codes = [child.wait() for child in children]
        # A child killed by a signal (wait() < 0, e.g. the OOM killer) fails as a shell says: 128 + signal.
        return max([0, *(128 - code if code < 0 else code for code in codes)])
    except KeyboardInterrupt:
        for child in children:
            child.wait()
        raise
