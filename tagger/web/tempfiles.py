"""The web app's cache folder on disk: nothing in it outlives the cleanup age or a restart.

Gradio keeps uploads, URL downloads and results in one folder (``GRADIO_TEMP_DIR``) and, with
``delete_cache``, removes only the files it registered in this process: a cut-off upload, a
result nobody fetched and everything a previous process left stay for good. ``CacheKeeper``
runs ``sweep`` (by age, over the whole folder: it is the app's own, as on a Space, so another
program's files in it are removed too):

* at start-up, if no other instance uses the folder (``FolderClaim``: a lock file each instance
  holds shared; the kernel drops it when a process dies, even killed), every file but the new
  instance's own; else those past the age;
* every ``every`` seconds, every file older than ``older_than`` but the app's example images.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("tagger")

LOCK_NAME = ".tagger-cache.lock"


@dataclass
class Swept:
    paths: list[str] = field(default_factory=list)
    bytes: int = 0


def sweep(folder: str | os.PathLike, older_than: float | None, keep: Set[str] = frozenset()) -> Swept:
    """Remove every file under ``folder`` changed more than ``older_than`` seconds ago (None: all) but ``keep``
    and the lock file, then the folders left empty. Links are removed, never followed."""
    root = Path(os.path.abspath(folder))
    cutoff = None if older_than is None else time.time() - older_than
    kept = {os.path.abspath(p) for p in keep}
    swept = Swept()
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)  # absolute: root is
            if path in kept or (dirpath == str(root) and name == LOCK_NAME):
                continue
            try:
                status = os.lstat(path)
                if cutoff is not None and status.st_ctime > cutoff:
                    continue
                os.unlink(path)
            except OSError:  # removed meanwhile, or not ours to remove
                continue
            swept.paths.append(path)
            swept.bytes += status.st_size
        if dirpath != str(root):
            with contextlib.suppress(OSError):  # not empty: something in it is kept or recent
                os.rmdir(dirpath)
    return swept


class FolderClaim:
    """A lock file in the cache folder, held shared by every running instance of the app."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self.file: IO[bytes] | None = None

    def take(self) -> bool:
        """Hold the claim; True when no other instance holds one (the folder is this one's alone)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "ab")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        fcntl.flock(self.file, fcntl.LOCK_SH)  # from exclusive: others may now start beside it
        return alone

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # drops the lock
            self.file = None


@dataclass
class CacheKeeper:
    """Start-up and scheduled sweeps of one app's cache folder. ``kept``: paths kept for good (example
    images); ``written``: paths the app registered (at start-up: its own); ``forget``: told what a
    scheduled sweep removed (so that Gradio's lists of them do not grow)."""

    folder: str | os.PathLike
    every: float
    older_than: float
    kept: Callable[[], Set[str]]
    written: Callable[[], Set[str]] = frozenset
    forget: Callable[[Set[str]], None] = lambda removed: None

    def at_start(self, alone: bool) -> Swept:
        swept = sweep(self.folder, None if alone else self.older_than, set(self.kept()) | set(self.written()))
        if swept.paths:
            log.info(
                "Removed %d files (%d bytes) left in %s by earlier runs.", len(swept.paths), swept.bytes, self.folder
            )
        return swept

    def on_schedule(self) -> Swept:
        swept = sweep(self.folder, self.older_than, self.kept())
        # Also forget what was removed some other way (a finished MCP call's files, a failed
        # upload's): Gradio skips a registered path that is gone, and keeps it listed for good.
        gone = {path for path in self.written() if not os.path.lexists(path)}
        if swept.paths or gone:
            self.forget(set(swept.paths) | gone)
        return swept

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The sweeps for as long as the server runs (an ASGI lifespan)."""
        claim = FolderClaim(self.folder)
        alone = await asyncio.to_thread(claim.take)
        await asyncio.to_thread(self.at_start, alone)

        async def scheduled() -> None:
            while True:
                await asyncio.sleep(self.every)
                await asyncio.to_thread(self.on_schedule)

        task = asyncio.create_task(scheduled())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            claim.release()
