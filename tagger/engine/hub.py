"""Locate the tagger's checkpoint and vocabulary: local files or the Hugging Face Hub.

Explicit arguments win over environment variables (``TAGGER_CHECKPOINT``, ``TAGGER_VOCAB``,
``TAGGER_REPO``, ``TAGGER_REVISION``). Hub files go through ``hf_hub_download`` so that the normal
HF cache, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply exactly as in every other HF tool. Every
failure becomes a :class:`ResolutionError` whose message is one sentence saying what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tagger.errors import ResolutionError

DEFAULT_REPO = "lodestones/tagger-experiment"
CHECKPOINT_FILENAME = "tagger_proto.safetensors"
# Tried in this order: the richer file (with categories) first, the plain one when it is absent.
VOCAB_FILENAMES = ("tagger_vocab_with_categories.json", "tagger_vocab.json")

ENV_CHECKPOINT = "TAGGER_CHECKPOINT"
ENV_VOCAB = "TAGGER_VOCAB"
ENV_REPO = "TAGGER_REPO"
ENV_REVISION = "TAGGER_REVISION"

_LOCAL_HINT = f"set {ENV_CHECKPOINT} and {ENV_VOCAB} to local files"

logger = logging.getLogger("tagger")


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of the two files the tagger needs, and where they came from."""

    checkpoint: Path
    vocab: Path
    source: str  # human-readable, e.g. "lodestones/tagger-experiment@main" or "local files"


# The Hub answered (the repo, revision or file does not exist, access denied, a bad id): a
# cached copy is no answer to these. Any other exception from hf_hub_download means the
# transfer itself failed (or the disk did: an OSError other than a connection's).
_HUB_ANSWERS: tuple[type[BaseException], ...] = (HfHubHTTPError, EntryNotFoundError, HFValidationError)


def _is_offline() -> bool:
    # The library reads HF_HUB_OFFLINE once at import; ask it rather than the environment.
    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _local_file(value: str | os.PathLike[str], what: str, origin: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise ResolutionError(
            f"The {what} file {path} (from {origin}) does not exist or is not a file; "
            f"fix the path or leave {origin} unset to download it from the Hub."
        )
    logger.info("%s: local file (from %s) -> %s", what, origin, path)
    return path


def _pick(explicit: str | os.PathLike[str] | None, env: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """Return (value, origin) where an explicit argument beats the environment; empty means unset."""
    if explicit is not None and os.fspath(explicit) != "":
        flag = "--" + name.removeprefix("TAGGER_").lower()
        return os.fspath(explicit), f"the {flag} option"
    return env.get(name) or None, name


def _explain(
    error: BaseException, filename: str, repo: str, revision: str | None, local_var: str, cache_dir: str | None
) -> str:
    """Turn a huggingface_hub failure into one sentence saying what happened and what to do."""
    where = f"{repo}@{revision or 'main'}"
    cache = cache_dir or constants.HF_HUB_CACHE
    cause = error.__cause__ or error.__context__
    # A "not cached" error caused by a failed transfer: the Hub was tried, so offline is not why.
    offline = isinstance(error, OfflineModeIsEnabled) or isinstance(cause, OfflineModeIsEnabled)
    offline = offline or (_is_offline() and cause is None)
    # Subclasses first: GatedRepoError is a RepositoryNotFoundError, both are HfHubHTTPError.
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)) and offline:
        return (
            f"HF_HUB_OFFLINE is set and {filename} from {where} is not in the Hugging Face cache ({cache}); "
            f"unset HF_HUB_OFFLINE to download it, or {_LOCAL_HINT}."
        )
    if isinstance(error, LocalEntryNotFoundError):
        return (
            f"Could not reach the Hugging Face Hub ({constants.ENDPOINT}) to download {filename} from {repo}, "
            f"and it is not in the cache ({cache}); check the network, or pass --checkpoint and --vocab "
            f"(or {_LOCAL_HINT}), set HF_HUB_OFFLINE=1 with a filled cache, or try --demo (a tiny random model)."
        )
    if isinstance(error, GatedRepoError):
        return (
            f"{repo} is a gated repository and this machine has no access to it; accept its terms on "
            f"huggingface.co and set HF_TOKEN to a token of that account, or {_LOCAL_HINT}."
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"Repository {repo} was not found on the Hugging Face Hub or is private; check {ENV_REPO}, "
            f"set HF_TOKEN to a token that can read it, or {_LOCAL_HINT}."
        )
    if isinstance(error, RevisionNotFoundError):
        return (
            f"Revision {revision or 'main'!r} does not exist in {repo}; "
            f"set {ENV_REVISION} (or --revision) to an existing branch, tag or commit."
        )
    if isinstance(error, EntryNotFoundError):
        return (
            f"{filename} does not exist in {where}; check {ENV_REPO} and {ENV_REVISION}, "
            f"or set {local_var} to a local file."
        )
    if isinstance(error, HFValidationError):
        return (
            f"{repo!r} (revision {revision or 'main'!r}) is not a valid Hub repository id or revision ({error}); "
            f"set {ENV_REPO} to 'owner/name'."
        )
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return (
                f"The Hugging Face Hub refused access to {repo} (HTTP {status}); "
                f"set HF_TOKEN to a valid token that can read it, or {_LOCAL_HINT}."
            )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (
            f"The Hugging Face Hub answered with an error while downloading {filename} from {repo} "
            f"({first_line}); try again later, or {_LOCAL_HINT}."
        )
    if isinstance(error, OSError):
        return (
            f"Could not store {filename} in the Hugging Face cache ({cache}): {error}; "
            "free disk space or point HF_HOME / HF_HUB_CACHE at a writable folder."
        )
    return f"Downloading {filename} from {repo} failed ({type(error).__name__}: {error}); try again, or {_LOCAL_HINT}."


