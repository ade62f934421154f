"""The images of an upload: loose files and zip members, checked before any is decoded.

``collect_inputs`` checks every limit it can before decoding (file count, upload size, declared
sizes, compression ratios, escaping paths); ``BatchInputs.read`` then hands out one image's bytes
at a time, counting them against the limits whatever the archive declared.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
import re
import stat
import struct
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from PIL import Image

from tagger.datasets.pixel_caps import WEB_MAX_IMAGE_PIXELS, web_image_header, web_limit
from tagger.errors import ImageError, MiB, TimeBudgetError, UploadError, shorten

# Raster formats people keep datasets in, limited to those this Pillow build opens (AVIF
# only with Pillow ≥ 11.3 or the plugin). PDF, EPS, video and the like are left out on purpose.
_RASTER_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib",
    ".tif", ".tiff", ".avif", ".qoi", ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k",
}  # fmt: skip
Image.init()
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_RASTER_EXTENSIONS & set(Image.registered_extensions()))


@dataclass(frozen=True)
class BatchLimits:
    """What one batch request may contain. Defaults suit a public Space."""

    max_files: int = 1000  # images per request (and uploads per request)
    max_upload_bytes: int = 1024 * MiB  # sum of the uploaded files as received
    max_image_bytes: int = 64 * MiB  # one image, after decompression
    max_total_bytes: int = 2048 * MiB  # all images, after decompression
    max_archive_entries: int = 10_000  # entries in one zip, skipped ones included
    max_directory_bytes: int = 8 * MiB  # a zip's central directory (its list of entries)
    max_name_bytes: int = 1024  # one entry's path inside a zip
    max_name_depth: int = 32  # folders in one entry's path
    max_compression_ratio: float = 200.0  # images rarely pass 10:1: far more on a large member is a zip bomb
    ratio_min_bytes: int = 1 * MiB  # the ratio applies above this (a tiny file may compress 1000:1 harmlessly)
    max_image_pixels: int = WEB_MAX_IMAGE_PIXELS  # one image, from its header (local tools may allow more)
    max_total_pixels: int = 2_000_000_000  # all images of the request, from their headers


@dataclass(frozen=True)
class BatchItem:
    """One image to tag. ``name`` is the sanitised relative path used in every output."""

    name: str
    concept: str  # first folder of ``name`` below a wrapping folder (see wrapper_depth); "" at the root
    source: str  # the uploaded file (the image itself, or the zip holding it)
    member: zipfile.ZipInfo | None = None  # the zip member, None for a loose file
    size: int = 0  # bytes (declared by the archive for members)


# -- The time budget of the current request ----------------------------------------------------

_DEADLINE: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("tagger_deadline", default=None)


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Within this block, ``BatchInputs.read`` refuses images once ``seconds`` have passed (the
    web app wraps every event in one; see ``tagger.web.fairshare``)."""
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


# -- Names -------------------------------------------------------------------------------------

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))]
)


def _safe_component(part: str) -> str:
    # Characters Windows refuses or that break shells become "_"; Windows drops trailing dots
    # and spaces, so strip them to keep names identical across systems.
    part = _UNSAFE_CHARS.sub("_", part).strip().rstrip(". ")
    if not part:
        return "_"
    if part.split(".")[0].upper() in _WINDOWS_RESERVED:
        part = "_" + part
    return part


