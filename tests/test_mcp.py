"""The app as an MCP server (Gradio's, at ``/gradio_api/mcp/``), end to end on loopback with the
``mcp`` Python client over streamable HTTP: the tools are exactly the public endpoints, each
described down to every parameter, and ``tag`` gives the same tags as ``/tag``.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from app_server import RunningApp
from gradio_client import Client, handle_file
from support import image_bytes

from tagger.tags.options import OPTION_FIELDS, option_info

mcp = pytest.importorskip("mcp", reason="the MCP server needs the mcp package (requirements.txt)")
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

CAT = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"
TOOLS = {"tag", "tag_batch", "pca", "heatmap", "similarity", "similarity_batch"}
T = TypeVar("T")


def with_session(app: RunningApp, work: Callable[[ClientSession], Awaitable[T]]) -> T:
    """Run ``work`` in an initialised MCP session with the app."""

    async def main() -> T:
        async with (
            streamable_http_client(app.url + "gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(main())


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def tools(app: RunningApp) -> dict[str, Any]:
    async def list_tools(session: ClientSession) -> dict[str, Any]:
        return {tool.name: tool for tool in (await session.list_tools()).tools}

    return with_session(app, list_tools)


def test_the_tools_are_the_public_endpoints(app: RunningApp, tools: dict[str, Any]) -> None:
    assert set(tools) == TOOLS
    private = {fn.api_name for fn in app.demo.fns.values() if fn.api_visibility == "private"}
    ui_events = {"tag_image", "more_scores", "heatmap_for_bar", "on_run", "on_load"}
    assert ui_events <= private  # UI events exist, and are no tools
    schema = httpx.get(app.url + "gradio_api/mcp/schema", timeout=30).json()
    assert {tool["name"] for tool in schema} == TOOLS


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_tool_and_parameter_is_described(tools: dict[str, Any], name: str) -> None:
    tool = tools[name]
    assert len(tool.description) > 60, tool.description
    assert "Returns:" in tool.description
    properties = tool.inputSchema["properties"]
    assert properties
    for parameter, schema in properties.items():
        assert len(schema.get("description", "")) > 10, (name, parameter)


def test_option_descriptions_are_the_declared_help(tools: dict[str, Any]) -> None:
    for name in ("tag", "tag_batch"):
        properties = tools[name].inputSchema["properties"]
        for field in OPTION_FIELDS:
            assert properties[field.name]["description"] == option_info(field).help, (name, field.name)
    image = tools["tag"].inputSchema["properties"]["image"]
    assert image["type"] == "string" and "url" in image["format"]  # agents send a URL or a data: URL
    assert tools["tag"].inputSchema["required"] == ["image"]


def test_tag_tool_gives_the_same_tags_as_the_endpoint(app: RunningApp, client: Client) -> None:
    async def call(session: ClientSession) -> Any:
        return await session.call_tool("tag", {"image": data_url(CAT), "threshold": 0.4, "order": "category"})

    result = with_session(app, call)
    assert not result.isError, result.content
    (content,) = result.content
    answer = ast.literal_eval(content.text)  # Gradio sends the JSON result as Python's repr
    expected = client.predict(handle_file(str(CAT)), threshold=0.4, order="category", api_name="/tag")
    assert answer == expected
    assert answer["count"] > 0


def test_urls_sent_to_a_tool_go_through_the_guarded_fetcher(app: RunningApp) -> None:
    """A URL is fetched by the app's fetcher, which refuses internal addresses (here: loopback)."""

    async def call(session: ClientSession) -> Any:
        return await session.call_tool("tag", {"image": app.url + "gradio_api/file=examples/cat.jpg"})

    result = with_session(app, call)
    assert result.isError
    assert "Refused to download" in result.content[0].text and "loopback" in result.content[0].text


def test_heatmap_tool_returns_the_images(app: RunningApp) -> None:
    tag = app.context.vocab.tags[3]

    async def progress(*_: object) -> None:
        pass

    async def call(session: ClientSession) -> tuple[Any, Any]:
        arguments = {"image": data_url(CAT), "tag": tag}
        plain = await session.call_tool("heatmap", arguments)
        # A client that follows progress gets each result apart (Gradio's MCP server): the images inline.
        followed = await session.call_tool("heatmap", arguments, progress_callback=progress)
        return plain, followed

    plain, followed = with_session(app, call)
    assert not plain.isError and not followed.isError, (plain.content, followed.content)
    (text,) = plain.content  # every result in one text: the PNGs' addresses and the JSON
    urls = re.findall(r"'url': '(http[^']+/(?:overlay|heatmap)\.png)'", text.text)
    assert len(urls) == 2 and f"'tag': '{tag}'" in text.text
    assert httpx.get(urls[0], timeout=30).content.startswith(b"\x89PNG")
    images = [c for c in followed.content if c.type == "image"]
    assert len(images) == 2 and all(c.mimeType == "image/png" for c in images)
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG")


