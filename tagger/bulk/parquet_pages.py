"""Reading a Parquet image column one cell at a time, never a whole page at once.

pyarrow decompresses and decodes a whole page before any of its values can be read, which
costs the page's size a few times over: a 33 KB zstd file can hold a 1000 MiB cell, and
``datasets`` writes a row group of images as one page far larger than any one image. So the
image column is read here: page headers (small Thrift structs before each page) say where each
page is and how many rows it holds, so pages before the wanted row are never opened; a page is
decompressed as a stream, a megabyte at a time, keeping only the wanted value. A value over the
cap is skipped from its length prefix and refused alone. Snappy and LZ4 pages, which have no
stream format, are decompressed whole, and refused over a page budget. Plain values and
dictionaries (what pyarrow and ``datasets`` write for images) are read; ``NeedsArrow`` says a
chunk is in another encoding but each of its pages is within the cap, so pyarrow may read it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from tagger.bulk import safefs
from tagger.errors import MiB, format_bytes

_STREAMED_CODECS = {"ZSTD": "zstd", "GZIP": "gzip", "BROTLI": "brotli"}
_BUFFERED_CODECS = {"SNAPPY": "snappy", "LZ4_RAW": "lz4_raw", "LZ4": "lz4_raw"}
_PLAIN, _PLAIN_DICTIONARY, _RLE_DICTIONARY = 0, 2, 8
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_CHUNK = MiB


class PageError(ValueError):
    """What the file says about a page cannot be read, or the page cannot be read within the caps."""


class NeedsArrow(PageError):
    """A column chunk in an encoding read here only by pyarrow, each of its pages within the cap."""


class _Thrift:
    """Thrift's compact protocol: just enough to read a PageHeader."""

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


@dataclass
class PageHeader:
    type: int = -1
    uncompressed: int = -1
    compressed: int = -1
    num_values: int = 0
    encoding: int = _PLAIN
    levels_v2: int = 0  # repetition + definition level bytes before the values (v2: never compressed)
    values_compressed: bool = True


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

    data_fields = {1: "num_values", 2: "encoding"}  # a dictionary page's header numbers them alike
    v2_fields = {1: "num_values", 4: "encoding", 5: "levels", 6: "levels", 7: "values_compressed"}

    def top(field: int, kind: int) -> bool:
        if field in (1, 2, 3) and kind == 5:
            setattr(page, ("type", "uncompressed", "compressed")[field - 1], thrift.zigzag())
            return True
        if kind == 12 and field in (5, 7, 8):
            thrift.struct(inner({5: data_fields, 7: data_fields, 8: v2_fields}[field]), 1)
            return True
        return False

    thrift.struct(top)
    if page.uncompressed < 0 or page.compressed < 0 or page.type < 0:
        raise PageError("a page header lacks its sizes")
    return page


class _Region:
    """``size`` bytes of a file from ``start``, as a stream that ends there (it seeks itself, so
    a dictionary and a data page can be read from one file object)."""

    def __init__(self, fp: BinaryIO, start: int, size: int):
        self.fp, self.position, self.left, self.closed = fp, start, size, False

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.fp.seek(self.position)
        data = self.fp.read(n)
        self.position += len(data)
        self.left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class _Values:
    """The uncompressed bytes of a page, read front to back."""

    def __init__(self, fp: BinaryIO, offset: int, page: PageHeader, codec: str, budget: int):
        import pyarrow as pa

        if not 0 <= page.levels_v2 <= page.compressed:
            raise PageError("a page header gives impossible sizes")
        # v2 levels are stored apart from the values, never compressed.
        self.levels = _Region(fp, offset, page.levels_v2).read()
        self._left = size = page.uncompressed - page.levels_v2
        raw: Any = _Region(fp, offset + page.levels_v2, page.compressed - page.levels_v2)
        if codec == "UNCOMPRESSED" or not page.values_compressed:
            self._stream: Any = raw
        elif codec in _STREAMED_CODECS:
            self._stream = pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), _STREAMED_CODECS[codec])
        elif codec in _BUFFERED_CODECS:
            if size > budget:
                raise PageError(
                    f"its page of {size:,} bytes is compressed with {codec.lower()}, which is decompressed "
                    f"whole, and is over the limit of {format_bytes(budget)} per such page; write the "
                    "file again with zstd to tag its rows"
                )
            self._stream = pa.BufferReader(_decompress(raw.read(), codec, size))
        else:
            raise PageError(f"its pages are compressed with {codec}, which bulk tagging cannot read")

    def read(self, n: int) -> bytes:
        # Never past the size the header gives: a stream that decompresses to more is cut there.
        n = min(n, self._left)
        data = bytes(self._stream.read(n)) if n else b""
        self._left -= len(data)
        return data

    def _chunks(self, n: int) -> Iterator[bytes]:
        """The next ``n`` bytes, a megabyte at a time."""
        while n > 0:
            chunk = self.read(min(_CHUNK, n))
            if not chunk:
                raise PageError("a page ends inside a value")
            n -= len(chunk)
            yield chunk

    def read_exact(self, n: int) -> bytes:
        return b"".join(self._chunks(n))

    def skip(self, n: int) -> None:
        for _ in self._chunks(n):
            pass

    def value(self, limit: int | None) -> bytes | None:
        """The next plain value; skipped (None) when ``limit`` is None, refused over ``limit``."""
        (length,) = struct.unpack("<I", self.read_exact(4))
        if limit is None or length > limit:
            self.skip(length)
            if limit is not None:
                raise safefs.TooLarge(safefs.size_limit_sentence(length, limit))
            return None
        return self.read_exact(length)


