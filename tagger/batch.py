"""Batch tagging for dataset builders: many images and/or zip archives in, captions out.

Three stages, none of which needs Gradio:

* ``collect_inputs`` lists the images of an upload (loose files and zip members) and checks
  every limit it can before any image is decoded: file count, upload size, the sizes the
  archives declare, their compression ratios, and member paths that would escape a folder.
* ``tag_items`` streams over those images in chunks: read + decode + preprocess on the CPU,
  then ONE model call per chunk, then free the pixels. At most ``chunk_size`` decoded images
  are alive at any time, whatever the size of the batch. An unreadable image becomes an
  error result and the batch goes on.
* ``BatchWriter`` writes the results as they come: a zip of kohya/sd-scripts captions (one
  ``.txt`` per image, same folder and stem) and a JSONL file in the authors' line schema.

``run_batch`` chains the three and returns a ``BatchOutput`` (table rows, file paths, counts).

Why one model call per chunk: on ZeroGPU every ``spaces.GPU`` call queues for a GPU slice and
its duration is estimated from the pixels it gets (``tagger.runtime.gpu_seconds``, capped at
300 s). One call per image (what the authors' Space does) pays the queue and attach cost
hundreds of times; one call for the whole request would need every decoded image in memory
at once and a duration estimate past the cap. A chunk of 32 is one short, well-sized GPU
call, and the tagger still batches same-size images inside it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from tagger.options import TagOptions
from tagger.preprocess import ImageError
from tagger.results import TagScore, select_tags, tags_as_dicts
from tagger.vocab import Vocabulary

log = logging.getLogger("tagger")

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchError",
    "BatchInputs",
    "BatchItem",
    "BatchLimits",
    "BatchOutput",
    "BatchWriter",
    "CaptionNamer",
    "ImageResult",
    "collect_inputs",
    "run_batch",
    "sanitize_path",
    "tag_items",
]


class BatchError(ValueError):
    """The request as a whole is refused (too large, unsafe archive, nothing to tag); the
    message says why and what the limit is."""


def _supported_extensions() -> frozenset[str]:
    # Raster formats people keep datasets in, limited to those this Pillow build opens (AVIF
    # only with Pillow ≥ 11.3 or the plugin). PDF, EPS, video and the like are left out on purpose.
    wanted = {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".gif", ".bmp", ".dib",
        ".tif", ".tiff", ".avif", ".qoi", ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k",
    }  # fmt: skip
    Image.init()
    return frozenset(wanted & set(Image.registered_extensions()))


IMAGE_EXTENSIONS: frozenset[str] = _supported_extensions()
ZIP_EXTENSIONS: frozenset[str] = frozenset({".zip"})

MiB = 1024 * 1024


@dataclass(frozen=True)
class BatchLimits:
    """What one batch request may contain. Defaults suit a public Space.

    ``max_compression_ratio`` applies to members larger than ``ratio_min_bytes`` (a tiny file
    may compress 1000:1 harmlessly); images rarely compress better than 10:1, so a high
    ratio on a large member is the signature of a zip bomb.
    """

    max_files: int = 1000  # images per request (and uploads per request)
    max_upload_bytes: int = 1024 * MiB  # sum of the uploaded files as received
    max_image_bytes: int = 64 * MiB  # one image, after decompression
    max_total_bytes: int = 2048 * MiB  # all images, after decompression
    max_archive_entries: int = 10_000  # entries in one zip, skipped ones included
    max_compression_ratio: float = 200.0
    ratio_min_bytes: int = 1 * MiB


@dataclass(frozen=True)
class BatchItem:
    """One image to tag. ``name`` is the sanitised relative path used in every output."""

    name: str
    concept: str  # first folder of ``name`` below a wrapping folder (see wrapper_depth); "" at the root
    source: str  # the uploaded file (the image itself, or the zip holding it)
    member: zipfile.ZipInfo | None = None  # the zip member, None for a loose file
    size: int = 0  # bytes (declared by the archive for members)


@dataclass(frozen=True)
class ImageResult:
    filename: str
    concept: str
    sha256: str | None
    tags: tuple[TagScore, ...] = ()
    error: str | None = None

    def json_line(self) -> dict:
        """The authors' JSONL line: tags on success, ``error`` (and sha256 when known) otherwise."""
        line: dict = {} if self.sha256 is None else {"sha256": self.sha256}
        line |= {"filename": self.filename, "concept": self.concept}
        if self.error is not None:
            line["error"] = self.error
        else:
            line["tags"] = tags_as_dicts(self.tags)
        return line


