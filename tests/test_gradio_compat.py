"""The installed Gradio still has every private name the app hooks into
(``tagger.web.gradio_compat.PRIVATE_NAMES``), and nothing outside that module reaches past
Gradio's public API. A Gradio upgrade that breaks a hook fails here with a sentence naming what
is gone and which feature needs it, instead of a feature quietly switching off."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import gradio
import gradio.queueing
import pytest

from tagger.web import gradio_compat
from tagger.web.gradio_compat import PRIVATE_NAMES, PrivateName, missing, sentence

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("entry", PRIVATE_NAMES, ids=lambda e: f"{e.module}.{e.name}")
def test_gradio_has_what_the_app_hooks_into(entry: PrivateName) -> None:
    problem = missing(entry)
    assert problem is None, sentence(entry, problem)


def test_a_missing_name_is_named_with_the_feature_that_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    push = next(e for e in PRIVATE_NAMES if e.name == "Queue.push")
    monkeypatch.delattr(gradio.queueing.Queue, "push")
    problem = missing(push)
    assert problem is not None
    assert sentence(push, problem) == (
        f"gradio {gradio.__version__} has no gradio.queueing.Queue.push: "
        "tagger.web.fairshare's per-client queue limits and round-robin order cannot hook in."
    )


def test_a_changed_signature_names_the_missing_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    async def push(self, body, request):  # a release without `username`
        return None

    monkeypatch.setattr(gradio.queueing.Queue, "push", push)
    entry = next(e for e in PRIVATE_NAMES if e.name == "Queue.push")
    assert missing(entry) == "has gradio.queueing.Queue.push, but without the parameter(s) username"


def test_missing_attributes_and_texts_are_found() -> None:
    gone = PrivateName("gradio.queueing", "Queue.no_such_attribute", "a feature")
    assert missing(gone) == "has no gradio.queueing.Queue.no_such_attribute"
    text = PrivateName("gradio.blocks", "no such phrase in Gradio's errors", "a feature", text=True)
    assert missing(text) == "no longer writes 'no such phrase in Gradio's errors' in gradio.blocks"
    assert missing(PrivateName("gradio.no_such_module", "thing", "a feature")) == "has no gradio.no_such_module.thing"


def test_every_hook_says_why_it_is_needed() -> None:
    functions = [
        v
        for v in vars(gradio_compat).values()
        if inspect.isfunction(v) and v.__module__ == gradio_compat.__name__ and not v.__name__.startswith("_")
    ]
    assert functions and [f.__name__ for f in functions if not f.__doc__] == []


# Only gradio_compat reaches past Gradio's public API: `import gradio as gr`, `from gradio import`
# (its top-level names), gradio.components (documented), gradio_client's top level and exceptions.
PRIVATE_USE = re.compile(
    r"^\s*(?:from gradio\.(?!components import)\S+ import|import gradio\.\S+"
    r"|from gradio_client\.(?!exceptions )\S+ import)"
    r"|\._(?:queue|data|api_info|files_to_close_on_error|prepare_tool_call_args|execute_tool_\w+)\b"
    r"|\b(?:temp_file_sets|keep_in_cache|mcp_server_obj|GRADIO_CACHE|temp_files|event_queue_per_concurrency_id)\b",
    re.MULTILINE,
)


def _sources(*, but: str = "") -> list[tuple[str, str]]:
    paths = sorted((ROOT / "tagger").rglob("*.py"))
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in paths if p.name != but]


def test_private_gradio_names_are_used_only_in_the_compat_module() -> None:
    found = [
        f"{path}: {m.group(0).strip()}"
        for path, text in _sources(but="gradio_compat.py")
        for m in PRIVATE_USE.finditer(text)
    ]
    assert not found, "Gradio internals outside tagger/web/gradio_compat.py: " + "; ".join(found)


def test_type_ignores_are_only_the_compat_modules() -> None:
    """Replacing Gradio's methods and classes is what mypy cannot type; nothing else needs an ignore."""
    found = [
        f"{path}:{n}"
        for path, text in _sources(but="gradio_compat.py")
        for n, line in enumerate(text.splitlines(), 1)
        if "type: ignore" in line
    ]
    assert not found, "type: ignore outside tagger/web/gradio_compat.py: " + ", ".join(found)


def test_gradio_is_pinned_to_the_spaces_sdk_version() -> None:
    """The Space runs README's sdk_version; a local install gets the same Gradio."""
    front_matter = (ROOT / "README.md").read_text(encoding="utf-8").split("---")[1]
    sdk_version = re.search(r"^sdk_version:\s*(\S+)$", front_matter, re.MULTILINE)
    pins = re.findall(r"^gradio\b.*$", (ROOT / "requirements.txt").read_text(encoding="utf-8"), re.MULTILINE)
    assert sdk_version is not None
    assert pins == [f"gradio=={sdk_version.group(1)}"]