def _decompress(compressed: bytes, codec: str, size: int) -> Any:
    import pyarrow as pa

    try:
        return pa.Codec(_BUFFERED_CODECS[codec]).decompress(compressed, decompressed_size=size)
    except (OSError, ValueError, pa.ArrowException) as e:
        if codec != "LZ4":
            raise PageError(f"a page could not be decompressed ({e})") from None
    try:  # the older LZ4 codec: one Hadoop block, two big-endian sizes before the raw data
        return pa.Codec("lz4_raw").decompress(compressed[8:], decompressed_size=size)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise PageError(f"a page could not be decompressed ({e})") from None


def _hybrid(data: bytes, bit_width: int, count: int) -> list[int]:
    """``count`` numbers in Parquet's RLE / bit-packed hybrid encoding (levels, dictionary indices)."""
    out: list[int] = []
    position, width, mask = 0, (bit_width + 7) // 8, (1 << bit_width) - 1
    while len(out) < count:
        header = shift = 0
        while True:
            if position >= len(data) or shift > 35:
                raise PageError("a page's levels or indices end early")
            byte = data[position]
            position += 1
            header |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if header & 1:  # bit-packed groups of eight
            for _ in range(header >> 1):
                group = int.from_bytes(data[position : position + bit_width], "little")
                position += bit_width
                out.extend((group >> (i * bit_width)) & mask for i in range(8))
        else:
            value = int.from_bytes(data[position : position + width], "little")
            position += width
            out.extend([value] * min(header >> 1, count - len(out)))
        if position > len(data):
            raise PageError("a page's levels or indices end early")
    return out[:count]


class _Dictionary:
    """A dictionary page, read forward to the wanted entry (again from its start for an earlier one)."""

    def __init__(self, fp: BinaryIO, offset: int, page: PageHeader, codec: str, budget: int):
        self.open = lambda: _Values(fp, offset, page, codec, budget)
        self.values: _Values | None = None
        self.at = 0

    def entry(self, index: int, limit: int) -> bytes | None:
        if self.values is None or index < self.at:
            self.values, self.at = self.open(), 0
        try:
            while self.at < index:
                self.values.value(None)
                self.at += 1
            self.at += 1
            return self.values.value(limit)
        except safefs.TooLarge:
            raise  # the entry was skipped whole: the stream is still in step
        except Exception:
            self.values = None  # read again from the start next time
            raise


