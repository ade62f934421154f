"""Resuming: the manifest that pins a run's settings, and what an output folder already holds.

The first run in an output folder writes ``bulk.json``: the tagging options, the model, every
setting that changes what is written, and each input's image count and a hash of its names. A
later run must match it, each difference named, because mixing two settings in one dataset
would be silent corruption. Device, dtype, batch size and worker counts are not recorded: they
change speed, not what a row means, and a run pre-empted on one machine may resume on another.
``ResumeState`` reads what is done: finished shards, and the keys of every committed part of
the others, so that a half-done shard resumes after the images it already wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagger.bulk.outputs import SHARD_IN_NAME, Layout, read_part, remove_temporaries, write_atomic
from tagger.bulk.safefs import read_regular
from tagger.errors import BulkError
from tagger.tags.options import OPTION_NAMES, TagOptions

log = logging.getLogger("tagger")

MANIFEST_VERSION = 1
MAX_STATE_BYTES = 1024 * 1024  # a done marker is a line of JSON


def options_values(options: TagOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in OPTION_NAMES}


def options_hash(options: TagOptions) -> str:
    """A short, stable hash of the tagging options (the Parquet output's ``options_hash``)."""
    text = json.dumps(options_values(options), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "(unset)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Sentences' parts naming each changed setting: '--threshold 0.35 then, 0.5 now'."""
    # Relation files are recorded only when given: dropping them is a change too.
    names = dict.fromkeys([*new, *(k for k in ("implications", "aliases") if k in old)])
    old_options, defaults = old.get("options", {}), options_values(TagOptions())
    settings = [(name, old.get(name), new.get(name)) for name in names if name not in ("options", "inputs", "version")]
    # An option newer than the manifest had its default then.
    options = [(name, old_options.get(name, defaults.get(name)), now) for name, now in new.get("options", {}).items()]
    changed = [
        f"{flag(name)} was {_shown(then)}, now {_shown(now)}" for name, then, now in settings + options if then != now
    ]
    old_inputs, new_inputs = old.get("inputs", []), new.get("inputs", [])
    if [i.get("input") for i in old_inputs] != [i.get("input") for i in new_inputs]:
        before = " ".join(i.get("input", "?") for i in old_inputs)
        after = " ".join(i.get("input", "?") for i in new_inputs)
        changed.append(f"the inputs were {before}, now {after}")
    else:
        for before, after in zip(old_inputs, new_inputs, strict=True):
            if before != after:
                then, now = before.get("images"), after.get("images")
                counts = f" ({then:,} images then, {now:,} now)" if then is not None and now is not None else ""
                changed.append(f"the input {after.get('input')} changed since{counts}")
    return changed


def check_manifest(layout: Layout, manifest: dict[str, Any]) -> bool:
    """Write the manifest in a new folder, or check it against the one there: True for a resume,
    ``BulkError`` naming every difference."""
    path = layout.manifest
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BulkError(f"{path} cannot be read ({e}); move it away to start this folder afresh.") from None
        try:
            if old.get("version") != MANIFEST_VERSION:
                raise BulkError(f"{path} was written by another version of the bulk command; use a new --out folder.")
            changed = _differences(old, manifest)
        except (AttributeError, KeyError, TypeError, ValueError):  # hand-edited: not what this code writes
            raise BulkError(
                f"{path} is damaged or was edited by hand (it is not a manifest this command wrote); "
                "restore it, or start with a new --out folder."
            ) from None
        if changed:
            raise BulkError(
                f"Cannot resume in {layout.root}: it was started with other settings ({'; '.join(changed)}). "
                "Run again with the same settings, or give a new --out folder."
            )
        return True
    write_atomic(path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), durable=True)
    return False


def new_manifest(*, options: TagOptions, inputs: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    """The manifest of a run: ``settings`` are named after their flags (``max_size``, ``format``)."""
    return {"version": MANIFEST_VERSION, **settings, "options": options_values(options), "inputs": inputs}


@dataclass
class ResumeState:
    """What an output folder already holds."""

    finished: dict[int, dict[str, Any]] = field(default_factory=dict)  # shard → done marker
    done_keys: dict[int, set[str]] = field(default_factory=dict)  # unfinished shard → committed keys

    @classmethod
    def load(cls, layout: Layout, owns: Callable[[int], bool] = lambda shard: True) -> ResumeState:
        """The state of the shards ``owns`` accepts (this process's: others sharing the folder
        are writing theirs). A damaged state file is a ``BulkError`` saying what to delete."""
        state = cls()
        # Writes a kill interrupted: never complete, never used.
        for folder in (layout.state, layout.root / "parquet", layout.root / "jsonl"):
            remove_temporaries(folder, owns)
        for marker in sorted((layout.state / "done").glob("shard-*.json")):  # none without the folder
            shard = _shard_number(marker.name.removesuffix(".json"))
            if shard is not None and owns(shard):
                state.finished[shard] = _read_marker(marker, shard)
        for folder in sorted((layout.state / "parts").glob("shard-*")):
            shard = _shard_number(folder.name)
            if shard is None or not owns(shard) or shard in state.finished:
                continue  # finished: killed between the marker and removing the parts
            parts = sorted(folder.glob("part-*.parquet"))
            keys = [read_part(part, _text_keys, columns=["key"]).column("key").to_pylist() for part in parts]
            state.done_keys[shard] = {key for part_keys in keys for key in part_keys if key is not None}
        return state


def _shard_number(name: str) -> int | None:
    match = SHARD_IN_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def _read_marker(path: Path, shard: int) -> dict[str, Any]:
    """A shard's done marker, as ``OutputWriter.finish_shard`` writes it."""
    try:
        data = json.loads(read_regular(path, MAX_STATE_BYTES))
        if not isinstance(data, dict) or int(data["shard"]) != shard:
            raise ValueError("not this shard's marker")
        data["images"], data["errors"] = int(data["images"]), int(data["errors"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BulkError(
            f"The done marker {path} is damaged ({e}); delete it and run the same command again: "
            "that shard is tagged again."
        ) from None
    return data


def _text_keys(table: Any) -> None:
    import pyarrow as pa

    if not pa.types.is_string(table.column("key").type):
        raise ValueError(f"its key column holds {table.column('key').type}, not text")