# ---------------------------------------------------------------------------------------------
# Names


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
    """A safe relative POSIX path for ``name`` (a zip member name or a file name).

    Raises ``BatchError`` for names that would escape the folder they are extracted to:
    absolute paths, drive letters, ``..`` components. Backslashes count as separators (some
    Windows tools write them into zips); empty and ``.`` components are dropped.
    """
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise BatchError(f"Refused the archive: the entry {name!r} has an absolute path.")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BatchError(f"Refused the archive: the entry {name!r} points outside the archive ('..').")
    if not parts:
        raise BatchError(f"Refused the archive: the entry {name!r} has no file name.")
    return "/".join(_safe_component(p) for p in parts)


def _is_skipped(path: str) -> bool:
    """macOS resource forks and hidden files (``.DS_Store``, ``._x.png``, ``.git/...``)."""
    parts = path.split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _display_name(path: str | os.PathLike) -> str:
    return os.path.basename(os.fsdecode(path))


# ---------------------------------------------------------------------------------------------
# Input collection


class BatchInputs:
    """The images of one request, and the open archives they are read from.

    Use as a context manager (archives are closed on exit). ``read`` returns one image's
    bytes, counting them against the per-image and total limits whatever the archive declared.
    """

    def __init__(self, limits: BatchLimits):
        self.limits = limits
        self.items: list[BatchItem] = []
        self.skipped: list[str] = []  # names left out: not images, resource forks, hidden files
        self.bytes_read = 0
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
        ``BatchError`` when the decompressed data passes a limit (the request stops)."""
        limit = min(self.limits.max_image_bytes, self.limits.max_total_bytes - self.bytes_read)
        try:
            if item.member is None:
                with open(item.source, "rb") as fp:
                    data = _read_capped(fp, limit, item.name, self.limits)
            else:
                if item.member.flag_bits & 0x1:
                    raise ImageError(
                        f"Could not read {item.name}: it is encrypted in the zip; zip it without a password."
                    )
                with self._archives[item.source].open(item.member) as fp:
                    data = _read_capped(fp, limit, item.name, self.limits)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as e:
            # Bad CRC, an unsupported compression method (deflate64...), a truncated archive.
            raise ImageError(f"Could not read {item.name} from the upload: {e}.") from None
        self.bytes_read += len(data)
        return data

    # -- building ----------------------------------------------------------------------------
    def _add_file(self, path: str) -> None:
        name = sanitize_path(_display_name(path))
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS or _is_skipped(name):
            self.skipped.append(name)
            return
        size = os.path.getsize(path)
        if size > self.limits.max_image_bytes:
            raise BatchError(
                f"{name} is {size / MiB:,.1f} MiB, more than the limit of "
                f"{self.limits.max_image_bytes / MiB:,.0f} MiB per image."
            )
        self.items.append(BatchItem(name=name, concept="", source=path, size=size))

    def _add_zip(self, path: str) -> None:
        shown = _display_name(path)
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise BatchError(f"{shown} is not a readable zip archive ({e}).") from None
        self._archives[path] = archive
        infos = archive.infolist()
        limits = self.limits
        if len(infos) > limits.max_archive_entries:
            raise BatchError(f"{shown} has {len(infos):,} entries; the limit is {limits.max_archive_entries:,}.")
        found: list[tuple[str, zipfile.ZipInfo]] = []
        for info in infos:
            # Every entry is checked, skipped ones too: an archive with an escaping or linked
            # path is malformed or hostile, and refusing it whole is the clearest answer.
            name = sanitize_path(info.filename)
            if _is_symlink(info):
                raise BatchError(f"Refused {shown}: the entry {info.filename!r} is a symbolic link.")
            if info.is_dir():
                continue
            if _is_skipped(name) or PurePosixPath(name).suffix.lower() not in IMAGE_EXTENSIONS:
                self.skipped.append(name)
                continue
            _check_declared(info, shown, limits)
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


def _check_declared(info: zipfile.ZipInfo, archive: str, limits: BatchLimits) -> None:
    if info.file_size > limits.max_image_bytes:
        raise BatchError(
            f"Refused {archive}: {info.filename} unpacks to {info.file_size / MiB:,.1f} MiB, more than the "
            f"limit of {limits.max_image_bytes / MiB:,.0f} MiB per image."
        )
    if info.file_size > limits.ratio_min_bytes:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_compression_ratio:
            raise BatchError(
                f"Refused {archive}: {info.filename} is compressed {ratio:,.0f}:1, more than the limit of "
                f"{limits.max_compression_ratio:,.0f}:1 (images do not compress like that; it may be a zip bomb)."
            )


def _read_capped(fp: BinaryIO, limit: int, name: str, limits: BatchLimits, block: int = MiB) -> bytes:
    """Read at most ``limit`` bytes, counting as we go: a zip's declared sizes may lie."""
    buffer = io.BytesIO()
    while chunk := fp.read(block):
        buffer.write(chunk)
        if buffer.tell() > limit:
            if limit < limits.max_image_bytes:
                raise BatchError(
                    f"The upload unpacks to more than the limit of {limits.max_total_bytes / MiB:,.0f} MiB "
                    f"in all (reached at {name})."
                )
            raise BatchError(
                f"{name} unpacks to more than the limit of {limits.max_image_bytes / MiB:,.0f} MiB per image."
            )
    return buffer.getvalue()