def sanitize_path(name: str) -> str:
    """A safe relative POSIX path for a zip member or file name; ``UploadError`` for one that would
    escape its folder (absolute, drive letter, ``..``); empty and ``.`` components are dropped.
    Backslashes count as separators (some Windows tools write them into zips)."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise UploadError(f"Refused the archive: the entry {name!r} has an absolute path.")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"Refused the archive: the entry {name!r} points outside the archive ('..').")
    if not parts:
        raise UploadError(f"Refused the archive: the entry {name!r} has no file name.")
    return "/".join(_safe_component(p) for p in parts)


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def is_skipped(path: str) -> bool:
    """macOS resource forks and hidden files (``.DS_Store``, ``._x.png``, ``.git/...``)."""
    parts = path.split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _display_name(path: str | os.PathLike) -> str:
    return os.path.basename(os.fsdecode(path))


# -- Zip directory, read before the archive is opened ------------------------------------------

# The records at the end of a zip (APPNOTE 4.3.14-4.3.16), as Python's zipfile reads them.
_EOCD = struct.Struct("<4s4H2LH")  # signature, disks (2), entries here, entries, size, offset, comment length
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk of the zip64 record, its offset, disks
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries here, entries, size, offset
_ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # a central directory header, before its name, extra and comment
_ENTRY_SIGNATURE = b"PK\x01\x02"
_UTF8_FLAG = 0x800


@dataclass(frozen=True)
class ZipDirectory:
    """What the end-of-central-directory record (zip64 too) says: the entries and where their list lies."""

    entries: int
    size: int  # bytes of the central directory
    start: int  # file offset where zipfile will read it


def read_zip_directory(fp: BinaryIO) -> ZipDirectory | None:
    """The end records of a zip, found the way ``zipfile`` finds them (the record without a
    comment at the very end, else the last signature in the final 64 KiB), or None when
    there are none. Reads at most 64 KiB + 98 bytes, whatever the archive claims."""
    fp.seek(0, os.SEEK_END)
    file_size = fp.tell()
    if file_size < _EOCD.size:
        return None
    fp.seek(file_size - _EOCD.size)
    tail = fp.read(_EOCD.size)
    if tail[:4] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
        location = file_size - _EOCD.size
    else:
        search_from = max(file_size - (1 << 16) - _EOCD.size, 0)
        fp.seek(search_from)
        data = fp.read()
        found = data.rfind(b"PK\x05\x06")
        if found < 0 or len(data) - found < _EOCD.size:
            return None
        tail = data[found : found + _EOCD.size]
        location = search_from + found
    _, _, _, _, entries, size, _, _ = _EOCD.unpack(tail)
    start = location - size  # zipfile allows data before the archive (self-extractors)
    if location >= _EOCD64_LOCATOR.size + _EOCD64.size:
        fp.seek(location - _EOCD64_LOCATOR.size)
        signature, *_ = _EOCD64_LOCATOR.unpack(fp.read(_EOCD64_LOCATOR.size))
        if signature == b"PK\x06\x07":
            fp.seek(location - _EOCD64_LOCATOR.size - _EOCD64.size)
            record = _EOCD64.unpack(fp.read(_EOCD64.size))
            if record[0] == b"PK\x06\x06":
                entries, size = record[7], record[8]
                start = location - _EOCD64_LOCATOR.size - _EOCD64.size - size
    return ZipDirectory(entries=entries, size=size, start=start)


def _check_zip_directory(fp: BinaryIO, shown: str, limits: BatchLimits) -> None:
    """Refuse a zip from its directory alone, before ``zipfile`` builds an object per entry:
    the counts its end record declares, then each entry's header (count, name length, name
    depth, name encoding), walked the way ``zipfile`` will walk it."""
    directory = read_zip_directory(fp)
    if directory is None:
        raise UploadError(f"{shown} is not a readable zip archive (no end-of-archive record).")
    if directory.entries > limits.max_archive_entries:
        raise UploadError(f"{shown} has {directory.entries:,} entries; the limit is {limits.max_archive_entries:,}.")
    if directory.size > limits.max_directory_bytes:
        raise UploadError(
            f"{shown} lists its entries in {directory.size / MiB:,.1f} MiB; the limit is "
            f"{limits.max_directory_bytes / MiB:,.0f} MiB (about {limits.max_archive_entries:,} entries)."
        )
    if directory.start < 0:
        raise UploadError(f"{shown} is not a readable zip archive (its directory lies outside the file).")
    fp.seek(directory.start)
    data = fp.read(directory.size)
    position = count = 0
    while position < len(data):
        if len(data) - position < _ENTRY.size or data[position : position + 4] != _ENTRY_SIGNATURE:
            return  # zipfile reports a damaged directory in its own words
        header = _ENTRY.unpack_from(data, position)
        flags, name_length, extra_length, comment_length = header[5], header[12], header[13], header[14]
        count += 1
        if count > limits.max_archive_entries:
            raise UploadError(f"{shown} has more than {limits.max_archive_entries:,} entries; that is the limit.")
        name = data[position + _ENTRY.size : position + _ENTRY.size + name_length]
        if name_length > limits.max_name_bytes:
            raise UploadError(
                f"Refused {shown}: entry {count:,} has a name of {name_length:,} bytes; the limit is "
                f"{limits.max_name_bytes:,}."
            )
        if name.replace(b"\\", b"/").count(b"/") > limits.max_name_depth:
            raise UploadError(
                f"Refused {shown}: entry {count:,} lies more than {limits.max_name_depth} folders deep; "
                "that is the limit."
            )
        if flags & _UTF8_FLAG:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(
                    f"Refused {shown}: the name of entry {count:,} is marked as UTF-8 but is not valid UTF-8 "
                    f"({shorten(name.decode('utf-8', 'replace'), 60)!r}); re-create the zip with a current zip tool."
                ) from None
        position += _ENTRY.size + name_length + extra_length + comment_length


# -- Input collection --------------------------------------------------------------------------


class BatchInputs:
    """The images of one request, and the open archives they are read from (closed on exit)."""

    def __init__(self, limits: BatchLimits):
        self.limits = limits
        self.items: list[BatchItem] = []
        self.skipped: list[str] = []  # names left out: not images, resource forks, hidden files
        self.bytes_read = self.pixels_read = 0
        self._archives: dict[str, zipfile.ZipFile] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __enter__(self) -> BatchInputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for archive in self._archives.values():
            archive.close()
        self._archives.clear()

    def read(self, item: BatchItem) -> bytes:
        """The image's bytes. ``ImageError`` for a member that cannot be read (the batch goes on);
        ``UploadError`` when the decompressed data passes a limit (the request stops)."""
        budget = _DEADLINE.get()
        if budget is not None and time.monotonic() > budget[0]:
            raise TimeBudgetError(
                f"Not read {item.name}: this request used its time budget of {budget[1]:g} s; send the remaining "
                "images in another request."
            )
        limit = min(self.limits.max_image_bytes, self.limits.max_total_bytes - self.bytes_read)
        try:
            if item.member is None:
                with open(item.source, "rb") as fp:
                    data = _read_capped(fp, limit, item.name, self.limits)
            elif item.member.flag_bits & 0x1:
                raise ImageError(f"Could not read {item.name}: it is encrypted in the zip; zip it without a password.")
            else:
                with self._archives[item.source].open(item.member) as fp:
                    data = _read_capped(fp, limit, item.name, self.limits)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as e:
            # Bad CRC, an unsupported compression method (deflate64...), a truncated archive.
            raise ImageError(f"Could not read {item.name} from the upload: {e}.") from None
        self.bytes_read += len(data)
        # The pixel caps, from the header: one image, and the request's budget. Not an image: the
        # decoder says so in its own words.
        header = web_image_header(data)
        if header is not None:
            pixels, limits = header.pixels, self.limits
            limit = web_limit(header, limits.max_image_pixels)
            if pixels > limit:
                raise ImageError(
                    f"Could not read {item.name}: {header.describe()}, more than the limit of {limit:,} per image."
                )
            if self.pixels_read + pixels > limits.max_total_pixels:
                raise TimeBudgetError(
                    f"Not read {item.name}: the images of this request add up to more than "
                    f"{limits.max_total_pixels:,} pixels, the limit per request; send the rest in another request."
                )
            self.pixels_read += pixels
        return data

    # -- building ----------------------------------------------------------------------------
    def _add_file(self, path: str) -> None:
        name = sanitize_path(_display_name(path))
        if not is_image_name(name) or is_skipped(name):
            self.skipped.append(name)
            return
        size = os.path.getsize(path)
        if size > self.limits.max_image_bytes:
            raise UploadError(
                f"{name} is {size / MiB:,.1f} MiB, more than the limit of "
                f"{self.limits.max_image_bytes / MiB:,.0f} MiB per image."
            )
        self.items.append(BatchItem(name=name, concept="", source=path, size=size))

    def _add_zip(self, path: str) -> None:
        shown = _display_name(path)
        try:
            with open(path, "rb") as fp:
                _check_zip_directory(fp, shown, self.limits)
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError, struct.error) as e:
            raise UploadError(
                f"{shown} is not a readable zip archive ({shorten(str(e) or type(e).__name__, 200)})."
            ) from None
        self._archives[path] = archive
        infos = archive.infolist()
        limits = self.limits
        if len(infos) > limits.max_archive_entries:
            raise UploadError(f"{shown} has {len(infos):,} entries; the limit is {limits.max_archive_entries:,}.")
        found: list[tuple[str, zipfile.ZipInfo]] = []
        for info in infos:
            # Every entry is checked, skipped ones too: an archive with an escaping or linked
            # path is malformed or hostile, and refusing it whole is the clearest answer.
            name = sanitize_path(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(f"Refused {shown}: the entry {info.filename!r} is a symbolic link.")
            if info.is_dir():
                continue
            if is_skipped(name) or not is_image_name(name):
                self.skipped.append(name)
                continue
            if info.file_size > limits.max_image_bytes:
                raise UploadError(
                    f"Refused {shown}: {info.filename} unpacks to {info.file_size / MiB:,.1f} MiB, more than the "
                    f"limit of {limits.max_image_bytes / MiB:,.0f} MiB per image."
                )
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > limits.ratio_min_bytes and ratio > limits.max_compression_ratio:
                raise UploadError(
                    f"Refused {shown}: {info.filename} is compressed {ratio:,.0f}:1, more than the limit of "
                    f"{limits.max_compression_ratio:,.0f}:1 (images do not compress like that; it may be a zip bomb)."
                )
            found.append((name, info))
        depth = wrapper_depth([name for name, _ in found])
        for name, info in found:
            parts = name.split("/")[depth:]
            concept = parts[0] if len(parts) > 1 else ""
            self.items.append(BatchItem(name=name, concept=concept, source=path, member=info, size=info.file_size))


def wrapper_depth(names: list[str]) -> int:
    """How many leading folders all ``names`` share while every file still sits in a sub-folder
    below them: zipping ``dataset/`` (holding ``dataset/10_cat/a.png``) wraps the concept
    folders in one more folder, which is looked through. Files directly inside a single folder
    keep it (zipping ``10_cat/`` makes ``10_cat`` the concept)."""
    paths = [PurePosixPath(n).parts for n in names]
    depth = 0
    while paths and all(len(p) > depth + 2 for p in paths) and len({p[depth] for p in paths}) == 1:
        depth += 1
    return depth


def _read_capped(fp: IO[bytes], limit: int, name: str, limits: BatchLimits, block: int = MiB) -> bytes:
    """Read at most ``limit`` bytes, counting as we go: a zip's declared sizes may lie."""
    buffer = io.BytesIO()
    while chunk := fp.read(block):
        buffer.write(chunk)
        if buffer.tell() > limit:
            if limit < limits.max_image_bytes:
                raise UploadError(
                    f"The upload unpacks to more than the limit of {limits.max_total_bytes / MiB:,.0f} MiB "
                    f"in all (reached at {name})."
                )
            raise UploadError(
                f"{name} unpacks to more than the limit of {limits.max_image_bytes / MiB:,.0f} MiB per image."
            )
    return buffer.getvalue()