def _download(filename: str, repo: str, revision: str | None, cache_dir: str | None) -> tuple[Path, str]:
    """(path, how it was obtained) of one file through the HF cache. Raises the library's own
    exceptions, so that callers can tell "absent from the repo" from real failures."""
    try:
        if not _is_offline() and not isinstance(try_to_load_from_cache(repo, filename, cache_dir, revision), str):
            _probe(filename, repo, revision)
        path = hf_hub_download(repo_id=repo, filename=filename, revision=revision, cache_dir=cache_dir)
        return Path(path), "Hub cache"
    except Exception as error:
        disk = isinstance(error, OSError) and not isinstance(error, (ConnectionError, TimeoutError))
        if disk or isinstance(error, _HUB_ANSWERS):
            raise
        # The library falls back to the cache when its metadata request fails, but a connection
        # lost during the download surfaces here: a cached copy still lets the user work. Not
        # cached: the library's LocalEntryNotFoundError, whose context (this failure) tells
        # ``_explain`` that the Hub was tried.
        path = hf_hub_download(
            repo_id=repo, filename=filename, revision=revision, cache_dir=cache_dir, local_files_only=True
        )
        logger.warning("Hub unreachable (%s); using the cached copy of %s", type(error).__name__, filename)
        return Path(path), "cached copy, Hub unreachable"


def hub_file(filename: str, repo: str, revision: str | None = None) -> Path:
    """Any other file of a Hub repo (tag relation files), through the HF cache; ``ResolutionError`` if absent."""
    try:
        return _download(filename, repo, revision, None)[0]
    except _HUB_ANSWERS as error:
        raise ResolutionError(f"{repo} has no file {filename} ({type(error).__name__}).") from None


def _probe(filename: str, repo: str, revision: str | None) -> None:
    """One metadata request without retries, for when nothing is cached (``hf_hub_download`` would
    retry an unreachable Hub for about half a minute, logging every attempt): raises what the
    Hub answered, or ``LocalEntryNotFoundError`` at once when it cannot be reached."""
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), retry_on_errors=False)
    except _HUB_ANSWERS:
        raise
    except Exception as error:
        raise LocalEntryNotFoundError(f"{filename} is not cached and the Hub is unreachable") from error