def collect_inputs(paths: Iterable[str | os.PathLike], limits: BatchLimits | None = None) -> BatchInputs:
    """The images in ``paths`` (image files and ``.zip`` archives), in upload order.

    Zip members keep their folders; the first folder is the image's "concept" (files at the
    root have concept ""), looking through one folder that wraps them all (``wrapper_depth``).
    ``__MACOSX``, hidden files and non-images are skipped and listed in ``skipped``; nested
    zips are not opened. Raises ``BatchError`` when a limit is passed,
    an archive is unreadable or unsafe, or there is no image at all.
    """
    limits = limits or BatchLimits()
    paths = [os.fspath(p) for p in paths if p]
    if not paths:
        raise BatchError("Please upload images or a zip of images first.")
    if len(paths) > limits.max_files:
        raise BatchError(f"{len(paths):,} files were uploaded; the limit is {limits.max_files:,} per request.")
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            raise BatchError(f"The uploaded file {_display_name(path)} cannot be found on the server.") from None
    if total > limits.max_upload_bytes:
        raise BatchError(
            f"The upload is {total / MiB:,.1f} MiB; the limit is {limits.max_upload_bytes / MiB:,.0f} MiB per request."
        )

    inputs = BatchInputs(limits)
    try:
        for path in paths:
            if Path(path).suffix.lower() in ZIP_EXTENSIONS:
                inputs._add_zip(path)
            else:
                inputs._add_file(path)
            if len(inputs.items) > limits.max_files:
                raise BatchError(f"The upload holds more than {limits.max_files:,} images; the limit per request.")
        declared = sum(item.size for item in inputs.items)
        if declared > limits.max_total_bytes:
            raise BatchError(
                f"The images unpack to {declared / MiB:,.1f} MiB; the limit is "
                f"{limits.max_total_bytes / MiB:,.0f} MiB per request."
            )
        if not inputs.items:
            kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise BatchError(f"No images found in the upload (looked for {kinds}, also inside zip files).")
    except BaseException:
        inputs.close()
        raise
    return inputs


# ---------------------------------------------------------------------------------------------
# Tagging

ProgressCallback = Callable[[int, int, str], None]


