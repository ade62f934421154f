"""Tag implications and aliases from the boorus' own data, mapped onto the vocabulary.

Reads e621's database export (``tag_implications-*.csv(.gz)``, ``tag_aliases-*.csv(.gz)``:
``id,antecedent_name,consequent_name,created_at,status``) and Danbooru's API JSON
(``tag_implications.json``, ``tag_aliases.json``: objects with ``antecedent_name``,
``consequent_name``, ``status``); only ``active`` rows count, and any number of files merge.
A source is a path, an http(s) URL (downloaded once into the cache) or ``hub:FILENAME`` (a
file of the model's Hub repo). ``attach`` maps the names onto a vocabulary (``_`` or space, any
case, its artist form ``by NAME``, escaped parentheses) as ``vocab.relations``, which
``select_tags`` and ``page_scores`` use for the ``implied`` option and aliases.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from tagger.engine.vocab import Vocabulary, normalize_tag
from tagger.errors import RelationsError, ResolutionError

log = logging.getLogger("tagger")

ENV_IMPLICATIONS = "TAGGER_IMPLICATIONS"
ENV_ALIASES = "TAGGER_ALIASES"
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024  # the e621 exports are a few MB compressed
DOWNLOAD_TIMEOUT_S = 60
ARTIST_PREFIX = "by "


def sources_from_env(name: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The sources an environment variable names, separated by whitespace or commas."""
    value = (os.environ if env is None else env).get(name, "")
    return [part for part in re.split(r"[\s,]+", value) if part]


def _download(url: str) -> Path:
    """``url`` saved once under ``$TAGGER_CACHE/relations``; later calls (any process) reuse it."""
    base = os.environ.get("TAGGER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tagger")
    folder = Path(base) / "relations"
    name = os.path.basename(urllib.parse.urlparse(url).path) or "relations"
    target = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise RelationsError(f"{url} is larger than {MAX_DOWNLOAD_BYTES >> 20} MB; download it yourself.")
                out.write(chunk)
        os.replace(partial, target)  # whole files only: an interrupted download is not reused
    except OSError as e:
        raise RelationsError(f"Could not download {url} ({e}); download it and pass the file instead.") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def resolve_source(source: str, repo: str | None = None, revision: str | None = None) -> Path:
    """A local file for ``source``: a path, an http(s) URL or ``hub:FILENAME``."""
    if re.match(r"https?://", source, re.IGNORECASE):
        return _download(source)
    if source.startswith("hub:"):
        from tagger.engine.hub import DEFAULT_REPO, hub_file  # the Hub client only when asked for

        try:
            return hub_file(source[len("hub:") :], repo or os.environ.get("TAGGER_REPO") or DEFAULT_REPO, revision)
        except ResolutionError as e:
            raise RelationsError(str(e)) from None
    path = Path(source).expanduser()
    if not path.is_file():
        raise RelationsError(f"Relation file not found: {source}.")
    return path


def _text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise RelationsError(f"{path}: not a readable gzip file ({e}).") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RelationsError(f"{path}: not UTF-8 text ({e}).") from None


