"""The inputs of a bulk run: every image of every input, in one fixed order, and how to read it.

An input is a folder (recursive by default), an image file, a zip, a tar or webdataset shard, a
Parquet file with an image-bytes or path column, a ``datasets`` ``save_to_disk`` folder, or
``hf:owner/name[@revision]`` (streamed).
Each image becomes an ``Entry`` whose *locator*, a small tuple, a decoding worker (a local
process or a Ray task) turns into its bytes with ``read_bytes``. Listing never reads image
data, except for compressed tars and Hub streams, which can only be read front to back: their
locators carry the bytes. The order is fixed (folders sorted, archives in member order, tables
in row order), so an image's position, and with it its shard, is the same in every run; keys
(``<input label>/<path in the input or row number>``) are unique and stable: resume compares them.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagger.bulk import safefs
from tagger.bulk.names import escape_name
from tagger.bulk.parquet_pages import ChunkCells, NeedsArrow, PageError
from tagger.datasets.intake import is_image_name, sanitize_path, wrapper_depth
from tagger.errors import BulkError, UploadError, format_bytes

HUB_PREFIX = "hf:"
TAR_STREAM_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
PATH_COLUMN_NAMES = ("path", "file", "filename", "file_name", "image_path")

# A locator: ("file", path) | ("zip", archive, member) | ("tar", archive, offset, size)
# | ("parquet", file, row_group, row, column) | ("dataset", folder, split, row, column) | ("bytes", data)
Locator = tuple


@dataclass(frozen=True)
class Entry:
    """One image of one input, before it is given its position among all inputs."""

    name: str  # path inside the input (folders, archives) or row number (tables): the key's second half
    path: str  # where the image is, for people: a file path, "a.zip/x.png", "t.parquet#12"
    concept: str  # first folder below the input ("" at its top), as the Batch tab records it
    locator: Locator
    file: str | None = None  # the image's own file: captions may be written beside it
    error: str | None = None  # known to be unreadable before decoding


@dataclass(frozen=True)
class Record:
    """One image of the run: its position fixes its shard, its key is what resume compares; the
    plan (``tagger.bulk.plan``) fills in ``shard`` and ``caption_file``."""

    index: int
    key: str
    path: str
    concept: str
    locator: Locator
    file: str | None = None
    error: str | None = None
    shard: int = 0
    caption_file: str | None = None  # relative: under the output's txt/ folder; absolute: beside the image


def _is_hidden(name: str) -> bool:
    """Hidden files and folders (``.git``, ``._a.png``) and macOS resource forks; ``..`` is not
    hidden but escaping, and is reported as such."""
    return (name.startswith(".") and name not in (".", "..")) or name == "__MACOSX"


def _first_folder(name: str) -> str:
    """The concept of a file in a folder tree or a streamed shard: its first folder ("" at the top)."""
    folder, slash, _ = name.partition("/")
    return folder if slash else ""


def _concepts(members: Sequence[tuple[Any, ...]]) -> list[str]:
    """The Batch tab's concept rule for archive members ``(name, error, ...)``: first folder below
    a wrapping folder (members refused for their names take no part and get no concept)."""
    depth = wrapper_depth([name for name, error, *_ in members if error is None])
    parts = [(name.split("/")[depth:], error) for name, error, *_ in members]
    return [folders[0] if len(folders) > 1 and error is None else "" for folders, error in parts]


def _image_member(raw: str, posix: str, shown: str, escape: Callable[[str], str]) -> tuple[str, str | None] | None:
    """(name, error) for an archive member named ``raw`` (``posix``: with ``/`` separators), None
    for one that is hidden or not an image; a name that points outside the archive is refused.
    ``escape``: ``escape_name`` for tar names, which are bytes decoded as surrogates."""
    if not is_image_name(raw) or any(_is_hidden(p) for p in posix.split("/")):
        return None
    try:
        return escape(sanitize_path(raw)), None
    except UploadError:
        refused = f"Refused {shown}/{escape(raw)}: the member's path points outside the archive."
        return escape(posix.replace("../", "__/").lstrip("/")), refused


class Source:
    """One input. ``entries()`` lists its images in their fixed order."""

    kind: str = ""
    streamed: bool = False  # True: the images can only be read front to back, and not counted ahead

    def __init__(self, spec: Path | str):
        self.spec = str(spec)  # the input as resolved: an absolute path, or hf:name

    def entries(self) -> Iterator[Entry]:
        raise NotImplementedError

    def survey(self) -> dict[str, Any]:
        """What the manifest records to notice a changed input: count and a hash of the names."""
        digest, count = hashlib.sha256(), 0
        for entry in self.entries():
            digest.update(entry.name.encode("utf-8", "surrogateescape") + b"\n")
            count += 1
        # The input's name escaped: the manifest is UTF-8 text.
        return {"input": escape_name(self.spec), "kind": self.kind, "images": count, "names_sha256": digest.hexdigest()}

    @property
    def default_label(self) -> str:
        return Path(self.spec).name or "input"


class FolderSource(Source):
    kind = "folder"

    def __init__(self, path: Path, recursive: bool = True):
        super().__init__(path)
        self.recursive = recursive

    def entries(self) -> Iterator[Entry]:
        root = self.spec
        for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error):
            # Sorted in place so the walk itself is ordered; hidden folders (.git, .cache) skipped.
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d)) if self.recursive else []
            for filename in sorted(filenames):
                if _is_hidden(filename) or not is_image_name(filename):
                    continue
                full = os.path.join(dirpath, filename)
                # The key and the path shown are text; the file itself is read by its own name.
                name = escape_name(Path(os.path.relpath(full, root)).as_posix())
                yield Entry(name, escape_name(full), _first_folder(name), ("file", full), file=full)


def _walk_error(error: OSError) -> None:
    raise BulkError(f"Could not list the folder {error.filename}: {error.strerror}.")


class FileSource(Source):
    kind = "file"

    def entries(self) -> Iterator[Entry]:
        yield Entry(escape_name(Path(self.spec).name), escape_name(self.spec), "", ("file", self.spec), file=self.spec)


class ZipSource(Source):
    kind = "zip"

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as e:
            raise BulkError(f"{escape_name(str(path))} is not a readable zip archive ({e}).") from None
        self._members: list[tuple[str, str | None, str]] = []  # (name, error, member)
        for info in infos:
            member = _image_member(info.filename, info.filename.replace("\\", "/"), path.name, str)
            if member is None or info.is_dir():
                continue
            name, error = member
            if info.flag_bits & 0x1:
                error = f"Could not read {path.name}/{name}: it is encrypted; zip it without a password."
            elif info.file_size > safefs.MAX_IMAGE_BYTES:
                error = f"Could not read {path.name}/{name}: {safefs.size_limit_sentence(info.file_size)}."
            self._members.append((name, error, info.filename))

    def entries(self) -> Iterator[Entry]:
        shown = Path(self.spec).name
        for (name, error, member), concept in zip(self._members, _concepts(self._members), strict=True):
            yield Entry(name, f"{shown}/{name}", concept, ("zip", self.spec, member), error=error)


class TarSource(Source):
    """A tar file or webdataset shard. Uncompressed tars are read at each member's offset, so
    decoding workers read them in parallel; compressed ones are streamed (bytes in the locator)."""

    kind = "tar"

    def __init__(self, path: Path):
        super().__init__(path)
        self.streamed = path.name.lower().endswith(TAR_STREAM_SUFFIXES)
        self._members: list[tuple[str, str | None, int, int]] = []  # (name, error, offset, size)
        if not self.streamed:
            try:
                with tarfile.open(path, "r:") as archive:
                    for info, name, error in self._images(archive):
                        self._members.append((name, error, info.offset_data, info.size))
            except (tarfile.TarError, OSError) as e:
                raise BulkError(f"{escape_name(str(path))} is not a readable (uncompressed) tar file ({e}).") from None

    def _images(self, archive: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str | None]]:
        """The archive's image members, each with its (name, error), in member order."""
        shown = escape_name(Path(self.spec).name)
        for info in archive:
            if not info.isfile():
                continue
            member = _image_member(info.name, info.name, shown, escape_name)
            if member is None:
                continue
            name, error = member
            if error is None and info.size > safefs.MAX_IMAGE_BYTES:
                error = f"Could not read {shown}/{name}: {safefs.size_limit_sentence(info.size)}."
            yield info, name, error

    def entries(self) -> Iterator[Entry]:
        shown = escape_name(Path(self.spec).name)
        if not self.streamed:
            for (name, error, offset, size), concept in zip(self._members, _concepts(self._members), strict=True):
                yield Entry(name, f"{shown}/{name}", concept, ("tar", self.spec, offset, size), error=error)
            return
        # Compressed: one pass front to back; a webdataset keeps a sample's files together, so
        # the concept is simply the first folder of the member's path.
        try:
            with tarfile.open(self.spec, "r:*") as archive:
                for info, name, error in self._images(archive):
                    handle = archive.extractfile(info) if error is None else None
                    data = handle.read() if handle is not None else b""
                    yield Entry(name, f"{shown}/{name}", _first_folder(name), ("bytes", data), error=error)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BulkError(f"{escape_name(self.spec)} is not a readable tar file ({e}).") from None