class ChunkCells:
    """The cells of one row group's BYTE_ARRAY column chunk, asked for in increasing row order:
    ``cell(row)`` gives the row's bytes (None when null); ``safefs.TooLarge`` for a value over
    ``limit``, ``PageError`` for a row whose page cannot be read. Only the wanted value is held,
    plus, for snappy and LZ4, one page of at most ``budget`` bytes."""

    def __init__(self, file: str, chunk: Any, schema_column: Any, rows: int, limit: int, budget: int):
        self.fp = open(file, "rb")  # noqa: SIM115 (kept open between cells; see close)
        self.codec, self.limit, self.budget, self.rows = str(chunk.compression).upper(), limit, budget, rows
        self.max_definition = schema_column.max_definition_level
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None:
            start = min(start, chunk.dictionary_page_offset)
        end, position = start + chunk.total_compressed_size, start
        pages: list[tuple[int, PageHeader]] = []  # (offset of the body, header), from the headers alone
        try:
            while position < end:
                self.fp.seek(position)
                header = read_page_header(self.fp)
                pages.append((self.fp.tell(), header))
                position = self.fp.tell() + header.compressed
        except PageError:
            self.fp.close()
            raise
        known = chunk.physical_type == "BYTE_ARRAY" and not schema_column.max_repetition_level
        known &= self.codec == "UNCOMPRESSED" or self.codec in _STREAMED_CODECS or self.codec in _BUFFERED_CODECS
        self.dictionary: _Dictionary | None = None
        self.pages: list[tuple[int, PageHeader]] = []
        for offset, page in pages:
            if page.type == _DICTIONARY_PAGE:
                known &= page.encoding in (_PLAIN, _PLAIN_DICTIONARY)
                self.dictionary = _Dictionary(self.fp, offset, page, self.codec, budget)
            elif page.type in (_DATA_PAGE, _DATA_PAGE_V2):
                known &= page.encoding in (_PLAIN, _PLAIN_DICTIONARY, _RLE_DICTIONARY)
                self.pages.append((offset, page))
        if not known:
            self.fp.close()
            largest = max((page.uncompressed for _, page in pages), default=0)
            if largest <= limit:
                raise NeedsArrow("pyarrow reads it")
            raise PageError(
                f"it has a page of {largest:,} bytes in a layout that bulk tagging cannot read a cell at a time"
            )
        self.page = -1
        self.start = self.end = self.next_row = 0  # rows of the current page; the next row to consume
        self.error: str | None = None

    def close(self) -> None:
        self.fp.close()

    def _open(self, offset: int, page: PageHeader) -> None:
        self.start, self.end = self.end, self.end + page.num_values
        self.levels: list[int] | None = None
        self.indices: list[int] | None = None
        self.seen = 0  # values consumed in this page
        self.error = None
        if page.encoding == _PLAIN and self.dictionary is not None:
            self.dictionary.values = None  # plain pages follow it: its buffer is not needed again
        if page.num_values < 0 or self.end > self.rows:
            raise PageError("its pages hold more rows than its row group")
        try:
            values = self.values = _Values(self.fp, offset, page, self.codec, self.budget)
            need = 9 * page.num_values + 16  # the most bytes that levels or indices for these rows take
            if self.max_definition:
                size = len(values.levels)
                if page.type == _DATA_PAGE:
                    (size,) = struct.unpack("<I", values.read_exact(4))
                if size > need:
                    raise PageError("a page's levels are larger than its rows need")
                data = values.read_exact(size) if page.type == _DATA_PAGE else values.levels
                self.levels = _hybrid(data, self.max_definition.bit_length(), page.num_values)
            if page.encoding != _PLAIN:
                if self.dictionary is None:
                    raise PageError("a page points into a dictionary its column lacks")
                present = page.num_values if self.levels is None else self.levels.count(self.max_definition)
                width = values.read_exact(1)[0]
                self.indices = _hybrid(values.read(need), width, present)
        except PageError as e:
            self.error = str(e)

    def cell(self, row: int) -> bytes | None:
        import pyarrow as pa

        if row < self.next_row:
            raise ValueError("cells are read front to back")
        try:
            while row >= self.end:  # pages before the row are never decompressed
                self.page += 1
                if self.page >= len(self.pages):
                    raise PageError("the file has fewer rows than its footer says")
                self._open(*self.pages[self.page])
                self.next_row = self.start
            while self.next_row < row:
                self._consume(None)
            return self._consume(self.limit)
        except safefs.TooLarge:
            raise
        except (OSError, pa.ArrowException, PageError) as e:
            self.error = self.error or (
                str(e) if isinstance(e, PageError) else f"a page could not be decompressed ({e})"
            )
            raise PageError(self.error) from None

    def _consume(self, limit: int | None) -> bytes | None:
        """The next row's value; only skipped when ``limit`` is None."""
        at, self.next_row = self.next_row - self.start, self.next_row + 1
        if self.error is not None:
            if limit is None:
                return None
            raise PageError(self.error)
        if self.levels is not None and self.levels[at] != self.max_definition:
            return None  # a null
        self.seen += 1
        if self.indices is None:
            return self.values.value(limit)
        if limit is None or self.dictionary is None:
            return None
        return self.dictionary.entry(self.indices[self.seen - 1], limit)