def tag_items(
    inputs: BatchInputs,
    *,
    prepare: Callable[[bytes], torch.Tensor],
    run: Callable[[list[torch.Tensor]], np.ndarray],
    vocab: Vocabulary,
    options: TagOptions,
    chunk_size: int = 32,
    progress: ProgressCallback | None = None,
) -> Iterator[ImageResult]:
    """Tag every image of ``inputs`` in order, one ``run`` (model) call per chunk of images.

    ``prepare`` decodes and preprocesses encoded bytes on the CPU (``Tagger.prepare``);
    ``run`` maps a list of pixel tensors to probabilities ``[B, num_tags]`` (``Tagger.run``
    or ``ModelRunner.probabilities``, which wraps it in one GPU call). ``progress(done,
    total, name)`` is called after each image. Unreadable images yield an error result.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}.")
    total = len(inputs.items)
    done = 0
    for start in range(0, total, chunk_size):
        # A helper keeps every pixel tensor local to it: they are freed before we yield.
        for result in _tag_chunk(inputs, inputs.items[start : start + chunk_size], prepare, run, vocab, options):
            done += 1
            if progress is not None:
                progress(done, total, result.filename)
            yield result


def _tag_chunk(
    inputs: BatchInputs,
    items: Sequence[BatchItem],
    prepare: Callable[[bytes], torch.Tensor],
    run: Callable[[list[torch.Tensor]], np.ndarray],
    vocab: Vocabulary,
    options: TagOptions,
) -> list[ImageResult]:
    results: list[ImageResult | None] = [None] * len(items)
    pixels: list[torch.Tensor] = []
    slots: list[int] = []
    digests: list[str] = []
    for i, item in enumerate(items):
        digest: str | None = None
        try:
            data = inputs.read(item)
            digest = hashlib.sha256(data).hexdigest()
            pixels.append(prepare(data))
            slots.append(i)
            digests.append(digest)
        except ImageError as e:
            results[i] = ImageResult(item.name, item.concept, digest, error=_error_text(e, item.name))
        except BatchError:
            raise
        except Exception as e:  # one odd file must not stop a batch of hundreds
            log.exception("Unexpected error reading %s", item.name)
            results[i] = ImageResult(item.name, item.concept, digest, error=f"Could not read {item.name} ({e}).")
        finally:
            data = b""  # drop the encoded bytes before reading the next file
    if pixels:
        probabilities = run(pixels)
        pixels.clear()
        for row, slot, digest in zip(probabilities, slots, digests, strict=True):
            item = items[slot]
            results[slot] = ImageResult(
                item.name, item.concept, digest, tuple(select_tags(row, vocab, options.selection))
            )
    return results  # type: ignore[return-value]


def _error_text(error: ImageError, name: str) -> str:
    # Decoding bytes reports "the given data"; say which file it was.
    return str(error).replace("the given data", name, 1)


# ---------------------------------------------------------------------------------------------
# Outputs


class CaptionNamer:
    """Caption paths for images, unique within the captions zip.

    kohya/sd-scripts finds an image's caption as ``folder/stem.txt``. Two images with the same
    folder and stem (``a.png`` and ``a.jpg``) cannot both have that name, so: the first one
    in upload order gets ``folder/stem.txt``; each later one gets its full file name plus
    ``.txt`` (``folder/a.jpg.txt``), then ``folder/a.jpg.2.txt``, ... if that is taken too.
    Names are compared ignoring case, because Windows and macOS file systems do.
    ``renamed`` lists ``(image, caption)`` for every image that did not get its stem name.
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self.renamed: list[tuple[str, str]] = []

    def name_for(self, filename: str) -> str:
        path = PurePosixPath(filename)
        candidates = [path.with_suffix(".txt"), path.with_name(path.name + ".txt")]
        for candidate in candidates:
            if self._claim(str(candidate)):
                return self._result(filename, str(candidate), candidates[0])
        number = 2
        while not self._claim(name := str(path.with_name(f"{path.name}.{number}.txt"))):
            number += 1
        return self._result(filename, name, candidates[0])

    def _claim(self, name: str) -> bool:
        key = name.casefold()
        if key in self._taken:
            return False
        self._taken.add(key)
        return True

    def _result(self, filename: str, name: str, preferred: PurePosixPath) -> str:
        if name != str(preferred):
            self.renamed.append((filename, name))
        return name


class BatchWriter:
    """Writes ``captions.zip`` and ``tags.jsonl`` into ``directory`` as results arrive."""

    def __init__(self, directory: str | os.PathLike, options: TagOptions):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.captions_path = self.directory / "captions.zip"
        self.jsonl_path = self.directory / "tags.jsonl"
        self.namer = CaptionNamer()
        self._zip = zipfile.ZipFile(self.captions_path, "w", compression=zipfile.ZIP_DEFLATED)
        self._jsonl = open(self.jsonl_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed in close()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, result: ImageResult) -> str | None:
        """Write one result; returns the caption's path in the zip (None for an error)."""
        self._jsonl.write(json.dumps(result.json_line(), ensure_ascii=False) + "\n")
        if result.error is not None:
            return None
        name = self.namer.name_for(result.filename)
        self._zip.writestr(name, self.options.tag_string(result.tags).encode("utf-8"))
        return name

    def close(self) -> None:
        self._zip.close()
        self._jsonl.close()


