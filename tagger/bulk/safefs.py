"""Reading and writing files without following links, and with a size cap per image.

A dataset folder is often someone else's work: an image or caption there may be a symbolic
link to a private file or to ``/dev/zero``, or a named pipe that blocks whoever reads it. Every
image and caption is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked to be a regular file
before a byte is read; anything else raises ``NotRegularFile`` (an ``OSError``: that image's
error sentence). Temporaries are created with ``O_EXCL | O_NOFOLLOW``: a link planted at their
name is never written through.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from tagger.errors import format_bytes

# No image worth tagging comes near this; a bigger one is a mistake or an attack (a 33 KB
# Parquet file can hold a 1000 MiB cell), and every copy of it costs its size again.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
# Captions are a line of tags; reading a huge "caption" to merge into would only fill memory.
MAX_CAPTION_BYTES = 4 * 1024 * 1024

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class NotRegularFile(OSError):
    """A path that is a link, a pipe, a device or a folder: never read or written through."""


class TooLarge(OSError):
    """An image (or caption) over the byte cap."""


_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def not_regular(kind: str) -> NotRegularFile:
    return NotRegularFile(f"it is {kind}, not a regular file (bulk tagging never reads or writes through one)")


def size_limit_sentence(size: int, limit: int | None = None, what: str = "image") -> str:
    limit = MAX_IMAGE_BYTES if limit is None else limit
    return f"it is {size:,} bytes, over the limit of {format_bytes(limit)} per {what}"


def read_regular(path: str | os.PathLike[str], limit: int, what: str = "image") -> bytes:
    """The bytes of a regular file, never through a link; ``TooLarge`` over ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise not_regular("a symbolic link") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise not_regular(next((kind for is_kind, kind in _KINDS if is_kind(mode)), "not a regular file"))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fp:
        size = os.fstat(fd).st_size
        if size > limit:
            raise TooLarge(size_limit_sentence(size, limit, what))
        data = fp.read(limit + 1)  # a file that grows while read is cut at the cap, not followed
    if len(data) > limit:
        raise TooLarge(size_limit_sentence(len(data), limit, what))
    return data


def read_existing_text(path: Path) -> str | None:
    """A caption's text (None when there is none), never through a link or from a pipe."""
    try:
        data = read_regular(path, MAX_CAPTION_BYTES, "caption")
    except FileNotFoundError:
        return None
    return data.decode("utf-8-sig", errors="replace")


def create_exclusive(path: Path) -> BinaryIO:
    """A new file at ``path``, opened for writing; fails if anything (a link too) is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o666)
    return os.fdopen(fd, "wb")
