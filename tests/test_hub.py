"""Tests for tagger.engine.hub: local paths, HF cache hits, vocabulary fallback, revisions and errors.

No test touches the network: HF_HUB_OFFLINE is forced on (in the environment and in the
library's import-time constants), sockets refuse to connect, and Hub behaviour is reproduced
with a fake cache on disk or a stand-in for ``hf_hub_download``.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub import hf_hub_download as real_hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from support import assert_sentence

from tagger.engine import hub
from tagger.engine.hub import (
    CHECKPOINT_FILENAME,
    DEFAULT_REPO,
    VOCAB_FILENAMES,
    ModelFiles,
    ResolutionError,
    resolve_model_files,
)

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
CATEGORIES, PLAIN = VOCAB_FILENAMES


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode and a private, empty HF cache for every test; returns the cache folder."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name in ("TAGGER_CHECKPOINT", "TAGGER_VOCAB", "TAGGER_REPO", "TAGGER_REVISION"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub reads these once at import time, so the env vars above are not enough.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def fill_cache(
    cache: Path, files: dict[str, bytes], commit: str = COMMIT_A, ref: str | None = "main", repo: str = DEFAULT_REPO
) -> Path:
    """Write the HF cache layout (models--org--name/snapshots/<commit>/, refs/<ref>); returns the snapshot."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    if ref is not None:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no newline: the library reads it verbatim
    return snapshot