def collect_inputs(paths: Iterable[str | os.PathLike[str]], limits: BatchLimits | None = None) -> BatchInputs:
    """The images in ``paths`` (image files and ``.zip`` archives), in upload order. A member's first
    folder (below a wrapping one, ``wrapper_depth``) is its "concept" ("" for files at the root).
    Hidden files, ``__MACOSX`` and non-images are listed in ``skipped``; nested zips are not opened.
    ``UploadError`` when a limit is passed, an archive is unreadable or unsafe, or there is no image."""
    limits = limits or BatchLimits()
    files = [os.fspath(p) for p in paths if p]
    if not files:
        raise UploadError("Please upload images or a zip of images first.")
    if len(files) > limits.max_files:
        raise UploadError(f"{len(files):,} files were uploaded; the limit is {limits.max_files:,} per request.")
    total = 0
    for path in files:
        try:
            total += os.path.getsize(path)
        except OSError:
            raise UploadError(f"The uploaded file {_display_name(path)} cannot be found on the server.") from None
    if total > limits.max_upload_bytes:
        raise UploadError(
            f"The upload is {total / MiB:,.1f} MiB; the limit is {limits.max_upload_bytes / MiB:,.0f} MiB per request."
        )

    inputs = BatchInputs(limits)
    try:
        for path in files:
            if Path(path).suffix.lower() == ".zip":
                inputs._add_zip(path)
            else:
                inputs._add_file(path)
            if len(inputs.items) > limits.max_files:
                raise UploadError(f"The upload holds more than {limits.max_files:,} images; the limit per request.")
        declared = sum(item.size for item in inputs.items)
        if declared > limits.max_total_bytes:
            raise UploadError(
                f"The images unpack to {declared / MiB:,.1f} MiB; the limit is "
                f"{limits.max_total_bytes / MiB:,.0f} MiB per request."
            )
        if not inputs.items:
            kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise UploadError(f"No images found in the upload (looked for {kinds}, also inside zip files).")
    except BaseException:
        inputs.close()
        raise
    return inputs