def test_tag_batch_tool_takes_a_list_of_files(app: RunningApp) -> None:
    async def call(session: ClientSession) -> Any:
        return await session.call_tool("tag_batch", {"files": [data_url(CAT), data_url(CAT)]})

    result = with_session(app, call)
    assert not result.isError, result.content
    text = " ".join(c.text for c in result.content if c.type == "text")
    assert "2 images" in text or "2 of 2" in text, text


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "Could not read"),
        ("data:image/png;base64,***", "is not valid base64"),
        ("/etc/passwd", "as an http(s) URL or a base64 data: URL"),
    ],
)
def test_tool_errors_are_sentences(app: RunningApp, image: str, expected: str) -> None:
    """A failed call answers the app's sentence: never gradio_client's text, the loopback URL
    or a server path."""

    async def call(session: ClientSession) -> Any:
        return await session.call_tool("tag", {"image": image})

    result = with_session(app, call)
    assert result.isError
    text = result.content[0].text
    assert expected in text, text
    assert "127.0.0.1" not in text and "http://" not in text and "upstream" not in text.lower()


def test_file_payloads_are_refused(app: RunningApp) -> None:
    """A file payload dict would make Gradio's loopback client upload a file of the server's disk
    (refused by the tool's schema, and by the app if a schema let one through)."""

    async def call(session: ClientSession) -> Any:
        payload = {"path": str(CAT), "meta": {"_type": "gradio.FileData"}}
        return await session.call_tool("tag", {"image": payload})

    result = with_session(app, call)
    assert result.isError
    assert "is not of type 'string'" in result.content[0].text or "not as file objects" in result.content[0].text


def caller_session(app: RunningApp, source: str, work: Callable[[ClientSession], Awaitable[T]], **headers: str) -> T:
    """``work`` in an MCP session from the loopback address ``source`` (127.0.0.2, ...: other
    machines as far as the server can tell; only 127.0.0.1 is a trusted proxy for uvicorn)."""

    async def main() -> T:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        async with (
            httpx.AsyncClient(transport=transport, headers=headers, timeout=60, follow_redirects=True) as http,
            streamable_http_client(app.url + "gradio_api/mcp/", http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def budget_app() -> Any:
    from app_server import start_app

    from tagger.web.fairshare import FairShareLimits

    running = start_app(["--demo"], limits=FairShareLimits(upload_bytes_per_client=3 * 40_000, proxy_hops=0))
    yield running
    running.close()


def cache_files() -> set[Path]:
    from gradio.utils import get_upload_folder

    return {p for p in Path(get_upload_folder()).rglob("*") if p.is_file()}


def test_two_callers_have_budgets_of_their_own(budget_app: RunningApp) -> None:
    """MCP data: images count for their caller's upload budget (not for 127.0.0.1, where
    Gradio's MCP client runs): one caller spending its budget leaves the other's; an
    X-Forwarded-For a caller chooses does not make it someone else off a Space; and no call,
    answered or refused, leaves a file in the cache."""
    image = "data:image/png;base64," + base64.b64encode(image_bytes(100, 100, seed=1)).decode()
    assert 30_000 < len(base64.b64decode(image.partition(",")[2])) < 40_000

    async def three_calls(session: ClientSession) -> list[Any]:
        return [await session.call_tool("tag", {"image": image}) for _ in range(4)]

    before = cache_files()
    first = caller_session(budget_app, "127.0.0.2", three_calls)
    assert [r.isError for r in first] == [False, False, False, True]
    assert "Your address uploaded" in first[3].content[0].text and "the limit is" in first[3].content[0].text
    forged = [
        caller_session(budget_app, "127.0.0.2", three_calls, **{"X-Forwarded-For": f"198.51.100.{i}"})[0]
        for i in range(2)
    ]
    assert all(r.isError and "Your address uploaded" in r.content[0].text for r in forged)
    second = caller_session(budget_app, "127.0.0.3", three_calls)
    assert [r.isError for r in second] == [False, False, False, True]  # a budget of its own
    assert cache_files() == before
