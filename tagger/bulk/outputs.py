"""What a bulk run writes, and how it writes it so that a kill never leaves a corrupt file.

Layout under ``--out``::

    bulk.json                      the run's manifest (tagger.bulk.resume)
    txt/<key>.txt                  captions, when they are not written beside the images
    jsonl/shard-000003.jsonl       the Batch tab's JSONL lines, one file per shard
    parquet/shard-000003.parquet   key, path, sha256, size, model, options hash, sparse scores
    .bulk/parts/shard-000003/      the results of each finished model batch of an unfinished shard
    .bulk/done/shard-000003.json   written last: the shard is complete

Every file is written under a temporary name and renamed into place: it is complete or absent.
Each model batch is committed as one *part* (a small Parquet file); when a shard's last batch
is in, its parts are merged into its JSONL and Parquet files, its done marker is written, and
only then are the parts removed. Captions are written as the batch completes (before its part),
and writing one again is harmless: ``overwrite`` writes the same text, ``append``/``prepend``
add only tags the file lacks, ``skip`` keeps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tagger.bulk.names import escape_name
from tagger.bulk.safefs import NotRegularFile, TooLarge, create_exclusive, read_existing_text
from tagger.engine.vocab import normalize_tag
from tagger.errors import BulkError
from tagger.tags.selection import parse_tag_list

FORMATS = ("txt", "jsonl", "parquet")
ON_EXISTING = ("skip", "overwrite", "append", "prepend")
CAPTION_SEPARATOR = ", "


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


@dataclass(frozen=True)
class Layout:
    """The paths of one output folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "bulk.json"

    @property
    def state(self) -> Path:
        return self.root / ".bulk"

    def parts(self, shard: int) -> Path:
        return self.state / "parts" / shard_name(shard)

    def done(self, shard: int) -> Path:
        return self.state / "done" / f"{shard_name(shard)}.json"

    def shard_file(self, shard: int, kind: str) -> Path:
        """A shard's output file of one format: ``jsonl/shard-000003.jsonl``, ``parquet/...``."""
        return self.root / kind / f"{shard_name(shard)}.{kind}"

    def caption(self, caption_file: str) -> Path:
        """A caption's path: absolute when beside its image, else under ``txt/``."""
        path = Path(caption_file)
        return path if path.is_absolute() else self.root / "txt" / path