def read_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The active ``(antecedent, consequent)`` rows of one e621 CSV or Danbooru JSON file
    (gzipped or not; the content decides, not the name)."""
    path = Path(path)
    text = _text(path)
    if text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RelationsError(f"{path}: not valid JSON ({e}).") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise RelationsError(f"{path}: expected a JSON list of objects with antecedent_name and consequent_name.")
        pairs = []
        for row in data:
            antecedent, consequent = row.get("antecedent_name"), row.get("consequent_name")
            if not isinstance(antecedent, str) or not isinstance(consequent, str):
                raise RelationsError(f"{path}: a row without antecedent_name and consequent_name: {str(row)[:200]}.")
            if row.get("status") == "active" and antecedent.strip() and consequent.strip():
                pairs.append((antecedent, consequent))
        return pairs
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    wanted = ("antecedent_name", "consequent_name", "status")
    if not set(wanted) <= set(header):
        raise RelationsError(
            f"{path}: not an e621 export (expected the columns antecedent_name, consequent_name, status)."
        )
    a, c, st = (header.index(name) for name in wanted)
    last = max(a, c, st)
    # Plain rows by column position: a third of DictReader's time on the e621 export's size.
    return [
        (row[a], row[c])
        for row in reader
        if len(row) > last and row[st] == "active" and row[a].strip() and row[c].strip()
    ]


def _refuse_cycles(graph: Mapping[str, Sequence[str]], what: str, limit: int = 3) -> None:
    """``RelationsError`` naming up to ``limit`` cycles of ``graph`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []
    for root in graph:
        if root in state:
            continue
        path = [root]
        stack = [iter(graph.get(root, ()))]
        state[root] = 1
        while stack and len(cycles) < limit:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            seen = state.get(nxt)
            if seen == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif seen is None:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph.get(nxt, ())))
    if cycles:
        named = "; ".join(" → ".join(cycle) for cycle in cycles)
        raise RelationsError(
            f"The {what} form a cycle: {named}. A tag cannot lead back to itself; remove one row of each "
            "cycle from the files."
        )


@dataclass(frozen=True)
class Relations:
    """Implications and aliases by name (``normalize_tag`` form), merged over their files."""

    implications: Mapping[str, tuple[str, ...]]  # antecedent → its direct consequents (aliases applied)
    aliases: Mapping[str, str]  # old name → the name it points to (chains followed)
    spelling: Mapping[str, str]  # a name as the files write it, with spaces, for display
    implication_rows: int = 0
    alias_rows: int = 0

    @classmethod
    def from_pairs(
        cls, implications: Iterable[tuple[str, str]] = (), aliases: Iterable[tuple[str, str]] = ()
    ) -> Relations:
        """Relations from ``(antecedent, consequent)`` rows; ``RelationsError`` names any cycle."""
        key = lru_cache(maxsize=None)(normalize_tag)  # names repeat (every child names its parent): once each
        spelling: dict[str, str] = {}  # only alias targets are shown under a name from the files
        direct: dict[str, str] = {}
        alias_rows = 0
        for old, new in aliases:
            alias_rows += 1
            old_key, new_key = key(old), key(new)
            if old_key != new_key:
                direct[old_key] = new_key
                spelling.setdefault(new_key, new.replace("\\(", "(").replace("\\)", ")").replace("_", " ").strip())
        _refuse_cycles({old: (new,) for old, new in direct.items()}, "aliases")
        resolved: dict[str, str] = {}
        for old in direct:
            target = direct[old]
            while target in direct:  # acyclic, so this ends
                target = direct[target]
            resolved[old] = target

        graph: dict[str, tuple[str, ...]] = {}
        implication_rows = 0
        for antecedent, consequent in implications:
            implication_rows += 1
            a, c = key(antecedent), key(consequent)
            a, c = resolved.get(a, a), resolved.get(c, c)
            if a == c:
                continue
            children = graph.get(a, ())
            if c not in children:
                graph[a] = (*children, c)  # tuples: a few consequents each, far less memory than lists
        key.cache_clear()
        _refuse_cycles(graph, "implications")
        return cls(graph, resolved, spelling, implication_rows, alias_rows)


_LOADED: dict[tuple, Relations] = {}
_LOCK = threading.Lock()


def load_relations(
    implications: Sequence[str] = (), aliases: Sequence[str] = (), repo: str | None = None, revision: str | None = None
) -> Relations:
    """The relations of these sources, read once per process (again only when a file changed)."""
    imp_paths = [resolve_source(s, repo, revision) for s in implications]
    alias_paths = [resolve_source(s, repo, revision) for s in aliases]

    def stamp(paths: list[Path]) -> tuple:
        return tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)

    key = (stamp(imp_paths), stamp(alias_paths))
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = Relations.from_pairs(
                (pair for p in imp_paths for pair in read_pairs(p)),
                (pair for p in alias_paths for pair in read_pairs(p)),
            )
        return _LOADED[key]


@dataclass(frozen=True)
class RelationReport:
    """How the relation files met the vocabulary."""

    implication_rows: int  # active rows read
    implications_matched: int  # distinct antecedent → consequent pairs with both tags in the vocabulary
    alias_rows: int
    aliases_matched: int  # aliases whose old or new name is a vocabulary tag
    missing: int  # distinct names in the implications that the vocabulary lacks
    missing_examples: tuple[str, ...] = ()
    renamed: int = 0  # vocabulary tags shown under the name an alias points to

    def sentence(self) -> str:
        examples = f" (e.g. {', '.join(self.missing_examples)})" if self.missing_examples else ""
        return (
            f"Tag relations: {self.implications_matched} of {self.implication_rows} implications and "
            f"{self.aliases_matched} of {self.alias_rows} aliases match the vocabulary; {self.missing} tag names "
            f"in the implications are not in it{examples}; {self.renamed} vocabulary tags are shown under "
            "their alias."
        )


@dataclass
class VocabRelations:
    """Relations in vocabulary indices: what selection needs per image."""

    names: list[str]  # each tag as shown (an aliased tag under the name it points to)
    index: dict[str, list[int]]  # normalize_tag(shown name) → indices
    input_aliases: dict[str, str]  # normalize_tag(typed old name) → the shown name it means
    ancestor_ptr: np.ndarray  # CSR by tag: ancestors of tag i are ancestor_idx[ptr[i]:ptr[i+1]]
    ancestor_idx: np.ndarray
    report: RelationReport
    _lift_src: np.ndarray = field(init=False, repr=False)
    _lift_starts: np.ndarray = field(init=False, repr=False)
    _lift_targets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        counts = np.diff(self.ancestor_ptr)
        src = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        order = np.argsort(self.ancestor_idx, kind="stable")
        self._lift_src = src[order]
        targets, starts = np.unique(self.ancestor_idx[order], return_index=True)
        self._lift_targets, self._lift_starts = targets.astype(np.int64), starts

    @cached_property
    def keys(self) -> list[str]:
        """``normalize_tag`` of each shown name, by index."""
        return [normalize_tag(name) for name in self.names]

    def ancestors_of(self, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ancestors of each of ``tags``, concatenated in their order, and how many each has."""
        starts, ends = self.ancestor_ptr[tags], self.ancestor_ptr[np.asarray(tags) + 1]
        counts = ends - starts
        if not counts.sum():
            return np.zeros(0, dtype=np.int32), counts
        # One gather for all: offsets restart at each tag's slice of the CSR arrays.
        shift = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        return self.ancestor_idx[shift + np.arange(int(counts.sum()))], counts

    def lift(self, scores: np.ndarray) -> np.ndarray:
        """``implied=add``: each tag's score raised to the best score of the tags implying it."""
        out = np.array(scores, dtype=np.float32, copy=True)
        if self._lift_src.size:
            best = np.maximum.reduceat(out[self._lift_src], self._lift_starts)
            out[self._lift_targets] = np.maximum(out[self._lift_targets], best)
        return out

    def find(self, tag: str) -> list[int]:
        """The indices of a tag someone typed, after aliases."""
        key = normalize_tag(tag)
        if key in self.input_aliases:
            key = normalize_tag(self.input_aliases[key])
        return self.index.get(key, [])

    def shown(self, tag: str) -> str:
        """A typed tag (a prepended one) as shown: an old name becomes the one it points to."""
        return self.input_aliases.get(normalize_tag(tag), tag)


def attach(vocab: Vocabulary, relations: Relations, examples: int = 5) -> RelationReport:
    """Map ``relations`` onto ``vocab`` and hang them on it (``vocab.relations``)."""
    aliases = relations.aliases
    nodes = set(relations.implications).union(*relations.implications.values())
    names = list(vocab.tags)
    keys: list[str] = []
    renamed = 0
    for i, tag in enumerate(vocab.tags):
        k = normalize_tag(tag)
        bare = k[len(ARTIST_PREFIX) :] if k.startswith(ARTIST_PREFIX) else None
        if k in aliases:
            k = aliases[k]
            names[i] = relations.spelling.get(k, k)
            renamed += 1
        elif bare and bare not in nodes and bare in aliases and k not in nodes:
            k = aliases[bare]
            names[i] = ARTIST_PREFIX + relations.spelling.get(k, k)
            renamed += 1
        elif bare and k not in nodes and bare in nodes:
            k = bare  # the files name artists without the vocabulary's "by "
        keys.append(k)
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)

    # Transitive closure from the vocabulary's names only (memoised over the names reached).
    closure: dict[str, frozenset[str]] = {}

    def close(start: str) -> frozenset[str]:
        stack = [(start, False)]
        while stack:
            name, expanded = stack.pop()
            if name in closure:
                continue
            children = relations.implications.get(name, ())
            if not expanded:
                stack.append((name, True))
                stack.extend((c, False) for c in children if c not in closure)
                continue
            closure[name] = frozenset(children).union(*(closure[c] for c in children))
        return closure[start]

    ptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    flat: list[int] = []
    for i, k in enumerate(keys):
        if k in relations.implications:
            flat.extend(sorted({t for name in close(k) for t in by_key.get(name, ()) if t != i}))
        ptr[i + 1] = len(flat)
    graph = relations.implications
    matched = {(a, c) for a, consequents in graph.items() if a in by_key for c in consequents if c in by_key}
    missing = {name for a, consequents in graph.items() for name in (a, *consequents) if name not in by_key}

    index: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        index.setdefault(normalize_tag(name), []).append(i)
    input_aliases: dict[str, str] = {}
    aliases_matched = 0
    for old, new in aliases.items():
        targets = by_key.get(new)
        if targets or old in by_key:
            aliases_matched += 1
        if not targets:
            continue
        shown = names[targets[0]]
        input_aliases[old] = shown
        if shown.lower().startswith(ARTIST_PREFIX) and not new.startswith(ARTIST_PREFIX):
            input_aliases[ARTIST_PREFIX + old] = shown
    report = RelationReport(
        implication_rows=relations.implication_rows,
        implications_matched=len(matched),
        alias_rows=relations.alias_rows,
        aliases_matched=aliases_matched,
        missing=len(missing),
        missing_examples=tuple(sorted(missing)[:examples]),
        renamed=renamed,
    )
    vocab.relations = VocabRelations(names, index, input_aliases, ptr, np.asarray(flat, dtype=np.int32), report)
    return report


def attach_sources(
    vocab: Vocabulary,
    implications: Sequence[str] = (),
    aliases: Sequence[str] = (),
    repo: str | None = None,
    revision: str | None = None,
) -> RelationReport | None:
    """Load (once per process) and attach the relations of these sources; ``None`` when there are none."""
    if not implications and not aliases:
        return None
    report = attach(vocab, load_relations(implications, aliases, repo, revision))
    log.info("%s", report.sentence())
    return report