def _resolve_hub_file(
    filenames: tuple[str, ...], what: str, repo: str, revision: str | None, local_var: str, cache_dir: str | None
) -> Path:
    where = f"{repo}@{revision or 'main'}"
    first_error: BaseException | None = None
    for filename in filenames:
        try:
            path, how = _download(filename, repo, revision, cache_dir)
        except EntryNotFoundError as error:
            # Absent from the repo (remote) or from the cache while offline: the next name may exist.
            if first_error is None or (
                isinstance(error, LocalEntryNotFoundError) and not isinstance(first_error, LocalEntryNotFoundError)
            ):
                first_error = error  # "could not look" explains more than "not there"
            logger.debug("%s not available from %s (%s)", filename, where, type(error).__name__)
            continue
        except (HfHubHTTPError, HFValidationError, OSError) as error:
            raise ResolutionError(_explain(error, filename, repo, revision, local_var, cache_dir)) from error
        logger.info("%s: %s from %s (%s) -> %s", what, filename, where, how, path)
        return path
    assert first_error is not None  # filenames is never empty
    if len(filenames) > 1 and not isinstance(first_error, LocalEntryNotFoundError):
        names = " nor ".join(filenames)
        raise ResolutionError(
            f"Neither {names} exists in {where}; check {ENV_REPO} and {ENV_REVISION}, "
            f"or set {local_var} to a local file."
        ) from first_error
    message = _explain(first_error, " or ".join(filenames), repo, revision, local_var, cache_dir)
    raise ResolutionError(message) from first_error


def resolve_model_files(
    checkpoint: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    repo: str | None = None,
    revision: str | None = None,
    env: Mapping[str, str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelFiles:
    """Find the checkpoint and vocabulary, downloading from the Hub what is not given locally.
    ``cache_dir`` overrides the HF cache folder (default: the library's, from HF_HOME /
    HF_HUB_CACHE as read when huggingface_hub was imported). Raises :class:`ResolutionError`."""
    env = os.environ if env is None else env
    checkpoint_value, checkpoint_origin = _pick(checkpoint, env, ENV_CHECKPOINT)
    vocab_value, vocab_origin = _pick(vocab, env, ENV_VOCAB)
    repo_id = repo or env.get(ENV_REPO) or DEFAULT_REPO
    rev = revision or env.get(ENV_REVISION) or None
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    hub_source = f"{repo_id}@{rev or 'main'}"

    # Local paths are checked first so a typo is reported before any download starts.
    checkpoint_path = _local_file(checkpoint_value, "checkpoint", checkpoint_origin) if checkpoint_value else None
    vocab_path = _local_file(vocab_value, "vocabulary", vocab_origin) if vocab_value else None
    if checkpoint_path is None:
        checkpoint_path = _resolve_hub_file((CHECKPOINT_FILENAME,), "checkpoint", repo_id, rev, ENV_CHECKPOINT, cache)
    if vocab_path is None:
        vocab_path = _resolve_hub_file(VOCAB_FILENAMES, "vocabulary", repo_id, rev, ENV_VOCAB, cache)

    if checkpoint_value and vocab_value:
        source = "local files"
    elif checkpoint_value:
        source = f"{hub_source} (checkpoint from a local file)"
    elif vocab_value:
        source = f"{hub_source} (vocabulary from a local file)"
    else:
        source = hub_source
    return ModelFiles(checkpoint=checkpoint_path, vocab=vocab_path, source=source)


@contextmanager
def model_files(args: Any) -> Iterator[tuple[Path, Path]]:
    """(checkpoint, vocab) as the model flags name them (``--checkpoint``, ``--vocab``, ``--repo``,
    ``--revision``, ``--demo``); the demo model's lie in a folder removed on leaving the block."""
    if args.demo:
        from tagger.engine.synthetic import demo_files  # torch, for the demo only

        with demo_files() as demo:
            yield demo
        return
    files = resolve_model_files(args.checkpoint, args.vocab, repo=args.repo, revision=args.revision)
    yield files.checkpoint, files.vocab
