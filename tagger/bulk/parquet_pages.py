"""Finding Parquet image cells over the per-image cap without decompressing the pages that hold them.

pyarrow decompresses and decodes a whole page before any of its values can be measured, which
costs the page's size a few times over: a 33 KB zstd file can hold a 1000 MiB cell. So before
a row group's image column is read, ``oversized_cell`` looks at what the file says about it:

* each page header (a small Thrift struct in front of each page) gives the page's
  uncompressed size, which is what the reader allocates; a page within the cap is fine;
* a page over the cap (a row group of many images, as ``datasets`` writes, is often one
  dictionary page) is decompressed as a stream, a megabyte at a time, and only the length
  prefixes of its values are kept. zstd, gzip, brotli and uncompressed pages are streamed;
  snappy and LZ4 pages, which have no stream format, are decompressed once into one buffer of
  the size their header gives (those codecs compress at most about 20:1 and 255:1, so the file
  itself is at least that big).

Only plain-encoded values are read this way (dictionary pages and the fallback pages that
pyarrow and ``datasets`` write for images); a page over the cap in any other encoding is
reported as one that cannot be checked.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

_STREAMED_CODECS = {"ZSTD": "zstd", "GZIP": "gzip", "BROTLI": "brotli"}
_BUFFERED_CODECS = {"SNAPPY": "snappy", "LZ4_RAW": "lz4_raw", "LZ4": "lz4_raw"}
_PLAIN = 0
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_CHUNK = 1024 * 1024


class PageError(ValueError):
    """What the file says about a page cannot be read, or the page cannot be checked."""


# ---------------------------------------------------------------------------------------------
# Thrift compact protocol: just enough to read a PageHeader


class _Thrift:
    def __init__(self, fp: BinaryIO):
        self.fp = fp

    def byte(self) -> int:
        data = self.fp.read(1)
        if not data:
            raise PageError("the file ends inside a page header")
        return data[0]

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise PageError("a page header holds a malformed number")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int, depth: int = 0) -> None:
        if depth > 32:
            raise PageError("a page header is nested too deeply")
        if kind in (1, 2):  # booleans live in the field header
            return
        if kind == 3:
            self.byte()
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self._read(8)
        elif kind == 8:
            self._read(self.varint())
        elif kind in (9, 10):
            header = self.byte()
            size = header >> 4 if header >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip_element(header & 0x0F, depth + 1)
        elif kind == 11:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.skip_element(types >> 4, depth + 1)
                    self.skip_element(types & 0x0F, depth + 1)
        elif kind == 12:
            self.struct(lambda field, kind: False, depth + 1)
        else:
            raise PageError(f"a page header holds an unknown Thrift type {kind}")

    def skip_element(self, kind: int, depth: int) -> None:
        if kind in (1, 2):  # a boolean inside a list takes one byte
            self.byte()
        else:
            self.skip(kind, depth)

    def _read(self, size: int) -> bytes:
        if size > 1 << 20:
            raise PageError("a page header holds a field too large to be real")
        data = self.fp.read(size)
        if len(data) != size:
            raise PageError("the file ends inside a page header")
        return data

    def struct(self, handle: Any, depth: int = 0) -> None:
        """Reads a struct; ``handle(field_id, kind)`` reads a field and returns True, or False to skip it."""
        last = 0
        while True:
            header = self.byte()
            kind = header & 0x0F
            if kind == 0:
                return
            delta = header >> 4
            field = last + delta if delta else self.zigzag()
            last = field
            if not handle(field, kind):
                self.skip(kind, depth)


class PageHeader:
    def __init__(self) -> None:
        self.type = -1
        self.uncompressed = -1
        self.compressed = -1
        self.num_values = 0
        self.encoding = _PLAIN
        self.levels_v2 = 0  # repetition + definition level bytes before the values (v2: never compressed)
        self.values_compressed = True


def read_page_header(fp: BinaryIO) -> PageHeader:
    """The PageHeader at ``fp``'s position; ``fp`` is left at the page's first byte."""
    thrift = _Thrift(fp)
    page = PageHeader()

    def inner(fields: dict[int, str]) -> Any:
        def handle(field: int, kind: int) -> bool:
            name = fields.get(field)
            if name is None:
                return False
            if name == "values_compressed":
                page.values_compressed = kind == 1
                return kind in (1, 2)
            if kind != 5:
                return False
            value = thrift.zigzag()
            if name == "levels":
                page.levels_v2 += value
            else:
                setattr(page, name, value)
            return True

        return handle

    data_fields = {1: "num_values", 2: "encoding"}
    dictionary_fields = {1: "num_values", 2: "encoding"}
    v2_fields = {1: "num_values", 4: "encoding", 5: "levels", 6: "levels", 7: "values_compressed"}

    def top(field: int, kind: int) -> bool:
        if field in (1, 2, 3) and kind == 5:
            setattr(page, ("type", "uncompressed", "compressed")[field - 1], thrift.zigzag())
            return True
        if kind == 12 and field in (5, 7, 8):
            thrift.struct(inner({5: data_fields, 7: dictionary_fields, 8: v2_fields}[field]), 1)
            return True
        return False

    thrift.struct(top)
    if page.uncompressed < 0 or page.compressed < 0 or page.type < 0:
        raise PageError("a page header lacks its sizes")
    return page


# ---------------------------------------------------------------------------------------------
# Reading a page's value lengths


class _Region:
    """``size`` bytes of a file from its current position, as a stream that ends there."""

    def __init__(self, fp: BinaryIO, size: int):
        self.fp, self.left, self.closed = fp, size, False

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fp.read(n)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class _Values:
    """The uncompressed bytes of a page, read front to back."""

    def __init__(self, fp: BinaryIO, page: PageHeader, codec: str):
        import pyarrow as pa

        fp.read(page.levels_v2)  # v2 levels are stored apart from the values, never compressed
        self._left = page.uncompressed - page.levels_v2
        body = page.compressed - page.levels_v2
        raw: Any = _Region(fp, body)
        self._buffer: Any = None
        self._stream: Any = None
        if codec == "UNCOMPRESSED" or not page.values_compressed:
            self._stream = raw
        elif codec in _STREAMED_CODECS:
            self._stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), _STREAMED_CODECS[codec])
        elif codec in _BUFFERED_CODECS:
            size = page.uncompressed - page.levels_v2
            compressed = raw.read()
            try:
                self._buffer = pa.Codec(_BUFFERED_CODECS[codec]).decompress(compressed, decompressed_size=size)
            except (OSError, ValueError, pa.ArrowException) as e:
                if codec != "LZ4":
                    raise PageError(f"a page could not be decompressed ({e})") from None
                # The older LZ4 codec: one Hadoop block, two big-endian sizes before the raw data.
                try:
                    self._buffer = pa.Codec("lz4_raw").decompress(compressed[8:], decompressed_size=size)
                except (OSError, ValueError, pa.ArrowException) as e2:
                    raise PageError(f"a page could not be decompressed ({e2})") from None
            self._stream = pa.BufferReader(self._buffer)
        else:
            raise PageError(f"its pages are compressed with {codec}, which bulk tagging cannot check before reading")

    def read(self, n: int) -> bytes:
        # Never past the size the header gives: a stream that decompresses to more is cut there.
        n = min(n, self._left)
        data = bytes(self._stream.read(n)) if n else b""
        self._left -= len(data)
        return data

    def skip(self, n: int) -> int:
        skipped = 0
        while skipped < n:
            got = len(self.read(min(_CHUNK, n - skipped)))
            if not got:
                break
            skipped += got
        return skipped


def _value_lengths(values: _Values, page: PageHeader, definition_levels: int, repetition_levels: int) -> Iterator[int]:
    """The byte length of each plain-encoded value of a page, read without keeping the values."""
    if page.type == _DATA_PAGE:
        for present in (repetition_levels, definition_levels):
            if present:  # v1 levels: a 4-byte length, then the RLE runs
                (size,) = struct.unpack("<I", values.read(4).rjust(4, b"\0"))
                values.skip(size)
    while True:
        prefix = values.read(4)
        if len(prefix) < 4:
            return
        (length,) = struct.unpack("<I", prefix)
        yield length
        if values.skip(length) < length:
            return


def oversized_cell(file: str, row_group: Any, column: int, schema_column: Any, limit: int) -> int | None:
    """The size of a cell over ``limit`` in one row group's column chunk (the first found), or None.

    ``PageError`` when what the file says cannot be read or the chunk cannot be checked."""
    import pyarrow as pa

    chunk = row_group.column(column)
    # Every page header is read, even when the footer's total says the chunk is small: the
    # reader sizes each page from its own header, and the two need not agree in a made-up file.
    codec = str(chunk.compression).upper()
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
        start = min(start, chunk.dictionary_page_offset)
    end = start + chunk.total_compressed_size
    definition, repetition = schema_column.max_definition_level, schema_column.max_repetition_level
    with open(file, "rb") as fp:
        position = start
        while position < end:
            fp.seek(position)
            page = read_page_header(fp)
            body = fp.tell()
            position = body + page.compressed
            if page.uncompressed <= limit or page.type not in (_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2):
                continue
            # A dictionary page's values are plain whether it says PLAIN or PLAIN_DICTIONARY (2).
            if page.encoding != _PLAIN and not (page.type == _DICTIONARY_PAGE and page.encoding == 2):
                raise PageError(
                    f"it has a page of {page.uncompressed:,} bytes in an encoding (number {page.encoding}) "
                    "that bulk tagging cannot check before reading"
                )
            try:
                values = _Values(fp, page, codec)
                for length in _value_lengths(values, page, definition, repetition):
                    if length > limit:
                        return length
            except (OSError, pa.ArrowException) as e:
                raise PageError(f"a page could not be decompressed ({e})") from None
    return None