TOP_TAGS = 8
TABLE_HEADERS = ["file", "concept", "tags", "top tags"]


@dataclass
class BatchOutput:
    """What a batch request produced: table rows, the two files, and counts for a summary."""

    rows: list[list] = field(default_factory=list)  # TABLE_HEADERS
    captions_zip: Path | None = None
    jsonl: Path | None = None
    images: int = 0  # tagged
    errors: int = 0  # unreadable
    skipped: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    model_calls: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"**{self.images} image{'s' if self.images != 1 else ''} tagged**"
        text += f" · {self.errors} error{'s' if self.errors != 1 else ''}"
        if self.skipped:
            text += f" · {len(self.skipped)} skipped (not images)"
        text += f" · {self.seconds:.1f} s"
        if self.renamed:
            shown = ", ".join(f"{image} → {caption}" for image, caption in self.renamed[:5])
            more = f" and {len(self.renamed) - 5} more" if len(self.renamed) > 5 else ""
            text += f"\n\nSame name in the same folder, so these captions were renamed: {shown}{more}."
        return text


def result_row(result: ImageResult) -> list:
    if result.error is not None:
        return [result.filename, result.concept, 0, f"⚠ {result.error}"]
    return [result.filename, result.concept, len(result.tags), ", ".join(t.tag for t in result.tags[:TOP_TAGS])]


OUTPUT_ROOT = Path(tempfile.gettempdir()) / "tagger-batch"
OUTPUT_MAX_AGE_S = 24 * 3600


def new_output_dir(root: Path = OUTPUT_ROOT, max_age_s: float = OUTPUT_MAX_AGE_S) -> Path:
    """A fresh directory per request; directories older than ``max_age_s`` are removed first
    (Gradio copies returned files into its own cache, so ours are only needed briefly)."""
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - max_age_s
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="batch-", dir=root))


def run_batch(
    paths: Iterable[str | os.PathLike],
    *,
    prepare: Callable[[bytes], torch.Tensor],
    run: Callable[[list[torch.Tensor]], np.ndarray],
    vocab: Vocabulary,
    options: TagOptions,
    limits: BatchLimits | None = None,
    chunk_size: int = 32,
    progress: ProgressCallback | None = None,
    out_dir: str | os.PathLike | None = None,
) -> BatchOutput:
    """Collect, tag and write: the whole request. See ``collect_inputs`` and ``tag_items``.

    With a ``Tagger``: ``prepare=tagger.prepare, run=tagger.run, vocab=tagger.vocab`` (in the
    app ``run=ctx.runner.probabilities``, one GPU call per chunk). Outputs go to ``out_dir``
    (default: a new directory under ``OUTPUT_ROOT``).
    """
    started = time.perf_counter()
    limits = limits or BatchLimits()
    inputs = collect_inputs(paths, limits)  # refuse a bad request before creating anything
    directory = Path(out_dir) if out_dir is not None else new_output_dir()
    calls = 0

    def counted_run(pixels: list[torch.Tensor]) -> np.ndarray:
        nonlocal calls
        calls += 1
        return run(pixels)

    output = BatchOutput(skipped=list(inputs.skipped))
    try:
        with inputs, BatchWriter(directory, options) as writer:
            results = tag_items(
                inputs,
                prepare=prepare,
                run=counted_run,
                vocab=vocab,
                options=options,
                chunk_size=chunk_size,
                progress=progress,
            )
            for result in results:
                writer.add(result)
                output.rows.append(result_row(result))
                if result.error is None:
                    output.images += 1
                else:
                    output.errors += 1
    except BaseException:
        if out_dir is None:  # half-written outputs of a failed request are of no use
            shutil.rmtree(directory, ignore_errors=True)
        raise
    output.captions_zip = writer.captions_path
    output.jsonl = writer.jsonl_path
    output.renamed = writer.namer.renamed
    output.model_calls = calls
    output.seconds = time.perf_counter() - started
    log.info(
        "Batch: %d tagged, %d errors, %d skipped, %d model calls, %.1f s",
        output.images,
        output.errors,
        len(output.skipped),
        calls,
        output.seconds,
    )
    return output