def _pick_table_column(names: Sequence[str], kinds: dict[str, str | None], wanted: str | None, where: str) -> str:
    """The image column of a table: ``wanted``, else the first image/bytes column, else a path column."""
    if wanted:
        _check_column(wanted, names, where)
        if kinds.get(wanted) is None:
            raise BulkError(f"The column {wanted!r} of {where} holds neither image bytes nor file paths.")
        return wanted
    found = [name for name in names if kinds.get(name) in ("image", "bytes")]
    found += [name for name in names if kinds.get(name) == "path" and name.lower() in PATH_COLUMN_NAMES]
    if found:
        return found[0]
    raise BulkError(
        f"{where} has no image column (image bytes, or file paths named {', '.join(PATH_COLUMN_NAMES)}); "
        f"its columns are {', '.join(names)}. Name it with --image-column."
    )


def _check_column(column: str, names: Sequence[str], where: str) -> None:
    if column not in names:
        raise BulkError(f"{where} has no column {column!r}; its columns are {', '.join(names)}.")


def _arrow_kind(data_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        return "bytes"
    if pa.types.is_struct(data_type) and data_type.get_field_index("bytes") >= 0:
        return "image"  # datasets' Image feature: {bytes, path}
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "path"
    return None


def _key_names(table: Any, rows: int, where: str, column: str | None) -> list[str]:
    if not column:
        return [f"{row:09d}" for row in range(rows)]
    names = [escape_name(str(v)) for v in table[column]]
    if len(set(names)) != len(names):
        raise BulkError(f"The key column {column!r} of {where} has repeated values; keys must be unique.")
    return names


class ParquetSource(Source):
    kind = "parquet"

    def __init__(self, path: Path, image_column: str | None = None, key_column: str | None = None):
        import pyarrow.parquet as pq

        super().__init__(path)
        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:
            raise BulkError(f"{path} is not a readable Parquet file ({e}).") from None
        schema = parquet.schema_arrow
        kinds = {field.name: _arrow_kind(field.type) for field in schema}
        self.column = _pick_table_column(schema.names, kinds, image_column, str(path))
        self.column_kind = kinds[self.column]
        if key_column:
            _check_column(key_column, schema.names, str(path))
        self._groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        small = [c for c in (key_column, self.column if self.column_kind == "path" else None) if c]
        self._small = parquet.read(columns=small).to_pydict() if small else {}
        self._names = _key_names(self._small, sum(self._groups), str(path), key_column)

    def entries(self) -> Iterator[Entry]:
        folder = os.path.dirname(self.spec)
        shown = Path(self.spec).name
        cells = ((group, in_group) for group, count in enumerate(self._groups) for in_group in range(count))
        for row, (group, in_group) in enumerate(cells):
            name = self._names[row]
            if self.column_kind == "path":
                value = self._small[self.column][row]
                if not value:
                    yield Entry(name, f"{shown}#{row}", "", ("bytes", b""), error=f"{shown}#{row} has no path.")
                else:
                    yield Entry(name, value, "", ("file", os.path.join(folder, value)))
            else:
                yield Entry(name, f"{shown}#{row}", "", ("parquet", self.spec, group, in_group, self.column))


def _dataset_kind(feature: Any) -> str | None:
    import datasets

    # A dict with "bytes": an Image column of Parquet written without datasets' metadata.
    if isinstance(feature, datasets.Image) or (isinstance(feature, dict) and "bytes" in feature):
        return "image"
    if isinstance(feature, datasets.Value):
        return {"binary": "bytes", "large_binary": "bytes", "string": "path", "large_string": "path"}.get(feature.dtype)
    return None


class SavedDatasetSource(Source):
    """A ``datasets`` dataset (or dataset dict) written by ``save_to_disk``: random access by row."""

    kind = "dataset"

    def __init__(self, path: Path, split: str | None, image_column: str | None, key_column: str | None):
        import datasets

        super().__init__(path)
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise BulkError(f"{path} looks like a saved dataset but could not be loaded ({e}).") from None
        dataset, self.split = loaded, ""
        if not isinstance(loaded, datasets.Dataset):  # a dataset dict: one of its splits
            splits = list(loaded.keys())
            if split is None and "train" not in splits and len(splits) != 1:
                raise BulkError(f"{path} has the splits {', '.join(splits)}; choose one with --split.")
            if split is None:
                split = "train" if "train" in splits else splits[0]
            if split not in splits:
                raise BulkError(f"{path} has no split {split!r}; its splits are {', '.join(splits)}.")
            dataset, self.split = loaded[split], split
        kinds = {name: _dataset_kind(f) for name, f in dataset.features.items()}
        self.column = _pick_table_column(list(dataset.column_names), kinds, image_column, str(path))
        self.rows = len(dataset)
        self.fingerprint = getattr(dataset, "_fingerprint", "")
        if key_column:
            _check_column(key_column, dataset.column_names, str(path))
        self._names = _key_names(dataset, self.rows, str(path), key_column)

    def entries(self) -> Iterator[Entry]:
        shown = Path(self.spec).name + (f"[{self.split}]" if self.split else "")
        for row, name in enumerate(self._names):
            yield Entry(name, f"{shown}#{row}", "", ("dataset", self.spec, self.split, row, self.column))

    def survey(self) -> dict[str, Any]:
        return {**super().survey(), "fingerprint": self.fingerprint}


class HubSource(Source):
    """``hf:owner/name[@revision]``: a Hub dataset, streamed with ``datasets`` (rows in order)."""

    kind = "hub"
    streamed = True

    def __init__(self, spec: str, split: str | None, image_column: str | None, key_column: str | None):
        super().__init__(spec)
        self.name, _, revision = spec[len(HUB_PREFIX) :].partition("@")
        self.revision = revision or None
        self.split = split or "train"
        self.image_column, self.key_column = image_column, key_column

    @property
    def default_label(self) -> str:
        return self.name.replace("/", "__").strip("._") or "hub"

    def _open(self) -> tuple[Any, str]:
        import datasets

        try:
            stream = datasets.load_dataset(self.name, split=self.split, streaming=True, revision=self.revision)
        except Exception as e:
            raise BulkError(
                f"Could not open the dataset {self.name!r} (split {self.split!r}) from the Hub: {e}"
            ) from None
        features = stream.features
        if features is None:  # some streamed datasets only know their columns after the first row
            first = next(iter(stream), None)
            names = list(first) if first else []
            kinds = {
                k: "bytes" if isinstance(v, bytes) else "image" if isinstance(v, dict) else None
                for k, v in (first or {}).items()
            }
        else:
            names = list(features)
            kinds = {name: _dataset_kind(f) for name, f in features.items()}
        column = _pick_table_column(names, kinds, self.image_column, f"the dataset {self.name}")
        if features is not None and isinstance(features[column], datasets.Image):
            stream = stream.cast_column(column, datasets.Image(decode=False))
        return stream, column

    def survey(self) -> dict[str, Any]:
        """Opens the stream (so a wrong name or column is reported before anything is written)
        but cannot count it without reading it all: a streamed input is not counted."""
        self._open()
        return {"input": self.spec, "kind": self.kind, "split": self.split, "images": None}

    def entries(self) -> Iterator[Entry]:
        stream, column = self._open()
        for row, example in enumerate(stream):
            name = escape_name(str(example[self.key_column])) if self.key_column else f"{row:09d}"
            shown = f"{self.spec}[{self.split}]#{row}"
            data, file = _image_value(example.get(column))
            if data is None and file is None:
                yield Entry(name, shown, "", ("bytes", b""), error=f"{shown} has no image data.")
            else:
                yield Entry(name, shown, "", ("file", file) if data is None else ("bytes", data))


def _image_value(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) from a table cell: raw bytes, a path string, or a datasets Image dict."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    if isinstance(value, dict):
        data = value.get("bytes")
        return (bytes(data) if data else None), (value.get("path") or None)
    return None, None


@dataclass(frozen=True)
class InputSettings:
    recursive: bool = True
    split: str | None = None
    image_column: str | None = None
    key_column: str | None = None


def open_source(spec: str, settings: InputSettings) -> Source:
    """The ``Source`` for one command-line input; ``BulkError`` when it cannot be read."""
    if spec.startswith(HUB_PREFIX):
        if not spec[len(HUB_PREFIX) :].strip("@"):
            raise BulkError(f"{spec!r} names no dataset; write hf:owner/name (or hf:owner/name@revision).")
        return HubSource(spec, settings.split, settings.image_column, settings.key_column)
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise BulkError(f"The input {spec} does not exist.")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return SavedDatasetSource(path, settings.split, settings.image_column, settings.key_column)
        return FolderSource(path, settings.recursive)
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return ZipSource(path)
    if lower.endswith(".tar") or lower.endswith(TAR_STREAM_SUFFIXES):
        return TarSource(path)
    if lower.endswith(".parquet"):
        return ParquetSource(path, settings.image_column, settings.key_column)
    if is_image_name(lower):
        return FileSource(path)
    raise BulkError(
        f"Don't know how to read {spec}: give a folder, an image, a .zip, a .tar (webdataset), a .parquet, "
        "a dataset folder written by save_to_disk, or hf:owner/name."
    )


class Inputs:
    """All inputs of a run, each with a unique label; ``records()`` numbers their images in order."""

    def __init__(self, sources: Sequence[Source]):
        if not sources:
            raise BulkError("Give at least one input: a folder, an archive, a Parquet file or a dataset.")
        self.sources = list(sources)
        self.labels: list[str] = []
        taken: set[str] = set()
        for source in self.sources:
            base = escape_name(sanitize_path(source.default_label.replace("/", "_")))
            label, number = base, 2
            while label.casefold() in taken:
                label, number = f"{base}~{number}", number + 1
            taken.add(label.casefold())
            self.labels.append(label)

    @classmethod
    def open(cls, specs: Sequence[str], settings: InputSettings | None = None) -> Inputs:
        settings = settings or InputSettings()
        return cls([open_source(spec, settings) for spec in specs])

    def survey(self) -> list[dict[str, Any]]:
        """Per input: kind, image count and a hash of the names (a pass over the listing)."""
        return [source.survey() for source in self.sources]

    def records(self) -> Iterator[Record]:
        labelled = (
            (label, e) for source, label in zip(self.sources, self.labels, strict=True) for e in source.entries()
        )
        for index, (label, e) in enumerate(labelled):
            yield Record(index, f"{label}/{e.name}", e.path, e.concept, e.locator, e.file, e.error)


class _ReaderCache:
    """Open archives and Parquet readers of this process (reset after a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.zips: dict[str, zipfile.ZipFile] = {}
        self.groups: OrderedDict[tuple[str, int, str], _ParquetCells] = OrderedDict()
        self.datasets: dict[tuple[str, str, str], Any] = {}


_cache: _ReaderCache | None = None


def _reader_cache() -> _ReaderCache:
    global _cache
    if _cache is None or _cache.pid != os.getpid():  # a forked child must not share the parent's handles
        _cache = _ReaderCache()
    return _cache


class _ArrowCells:
    """One row group's image column read by pyarrow a row at a time, for the encodings that
    ``parquet_pages`` does not read (each page within the cap, so pyarrow holds a few caps)."""

    def __init__(self, file: str, group: int, column: str):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(file, pre_buffer=False)
        self._rows = parquet.iter_batches(batch_size=1, row_groups=[group], columns=[column], use_threads=False)
        self.next_row = 0

    def cell(self, row: int) -> Any:
        batch = None
        while self.next_row <= row:
            batch = next(self._rows, None)
            if batch is None:
                raise OSError("the Parquet file has fewer rows than it had when listed")
            self.next_row += 1
        assert batch is not None, "rows are asked for in increasing order"
        return batch.column(0)[0].as_py()


class _ParquetCells:
    """One row group's image column, read front to back a cell at a time (``parquet_pages``): a
    worker asks for rows in increasing order; a row behind the reader starts the group again."""

    def __init__(self, file: str, group: int, column: str):
        import pyarrow.parquet as pq

        self.refusal: str | None = None
        self.arrow: _ArrowCells | None = None
        self.leaves: dict[str, ChunkCells] = {}
        metadata = pq.ParquetFile(file).metadata
        row_group, limit = metadata.row_group(group), safefs.MAX_IMAGE_BYTES
        for leaf in range(row_group.num_columns):
            name = row_group.column(leaf).path_in_schema
            part = {column: "bytes", f"{column}.bytes": "bytes", f"{column}.path": "path"}.get(name)
            if part is None:
                continue
            chunk, schema_column = row_group.column(leaf), metadata.schema.column(leaf)
            try:
                self.leaves[part] = ChunkCells(file, chunk, schema_column, row_group.num_rows, limit, 4 * limit)
            except NeedsArrow:
                self.arrow = _ArrowCells(file, group, column)
            except PageError as e:
                self.refusal = (
                    f"its row group {group} was not read: {e}, and it may hold an image over the limit of "
                    f"{format_bytes(limit)} per image; write the file again with pyarrow's defaults to tag it"
                )
        if "bytes" not in self.leaves and self.arrow is None:  # a struct whose "bytes" is not a leaf
            self.arrow = _ArrowCells(file, group, column)
        self.next_row = 0

    def close(self) -> None:
        for leaf in self.leaves.values():
            leaf.close()

    def cell(self, row: int) -> tuple[bytes | None, str | None]:
        self.next_row = row + 1
        if self.refusal is not None:
            raise OSError(self.refusal)
        if self.arrow is not None:
            return _image_value(self.arrow.cell(row))
        try:
            data = self.leaves["bytes"].cell(row)
            path = self.leaves["path"].cell(row) if "path" in self.leaves else None
        except PageError as e:
            raise OSError(str(e)) from None
        return data or None, path.decode("utf-8", "replace") if path else None


def _parquet_cell(cache: _ReaderCache, file: str, group: int, row: int, column: str) -> tuple[bytes | None, str | None]:
    key = (file, group, column)
    cells = cache.groups.get(key)
    if cells is None or row < cells.next_row:
        if cells is not None:
            cells.close()
        cells = cache.groups[key] = _ParquetCells(file, group, column)
        cache.groups.move_to_end(key)
        while len(cache.groups) > 2:
            cache.groups.popitem(last=False)[1].close()
    return cells.cell(row)


def read_bytes(locator: Locator) -> bytes:
    """The encoded bytes an image's locator points at; ``OSError`` (an error for that image only)
    when they cannot be read. Only regular files are read, never through a link (``safefs``),
    and no image over ``safefs.MAX_IMAGE_BYTES``."""
    kind = locator[0]
    if kind == "bytes":
        _check_size(len(locator[1]))
        return locator[1]
    if kind == "file":
        return safefs.read_regular(locator[1], safefs.MAX_IMAGE_BYTES)
    if kind == "tar":
        _, archive, offset, size = locator
        _check_size(size)
        with open(archive, "rb") as fp:
            fp.seek(offset)
            data = fp.read(size)
        if len(data) != size:
            raise OSError(f"the tar file ends {size - len(data)} bytes early")
        return data
    cache = _reader_cache()
    if kind == "zip":
        _, archive, member = locator
        handle = cache.zips.get(archive)
        if handle is None:
            handle = cache.zips[archive] = zipfile.ZipFile(archive)
        try:
            _check_size(handle.getinfo(member).file_size)
            return handle.read(member)
        except (zipfile.BadZipFile, NotImplementedError, EOFError, KeyError) as e:
            raise OSError(str(e)) from None
    if kind == "parquet":
        _, file, group, row, column = locator
        cell, path = _parquet_cell(cache, file, group, row, column)
        return _bytes_or_file(cell, path, os.path.dirname(file))
    if kind == "dataset":
        _, folder, split, row, column = locator
        dataset = cache.datasets.get((folder, split, column))
        if dataset is None:
            import datasets

            loaded = datasets.load_from_disk(folder)
            dataset = (loaded[split] if split else loaded).select_columns([column])
            if isinstance(dataset.features[column], datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
            cache.datasets[(folder, split, column)] = dataset
        _check_size(_dataset_cell_size(dataset, row, column))  # refused before it is copied
        cell, path = _image_value(dataset[row][column])
        return _bytes_or_file(cell, path, folder)
    raise ValueError(f"unknown locator kind {kind!r}")


def _check_size(size: int | None) -> None:
    """``safefs.TooLarge`` for an image over ``safefs.MAX_IMAGE_BYTES`` (None: not known ahead)."""
    if size is not None and size > safefs.MAX_IMAGE_BYTES:
        raise safefs.TooLarge(safefs.size_limit_sentence(size))


def _bytes_or_file(data: bytes | None, path: str | None, folder: str) -> bytes:
    if data is not None:
        _check_size(len(data))
        return data
    if path:
        return safefs.read_regular(os.path.join(folder, path), safefs.MAX_IMAGE_BYTES)
    raise OSError("the row holds no image")


def _dataset_cell_size(dataset: Any, row: int, column: str) -> int | None:
    """The byte length of a saved dataset's cell, read from its memory-mapped Arrow data."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if getattr(dataset, "_indices", None) is not None:  # rows reordered: let the copy be measured
        return None
    values = dataset.data.column(column).slice(row, 1).combine_chunks()
    if pa.types.is_struct(values.type):
        values = values.field("bytes")
    if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        return None
    size = pc.binary_length(values)[0].as_py()
    return int(size) if size is not None else None
