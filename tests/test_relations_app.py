"""The app started with ``TAGGER_IMPLICATIONS`` / ``TAGGER_ALIASES`` (an e621 CSV and a Danbooru
JSON file): ``/tag``, ``/tag_batch`` and the MCP ``tag`` tool take ``implied``, and the Tag tab
in a real browser shows, for each mode and without a server call, what ``/tag`` returns."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from app_server import RunningApp, start_app
from browser_support import CHROMIUM, DESKTOP, IMAGE, new_page, open_format, open_tagged, queue_calls, type_into
from gradio_client import Client, handle_file
from playwright.sync_api import Browser, expect

from tagger.engine.synthetic import demo_files
from tagger.engine.tagger import Tagger
from tagger.tags.options import TagOptions
from tagger.tags.selection import select_tags
from tagger.web.controls import UNTICKED_CATEGORIES, present_categories

OLD_NAME = "old cat name"


def ranked_demo_tags() -> list[str]:
    """The demo vocabulary's tags, best first for ``IMAGE`` (a standalone demo model: the app's)."""
    with demo_files() as (checkpoint, vocab):
        tagger = Tagger(checkpoint, vocab, device="cpu")
    scores = tagger.probabilities([IMAGE])[0]
    return [tagger.vocab.tags[i] for i in np.argsort(-scores, kind="stable")]


@pytest.fixture(scope="module")
def ranked() -> list[str]:
    return ranked_demo_tags()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ranked: list[str]) -> Iterator[RunningApp]:
    folder = tmp_path_factory.mktemp("relations")
    under = [t.replace(" ", "_") for t in ranked]
    implications = folder / "tag_implications-2024-01-01.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "antecedent_name", "consequent_name", "created_at", "status"])
    rows = [(under[0], under[1]), (under[1], under[2]), (under[0], under[-1]), (under[3], under[4])]
    for n, (a, c) in enumerate(rows, 1):
        writer.writerow([n, a, c, "2024-01-01", "active"])
    implications.write_text(buffer.getvalue())
    aliases = folder / "tag_aliases.json"
    aliases.write_text(
        json.dumps([{"antecedent_name": OLD_NAME.replace(" ", "_"), "consequent_name": under[5], "status": "active"}])
    )
    saved = {k: os.environ.get(k) for k in ("TAGGER_IMPLICATIONS", "TAGGER_ALIASES")}
    os.environ["TAGGER_IMPLICATIONS"] = str(implications)
    os.environ["TAGGER_ALIASES"] = str(aliases)
    try:
        running = start_app(["--demo"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield running
    running.close()


@pytest.fixture(scope="module")
def scores(app: RunningApp) -> np.ndarray:
    return app.context.tagger.probabilities([IMAGE])[0]


def expected(app: RunningApp, scores: np.ndarray, **values: object) -> dict:
    options = TagOptions.from_values(**values)
    tags = select_tags(scores, app.context.vocab, options.selection)
    return {"names": [t.tag for t in tags], "string": options.tag_string(tags, app.context.vocab)}


def test_the_app_loaded_the_relations(app: RunningApp, ranked: list[str]):
    relations = app.context.vocab.relations
    assert relations is not None and relations.report.implications_matched == 4
    assert relations.find(OLD_NAME) == app.context.vocab.find(ranked[5])


def test_tag_takes_implied_and_each_mode_is_the_engines(app: RunningApp, client: Client, scores, ranked):
    answers = {}
    for mode in ("keep", "remove", "add"):
        result = client.predict(handle_file(str(IMAGE)), implied=mode, floor=0.0, threshold=0.0, api_name="/tag")
        want = expected(app, scores, implied=mode, floor=0.0, threshold=0.0)
        assert [t["tag"] for t in result["tags"]] == want["names"]
        assert result["tag_string"] == want["string"]
        answers[mode] = want["names"]
    assert ranked[1] not in answers["remove"] and ranked[0] in answers["remove"]  # implied by ranked[0]
    add = {
        t["tag"]: t["score"] for t in client.predict(handle_file(str(IMAGE)), implied="add", api_name="/tag")["tags"]
    }
    assert ranked[-1] in add and add[ranked[-1]] == add[ranked[0]]  # brought along by the best tag


def test_aliases_rewrite_exclude_in_the_api(client: Client, ranked):
    result = client.predict(handle_file(str(IMAGE)), exclude=OLD_NAME, floor=0.0, threshold=0.0, api_name="/tag")
    assert ranked[5] not in [t["tag"] for t in result["tags"]]


def test_tag_batch_takes_implied(client: Client, tmp_path: Path, ranked):
    shutil.copy(IMAGE, tmp_path / "image.png")
    table = client.predict(
        [handle_file(str(tmp_path / "image.png"))], implied="remove", floor=0.0, threshold=0.0, api_name="/tag_batch"
    )[0]
    shown = table["data"][0][3]
    assert ranked[0] in shown and ranked[1] not in shown.split(", ")[:8]


def test_the_mcp_tag_tool_takes_implied(app: RunningApp, client: Client):
    pytest.importorskip("mcp")
    import ast
    import asyncio
    import base64

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    image = "data:image/png;base64," + base64.b64encode(IMAGE.read_bytes()).decode()

    async def main():
        async with (
            streamable_http_client(app.url + "gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool("tag", {"image": image, "implied": "remove", "threshold": 0.0})

    result = asyncio.run(main())
    assert not result.isError, result.content
    answer = ast.literal_eval(result.content[0].text)
    assert answer == client.predict(handle_file(str(IMAGE)), implied="remove", threshold=0.0, api_name="/tag")


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")
def test_the_page_follows_implied_without_the_server(app: RunningApp, browser: Browser, scores):
    page = new_page(browser, DESKTOP)
    try:
        open_tagged(page, app)
        calls = queue_calls(page)
        # The page opens with the categories it ticks by default (contributor and unassigned unticked).
        categories = [c.name for c in present_categories(app.context.vocab) if c.name not in UNTICKED_CATEGORIES]
        page.locator("#threshold input[type=number]").fill("0")
        page.locator("#threshold input[type=number]").press("Enter")
        strings = {}
        for label, mode in (("Remove implied", "remove"), ("Add implied", "add"), ("Keep", "keep")):
            page.get_by_label(label, exact=True).check()
            want = expected(app, scores, implied=mode, threshold=0.0, categories=categories)["string"]
            expect(page.locator("#tag-string textarea")).to_have_value(want)
            strings[mode] = want
        assert len(set(strings.values())) == 3  # each mode changed the page's tags
        assert not calls, f"a mode change went to the server: {calls}"
        assert not page.errors  # type: ignore[attr-defined]
    finally:
        page.context.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"browser tests need Debian's chromium at {CHROMIUM}")
def test_a_malformed_wildcard_gets_its_sentence_under_the_field(app: RunningApp, browser: Browser):
    from tagger.errors import SelectionError

    with pytest.raises(SelectionError) as python:
        TagOptions(exclude="*")
    page = new_page(browser, DESKTOP)
    try:
        open_tagged(page, app)
        before = page.locator("#tag-string textarea").input_value()
        open_format(page)
        type_into(page, "exclude", "*")
        note = page.locator("#exclude .tv-field-error")
        expect(note).to_have_text(str(python.value))
        assert page.locator("#tag-string textarea").input_value() == before  # the last good tags stay
        type_into(page, "exclude", "*censor*, by *")
        expect(note).to_have_count(0)
    finally:
        page.context.close()