@contextlib.contextmanager
def atomic_file(path: Path, durable: bool = False) -> Iterator[BinaryIO]:
    """A new temporary file beside ``path`` to write to: renamed to ``path`` when the block
    ends (after an fsync when ``durable``), removed if it fails. All or nothing; the temporary
    is created exclusively, so a link planted at its name is never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and unique to this write: never mistaken for an output, nor for another process's.
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with create_exclusive(temporary) as fp:
            yield fp
            fp.flush()
            if durable:
                os.fsync(fp.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    with atomic_file(path, durable) as fp:
        fp.write(data)


SHARD_IN_NAME = re.compile(r"shard-(\d+)")


def remove_temporaries(folder: Path, owns: Callable[[int], bool]) -> None:
    """Temporary files a killed run left behind, only those of the shards ``owns`` accepts (by the
    file's or its folder's ``shard-NNNNNN``): another process may be writing the others."""
    for stray in folder.rglob(".*.tmp"):  # none when the folder is not there
        match = SHARD_IN_NAME.search(stray.relative_to(folder).as_posix())
        if match is not None and owns(int(match.group(1))):
            stray.unlink(missing_ok=True)


def merge_caption(existing: str, ours: str, mode: str) -> str:
    """The caption to write over ``existing``: ``append``/``prepend`` keep the existing text and
    add our tags it lacks (compared ignoring case, ``_`` vs space and ``\\(`` escapes) after or
    before it, so merging twice adds nothing the second time."""
    if mode == "overwrite":
        return ours
    if mode == "skip":
        return existing
    present = {normalize_tag(tag) for tag in parse_tag_list(existing)}
    new = [tag for tag in ours.split(CAPTION_SEPARATOR) if tag.strip() and normalize_tag(tag) not in present]
    if not new:
        return existing
    addition, kept = CAPTION_SEPARATOR.join(new), existing.strip()
    if not kept:
        return addition
    if mode == "append":
        return kept.rstrip(",") + CAPTION_SEPARATOR + addition
    return addition + CAPTION_SEPARATOR + kept.lstrip(",").lstrip()  # prepend


def write_caption(path: Path, caption: str, mode: str) -> str:
    """Write one caption file; returns ``new``, ``kept``, ``merged`` or ``same``. An existing caption
    that is a link, a pipe or a device is neither read nor replaced: ``NotRegularFile`` (or ``TooLarge``)."""
    existing = read_existing_text(path)
    if existing is None:
        write_atomic(path, caption.encode("utf-8"))
        return "new"
    if mode == "skip":
        return "kept"
    merged = merge_caption(existing, caption, mode)
    if merged == existing:
        return "same"
    write_atomic(path, merged.encode("utf-8"))
    return "merged"


@dataclass
class TagRow:
    """One image's results: everything any output needs, computed once from its scores."""

    index: int
    shard: int
    key: str
    path: str
    sha256: str | None
    width: int | None
    height: int | None
    error: str | None
    tag_ids: np.ndarray  # int32: every tag scoring at least the floor, by id
    scores: np.ndarray  # float32, aligned with tag_ids
    json_line: str  # the Batch tab's JSONL line
    caption_file: str | None = None  # where the caption goes (None: no txt output for it)
    caption: str | None = None  # the tag string, as every option formats it
    descriptor: np.ndarray | None = None  # float32 [descriptor_dim] with --descriptors


@dataclass(frozen=True)
class RunInfo:
    """Constant columns of the Parquet output."""

    model_repo: str
    model_revision: str
    options_hash: str
    descriptors: bool = False


@dataclass
class WriteCounts:
    images: int = 0
    errors: int = 0
    captions: dict[str, int] = field(default_factory=dict)  # new / kept / merged / same / refused
    messages: list[str] = field(default_factory=list)  # captions refused, one sentence each


def _part_schema(descriptors: bool) -> Any:
    import pyarrow as pa

    text, size = pa.string(), pa.int32()
    fields = [("index", pa.int64()), ("key", text), ("path", text), ("sha256", text), ("width", size), ("height", size)]
    fields += [("error", text), ("tag_ids", pa.list_(pa.int32())), ("scores", pa.list_(pa.float32())), ("json", text)]
    if descriptors:
        fields.append(("descriptor", pa.list_(pa.float32())))
    return pa.schema(fields)


def rows_table(rows: Sequence[TagRow], descriptors: bool) -> Any:
    import pyarrow as pa

    schema = _part_schema(descriptors)
    # The part's columns are TagRow's fields of the same names, "json" being its json_line.
    columns = {name: [getattr(r, "json_line" if name == "json" else name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def read_part(path: Path, check: Callable[[Any], None] = lambda table: None, **read: Any) -> Any:
    """One committed part (``read``: ``pq.read_table``'s arguments), which ``check`` may refuse
    with a ``ValueError``; ``BulkError`` saying what to do when it is damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, **read)
        check(table)
        return table
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        raise BulkError(
            f"The part file {path} is damaged ({e}); delete it and run the same command again: "
            "its images are tagged again."
        ) from None


class OutputWriter:
    """Writes captions and parts as batches complete, and a shard's files when it is complete: in
    the local engine's writer thread, or on Ray's workers (``finish_shard`` on the driver)."""

    def __init__(self, root: str | os.PathLike, formats: Sequence[str], on_existing: str, info: RunInfo):
        self.layout, self.formats, self.on_existing, self.info = Layout(Path(root)), tuple(formats), on_existing, info

    def write_batch(self, shard: int, rows: Sequence[TagRow]) -> WriteCounts:
        """Captions first, then the part that records the batch as done."""
        import pyarrow.parquet as pq

        counts = WriteCounts()
        for row in rows:
            if row.error is not None:
                counts.errors += 1
                continue
            counts.images += 1
            if "txt" in self.formats and row.caption_file is not None and row.caption is not None:
                path = self.layout.caption(row.caption_file)
                try:
                    outcome = write_caption(path, row.caption, self.on_existing)
                except (NotRegularFile, TooLarge) as e:
                    outcome = "refused"
                    counts.messages.append(f"Left the caption {escape_name(str(path))} alone: {e}.")
                counts.captions[outcome] = counts.captions.get(outcome, 0) + 1
        part = self.layout.parts(shard) / f"part-{min(r.index for r in rows):012d}.parquet"
        with atomic_file(part, durable=True) as fp:
            pq.write_table(rows_table(rows, self.info.descriptors), fp)
        return counts

    def finish_shard(self, shard: int) -> None:
        """Merge the shard's parts into its output files, mark it done, remove the parts."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        folder = self.layout.parts(shard)
        parts = sorted(folder.glob("part-*.parquet"))
        schema = _part_schema(self.info.descriptors)
        table = pa.concat_tables([read_part(p, schema=schema) for p in parts]) if parts else schema.empty_table()
        table = table.take(pc.sort_indices(table, [("index", "ascending")]))
        if "jsonl" in self.formats:
            text = "".join(line + "\n" for line in table.column("json").to_pylist())
            write_atomic(self.layout.shard_file(shard, "jsonl"), text.encode("utf-8"), durable=True)
        if "parquet" in self.formats:
            columns = {name: table.column(name) for name in ("key", "path", "sha256", "width", "height")}
            for name in ("model_repo", "model_revision", "options_hash"):  # the run's: the same on every row
                columns[name] = pa.array([getattr(self.info, name)] * table.num_rows, pa.string())
            for name in ("tag_ids", "scores", *(("descriptor",) if self.info.descriptors else ()), "error"):
                columns[name] = table.column(name)
            with atomic_file(self.layout.shard_file(shard, "parquet"), durable=True) as fp:
                pq.write_table(pa.table(columns), fp, compression="zstd")
        errors = sum(1 for e in table.column("error").to_pylist() if e is not None)
        marker = {"shard": shard, "images": table.num_rows - errors, "errors": errors}
        write_atomic(self.layout.done(shard), json.dumps(marker).encode("utf-8"), durable=True)
        shutil.rmtree(folder, ignore_errors=True)