def local_pair(tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = tmp_path / "local.safetensors"
    vocab = tmp_path / "local_vocab.json"
    checkpoint.write_bytes(b"weights")
    vocab.write_text('{"idx2tag": []}')
    return checkpoint, vocab


def forbid_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("hf_hub_download must not be called for local files")

    monkeypatch.setattr(hub, "hf_hub_download", fail)


def http_error(cls: type[HfHubHTTPError], status: int, message: str = "error") -> HfHubHTTPError:
    request = httpx2.Request("HEAD", "https://huggingface.co/x/y/resolve/main/f")
    return cls(message, response=httpx2.Response(status, request=request))


# --- local files -------------------------------------------------------------------------


def test_local_files_from_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hub(monkeypatch)
    checkpoint, vocab = local_pair(tmp_path)
    files = resolve_model_files(checkpoint=checkpoint, vocab=str(vocab), env={})
    assert files == ModelFiles(checkpoint=checkpoint, vocab=vocab, source="local files")


def test_local_files_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hub(monkeypatch)
    checkpoint, vocab = local_pair(tmp_path)
    monkeypatch.setenv("TAGGER_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("TAGGER_VOCAB", str(vocab))
    files = resolve_model_files()  # env defaults to os.environ
    assert (files.checkpoint, files.vocab, files.source) == (checkpoint, vocab, "local files")


def test_arguments_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_hub(monkeypatch)
    checkpoint, vocab = local_pair(tmp_path)
    env = {"TAGGER_CHECKPOINT": str(tmp_path / "nope"), "TAGGER_VOCAB": str(tmp_path / "nope2")}
    files = resolve_model_files(checkpoint=checkpoint, vocab=vocab, env=env)
    assert (files.checkpoint, files.vocab) == (checkpoint, vocab)


def test_missing_local_checkpoint_argument_names_path_and_flag(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(checkpoint=missing, env={})
    assert str(missing) in str(info.value)
    assert "--checkpoint" in str(info.value)
    assert_sentence(str(info.value), end=(".",))


def test_missing_local_vocab_env_names_path_and_variable(tmp_path: Path) -> None:
    checkpoint, _ = local_pair(tmp_path)
    missing = tmp_path / "missing.json"
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(env={"TAGGER_CHECKPOINT": str(checkpoint), "TAGGER_VOCAB": str(missing)})
    assert str(missing) in str(info.value)
    assert "TAGGER_VOCAB" in str(info.value)


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ResolutionError, match="TAGGER_CHECKPOINT"):
        resolve_model_files(env={"TAGGER_CHECKPOINT": str(tmp_path)})


# --- Hub cache (offline) -----------------------------------------------------------------


def test_cache_hit_for_both_files_offline(offline: Path, caplog: pytest.LogCaptureFixture) -> None:
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", CATEGORIES: b"{}", PLAIN: b"{}"})
    with caplog.at_level(logging.INFO, logger="tagger"):
        files = resolve_model_files(env={}, cache_dir=offline)
    assert files.checkpoint == snapshot / CHECKPOINT_FILENAME
    assert files.vocab == snapshot / CATEGORIES
    assert files.source == f"{DEFAULT_REPO}@main"
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(logged) == 2
    assert str(files.checkpoint) in logged[0] and DEFAULT_REPO in logged[0]
    assert str(files.vocab) in logged[1]


def test_default_cache_dir_comes_from_the_library(offline: Path) -> None:
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", PLAIN: b"{}"})
    files = resolve_model_files(env={})  # no cache_dir: huggingface_hub's HF_HUB_CACHE
    assert files.checkpoint == snapshot / CHECKPOINT_FILENAME


def test_vocab_falls_back_to_plain_file_when_categories_not_cached(offline: Path) -> None:
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", PLAIN: b"{}"})
    files = resolve_model_files(env={}, cache_dir=offline)
    assert files.vocab == snapshot / PLAIN


def test_repo_from_env(offline: Path) -> None:
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", PLAIN: b"{}"}, repo="lodestones/taggerine")
    files = resolve_model_files(env={"TAGGER_REPO": "lodestones/taggerine"}, cache_dir=offline)
    assert files.checkpoint == snapshot / CHECKPOINT_FILENAME
    assert files.source == "lodestones/taggerine@main"


@pytest.mark.parametrize("how", ["argument", "env", "commit"])
def test_revision_pinning_picks_the_right_snapshot(offline: Path, how: str) -> None:
    fill_cache(offline, {CHECKPOINT_FILENAME: b"main", CATEGORIES: b"{}"}, commit=COMMIT_A, ref="main")
    pinned = fill_cache(offline, {CHECKPOINT_FILENAME: b"v2", CATEGORIES: b"{}"}, commit=COMMIT_B, ref="v2")
    if how == "argument":
        files = resolve_model_files(revision="v2", env={}, cache_dir=offline)
    elif how == "env":
        files = resolve_model_files(env={"TAGGER_REVISION": "v2"}, cache_dir=offline)
    else:
        files = resolve_model_files(revision=COMMIT_B, env={}, cache_dir=offline)
    assert files.checkpoint == pinned / CHECKPOINT_FILENAME
    assert files.checkpoint.read_bytes() == b"v2"
    assert files.vocab == pinned / CATEGORIES
    assert files.source.endswith("@v2" if how != "commit" else f"@{COMMIT_B}")


def test_mixed_local_checkpoint_and_cached_vocab(offline: Path, tmp_path: Path) -> None:
    checkpoint, _ = local_pair(tmp_path)
    snapshot = fill_cache(offline, {CATEGORIES: b"{}"})
    files = resolve_model_files(checkpoint=checkpoint, env={}, cache_dir=offline)
    assert (files.checkpoint, files.vocab) == (checkpoint, snapshot / CATEGORIES)
    assert DEFAULT_REPO in files.source and "local" in files.source


def test_offline_with_empty_cache_says_what_to_do(offline: Path) -> None:
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(env={}, cache_dir=offline)
    message = str(info.value)
    assert "TAGGER_CHECKPOINT" in message and "HF_HUB_OFFLINE" in message
    assert CHECKPOINT_FILENAME in message
    assert_sentence(message, end=(".",))


def test_offline_vocab_missing_mentions_vocab_variable(offline: Path) -> None:
    fill_cache(offline, {CHECKPOINT_FILENAME: b"w"})
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(env={}, cache_dir=offline)
    assert "TAGGER_VOCAB" in str(info.value)
    assert PLAIN in str(info.value)


def test_offline_unknown_revision_is_named(offline: Path) -> None:
    fill_cache(offline, {CHECKPOINT_FILENAME: b"w", PLAIN: b"{}"})
    with pytest.raises(ResolutionError, match="@v9"):
        resolve_model_files(revision="v9", env={}, cache_dir=offline)


def test_invalid_repo_id(offline: Path) -> None:
    with pytest.raises(ResolutionError, match="TAGGER_REPO"):
        resolve_model_files(repo="not/a/valid/repo", env={}, cache_dir=offline)


# --- network failures and Hub errors (simulated hf_hub_download) --------------------------


@pytest.mark.parametrize("error", [httpx2.ConnectError("no route"), httpx2.ReadTimeout("slow"), ConnectionError()])
def test_network_error_falls_back_to_cached_file(
    offline: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", PLAIN: b"{}"})
    calls: list[tuple[str, bool]] = []

    def flaky(repo_id: str, filename: str, **kwargs: Any) -> str:
        calls.append((filename, kwargs.get("local_files_only", False)))
        if not kwargs.get("local_files_only", False):
            raise error
        return real_hf_hub_download(repo_id=repo_id, filename=filename, **kwargs)

    monkeypatch.setattr(hub, "hf_hub_download", flaky)
    with caplog.at_level(logging.WARNING, logger="tagger"):
        files = resolve_model_files(env={}, cache_dir=offline)
    assert files.checkpoint == snapshot / CHECKPOINT_FILENAME
    assert files.vocab == snapshot / PLAIN
    assert (CHECKPOINT_FILENAME, True) in calls and (PLAIN, True) in calls
    assert any("unreachable" in r.getMessage() for r in caplog.records)


def test_network_error_with_empty_cache_says_hub_unreachable(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(repo_id: str, filename: str, **kwargs: Any) -> str:
        if not kwargs.get("local_files_only", False):
            raise httpx2.ConnectError("no route")
        return real_hf_hub_download(repo_id=repo_id, filename=filename, **kwargs)

    monkeypatch.setattr(hub, "hf_hub_download", down)
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(env={}, cache_dir=offline)
    message = str(info.value)
    assert message.startswith("Could not reach the Hugging Face Hub (")
    assert "to download tagger_proto.safetensors" in message
    for hint in ("TAGGER_CHECKPOINT", "TAGGER_VOCAB", "--checkpoint", "--vocab", "HF_HUB_OFFLINE=1", "--demo"):
        assert hint in message, hint
    assert_sentence(message, end=(".",))


def test_vocab_falls_back_when_categories_file_absent_from_repo(monkeypatch: pytest.MonkeyPatch, offline: Path) -> None:
    tried: list[str] = []

    def fake(repo_id: str, filename: str, **kwargs: Any) -> str:
        tried.append(filename)
        if filename == CATEGORIES:
            raise http_error(RemoteEntryNotFoundError, 404)
        path = offline / filename
        path.write_bytes(b"x")
        return str(path)

    monkeypatch.setattr(hub, "hf_hub_download", fake)
    files = resolve_model_files(env={}, cache_dir=offline)
    assert files.vocab == offline / PLAIN
    assert tried == [CHECKPOINT_FILENAME, CATEGORIES, PLAIN]


def test_no_vocab_file_in_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    checkpoint, _ = local_pair(tmp_path)

    def fake(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise http_error(RemoteEntryNotFoundError, 404)

    monkeypatch.setattr(hub, "hf_hub_download", fake)
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(checkpoint=checkpoint, env={})
    assert CATEGORIES in str(info.value) and PLAIN in str(info.value) and "TAGGER_VOCAB" in str(info.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (http_error(RepositoryNotFoundError, 404), "HF_TOKEN"),
        (http_error(GatedRepoError, 403), "HF_TOKEN"),
        (http_error(HfHubHTTPError, 401), "HF_TOKEN"),
        (http_error(RevisionNotFoundError, 404), "'v3'"),
        (http_error(HfHubHTTPError, 500, "500 Server Error"), "try again later"),
        (http_error(RemoteEntryNotFoundError, 404), "TAGGER_CHECKPOINT"),
    ],
)
def test_hub_errors_become_one_actionable_sentence(
    monkeypatch: pytest.MonkeyPatch, error: Exception, expected: str
) -> None:
    def fake(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(hub, "hf_hub_download", fake)
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(revision="v3", env={})
    assert expected in str(info.value)
    assert info.value.__cause__ is error
    assert_sentence(str(info.value), end=(".",))


def test_other_errors_on_first_vocab_name_are_reported_not_skipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checkpoint, _ = local_pair(tmp_path)
    tried: list[str] = []

    def fake(repo_id: str, filename: str, **kwargs: Any) -> str:
        tried.append(filename)
        raise http_error(GatedRepoError, 403)

    monkeypatch.setattr(hub, "hf_hub_download", fake)
    with pytest.raises(ResolutionError, match="HF_TOKEN"):
        resolve_model_files(checkpoint=checkpoint, env={})
    assert tried == [CATEGORIES]


class TransportTrouble(Exception):
    """A failure of an HTTP client the tagger has never heard of."""


def test_any_transfer_failure_falls_back_to_the_cache(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What counts as "the Hub is unreachable" does not depend on which HTTP library is loaded:
    anything but the Hub's own answers sends us to the cache."""
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", PLAIN: b"{}"})

    def flaky(repo_id: str, filename: str, **kwargs: Any) -> str:
        if not kwargs.get("local_files_only", False):
            raise TransportTrouble("connection reset")
        return real_hf_hub_download(repo_id=repo_id, filename=filename, **kwargs)

    monkeypatch.setattr(hub, "hf_hub_download", flaky)
    assert resolve_model_files(env={}, cache_dir=offline).checkpoint == snapshot / CHECKPOINT_FILENAME
    fill_cache(offline, {}, commit=COMMIT_B, ref="main")  # the cache now points at an empty snapshot
    with pytest.raises(ResolutionError, match="Could not reach the Hugging Face Hub"):
        resolve_model_files(env={}, cache_dir=offline)


def test_disk_errors_are_not_mistaken_for_the_network(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub, "hf_hub_download", full_disk)
    with pytest.raises(ResolutionError) as info:
        resolve_model_files(env={}, cache_dir=offline)
    assert "Could not store tagger_proto.safetensors" in str(info.value)
    assert_sentence(str(info.value), end=(".",))


def test_nothing_cached_asks_the_hub_once_without_retries(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an empty cache, huggingface_hub would retry an unreachable Hub for half a minute: one
    metadata request without retries decides, and the download is not attempted."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    probes: list[tuple[str, bool]] = []

    def metadata(url: str, **kwargs: Any) -> None:
        probes.append((url, kwargs.get("retry_on_errors", True)))
        raise httpx2.ConnectError("connection refused")

    def download(**kwargs: Any) -> str:
        raise AssertionError("hf_hub_download must not run once the Hub is known to be unreachable")

    monkeypatch.setattr(hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(hub, "hf_hub_download", download)
    with pytest.raises(ResolutionError, match="Could not reach the Hugging Face Hub"):
        resolve_model_files(env={}, cache_dir=offline)
    assert len(probes) == 1 and probes[0][0].endswith(CHECKPOINT_FILENAME) and probes[0][1] is False


def test_a_cached_file_skips_the_probe(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached copy is what the library falls back to without retrying: no extra request then."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot = fill_cache(offline, {CHECKPOINT_FILENAME: b"w", CATEGORIES: b"{}"})
    probes: list[str] = []

    def metadata(url: str, **kwargs: Any) -> None:
        probes.append(url)

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        return str(snapshot / filename)

    monkeypatch.setattr(hub, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(hub, "hf_hub_download", download)
    files = resolve_model_files(env={}, cache_dir=offline)
    assert (files.checkpoint, files.vocab) == (snapshot / CHECKPOINT_FILENAME, snapshot / CATEGORIES)
    assert probes == []
