r"""File names that are not valid UTF-8, kept in text outputs as ``\xNN`` escapes.

On POSIX a file name is bytes; Python decodes the bytes that are not UTF-8 as lone
surrogates (``os.fsdecode``: ``b'caf\xe9.png'`` → ``'caf\udce9.png'``), and tar does the same.
Such a string cannot be written as UTF-8 (JSONL, Parquet, logs), so keys and paths shown in the
outputs carry each such byte as the four characters ``\xNN`` instead: ``caf\xe9.png``.
Names that are valid UTF-8 are unchanged, except that a backslash already followed by ``x``
and two hex digits is written ``\x5c`` so that ``unescape_name`` can always tell the two
apart: ``os.fsencode(unescape_name(escape_name(name)))`` is the name's bytes again.
"""

from __future__ import annotations

import re

_NEEDS_ESCAPE = re.compile(r"[\udc80-\udcff]|\\(?=x[0-9a-fA-F]{2})")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return "\\x5c" if char == "\\" else f"\\x{ord(char) - 0xDC00:02x}"


def escape_name(name: str) -> str:
    r"""``name`` with each undecodable byte (a surrogate ``\udcNN``) written as ``\xNN``."""
    return _NEEDS_ESCAPE.sub(_escape, name)


def _unescape(match: re.Match[str]) -> str:
    value = int(match.group(1), 16)
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def unescape_name(text: str) -> str:
    r"""The name ``escape_name`` was given: ``\xNN`` back to the byte it stands for (as the
    surrogate ``os.fsencode`` turns into that byte)."""
    return _ESCAPE.sub(_unescape, text)
