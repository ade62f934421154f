"""One writer per shard of an output folder: runs that would overwrite each other are refused.

Two runs writing the same shards of one ``--out`` folder would each believe it finished them
while each replaced the other's files, so a run holds an exclusive ``flock`` on
``OUT/.bulk/locks/shard-I-of-N.lock`` (its ``--shard I/N``; without ``--shard``, ``0/1``) as
long as it runs, with its pid, host, start time and command in the file. It also probes the
other lock files: a live run whose shards meet its own refuses this one with a sentence naming
that run; runs with disjoint ``--shard`` values share the folder. All this and the manifest
check happen under ``admission.lock`` too, so two runs starting at once are admitted in turn.
The kernel drops every lock when a process ends (``kill -9`` included): a dead run's lock
file is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tagger.bulk.sharding import ShardSpec
from tagger.errors import BulkError

log = logging.getLogger("tagger")

_LOCK_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.lock")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

if sys.platform != "win32":
    import fcntl
else:  # Windows: no flock; runs there are not protected from each other
    fcntl = None


def overlaps(a: ShardSpec, b: ShardSpec) -> bool:
    """Whether some shard belongs to both: ``I/N`` and ``J/M`` share one exactly when ``I ≡ J mod gcd(N, M)``."""
    return (a.index - b.index) % math.gcd(a.count, b.count) == 0


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)


def _try_lock(fd: int, exclusive: bool) -> bool:
    """True when the lock was taken; False when another process holds it."""
    assert fcntl is not None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, for the refusal's sentence."""
    try:
        info: Any = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["started"])))
        command = str(info.get("command", ""))
        command = command if len(command) <= 300 else command[:297] + "..."
        return (
            f"pid {int(info['pid'])} on {info.get('host', '?')}, started {started}, --shard {info['shard']}: {command}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"its details in {path} cannot be read"


class OutputLock:
    """This run's lock on its shards of an output folder, held until ``release()``."""

    def __init__(self, fd: int | None):
        self._fd = fd

    @classmethod
    def acquire(cls, out: Path, folder: Path, shard: ShardSpec, command: Sequence[str]) -> OutputLock:
        """Lock ``shard`` of the output folder ``out`` (lock files in ``folder``); call while
        holding ``admission(folder)``. ``BulkError`` naming the run that holds it."""
        if fcntl is None:
            return cls(None)
        own = folder / f"shard-{shard.index}-of-{shard.count}.lock"
        fd = _open(own)
        try:
            if not _try_lock(fd, exclusive=True):
                raise BulkError(
                    f"Another bulk run is writing to {out} ({_holder(own)}); wait for it to finish, or give a "
                    "new --out folder (runs sharing one must each take their own --shard i/N)."
                )
            for other in sorted(folder.glob("shard-*-of-*.lock")):
                match = _LOCK_NAME.fullmatch(other.name)
                if match is None or other == own:
                    continue
                theirs = ShardSpec(int(match.group(1)), int(match.group(2)))
                if theirs.count < 1 or not overlaps(shard, theirs) or not _held(other):
                    continue
                raise BulkError(
                    f"--shard {shard} shares shards with another bulk run writing to {out} ({_holder(other)}); "
                    "wait for it to finish, or give each run its own --shard i/N of the same N."
                )
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "shard": str(shard)}
            info["command"] = " ".join(command)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _held(path: Path) -> bool:
    """Whether a live process holds the lock at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return False
    try:
        return not _try_lock(fd, exclusive=False)  # taken: nobody holds it, a run that has ended left it
    finally:
        os.close(fd)  # also drops the probe's shared lock


@contextlib.contextmanager
def admission(folder: Path) -> Iterator[None]:
    """Held while a starting run takes its lock and checks the folder: one starter at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = _open(folder / "admission.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (some network mounts)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            raise BulkError(
                f"Cannot lock files in {folder} ({e.strerror}); bulk tagging locks its output folder so that two "
                "runs never overwrite each other: give an --out folder on a file system with locks."
            ) from None
        yield
    finally:
        os.close(fd)
