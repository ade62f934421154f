"""The resolution per request (``max_size``): snapped to 16, bounded by the server's cap, the
server's default when left out, on every endpoint and MCP tool, and what the model sees."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import pytest
from app_server import RunningApp, start_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from support import write_zip

from tagger.engine.resolution import default_size, size_cap, snap_size
from tagger.errors import SelectionError

mcp = pytest.importorskip("mcp", reason="the MCP server needs the mcp package (requirements.txt)")
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

WIDE = (1600, 800)  # larger than any size asked for below, so the long edge the model sees is the size
# Tools that take an image inline (a data: URL); the batch tools take uploaded files only.
INLINE_TOOLS = ("tag", "pca", "heatmap", "similarity")
ENDPOINTS = ("/tag", "/tag_batch", "/pca", "/heatmap", "/similarity", "/similarity_batch")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 512), (512, 512), (500, 496), (505, 512), (1000.4, 1008), (10, 64), (-5, 64), (5000, 1024), (1024, 1024)],
)
def test_sizes_are_snapped_to_16_and_bounded(value: object, expected: int) -> None:
    assert snap_size(value, cap=1024, default=512) == expected


@pytest.mark.parametrize("value", ["big", True, float("nan"), float("inf"), [512]])
def test_a_size_that_is_not_a_number_is_a_sentence(value: object) -> None:
    with pytest.raises(SelectionError, match="max_size must be a number of pixels"):
        snap_size(value, cap=1024, default=512)


def test_defaults_by_device() -> None:
    assert (default_size("cpu"), default_size("cuda")) == (512, 1024)
    assert (size_cap("cpu"), size_cap("cuda")) == (1024, 2048)


@pytest.fixture(scope="module")
def app():
    running = start_app(["--demo", "--max-size", "640"])  # default on CPU: 512
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(app: RunningApp) -> Client:
    return Client(app.url, verbose=False)


@pytest.fixture
def seen(app: RunningApp, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The long edges of the images of each model call during the test."""
    runner = app.context.runner
    original = runner.call
    calls: list[tuple[int, ...]] = []

    def call(fn, pixels, *args):
        calls.append(tuple(max(p.shape[-2:]) for p in pixels))
        return original(fn, pixels, *args)

    monkeypatch.setattr(runner, "call", call)
    return calls


def smooth_png() -> bytes:
    """A wide image that compresses to a few kB (MCP requests carry it inline)."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize(WIDE).convert("RGB").save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("res") / "wide.png"
    path.write_bytes(smooth_png())
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = smooth_png()
    return write_zip(tmp_path_factory.mktemp("res") / "pairs.zip", {"a/x.png": data, "b/x.png": data})


def call(app: RunningApp, client: Client, name: str, wide: Path, pairs: Path, **kwargs: Any) -> Any:
    image = handle_file(str(wide))
    tag = app.context.vocab.tags[3]
    args: dict[str, tuple] = {
        "/tag": (image,),
        "/tag_batch": ([image],),
        "/pca": (image,),
        "/heatmap": (image, tag),
        "/similarity": (image, image),
        "/similarity_batch": (handle_file(str(pairs)),),
    }
    return client.predict(*args[name], api_name=name, **kwargs)


def test_max_size_is_the_last_parameter_with_the_servers_default(client: Client) -> None:
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ENDPOINTS:
        last = endpoints[name]["parameters"][-1]
        assert last["parameter_name"] == "max_size", name
        assert last["parameter_has_default"] and last["parameter_default"] == 512, name


@pytest.mark.parametrize("name", ENDPOINTS)
@pytest.mark.parametrize(("asked", "expected"), [(None, 512), (300, 304), (100_000, 640)])
def test_each_endpoint_runs_the_model_at_the_size_asked_for(
    app: RunningApp, client: Client, seen: list, wide: Path, pairs: Path, name: str, asked: int | None, expected: int
) -> None:
    kwargs = {} if asked is None else {"max_size": asked}
    call(app, client, name, wide, pairs, **kwargs)
    assert seen and all(edge == expected for edges in seen for edge in edges), seen


def test_positional_callers_keep_working(client: Client, seen: list, wide: Path) -> None:
    client.predict(handle_file(str(wide)), "#ff0000", "#00ff00", "#0000ff", 0.5, "nearest", api_name="/pca")
    assert seen == [(512,)]


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_bad_max_size_is_a_sentence_and_no_model_call(
    app: RunningApp, client: Client, seen: list, wide: Path, pairs: Path, name: str
) -> None:
    with pytest.raises(AppError, match="max_size must be"):
        call(app, client, name, wide, pairs, max_size="huge")
    assert seen == []


def test_the_header_says_the_default_size_and_the_cap(app: RunningApp) -> None:
    import httpx

    config = httpx.get(app.url + "config", timeout=30).json()
    texts = [str(c.get("props", {}).get("value", "")) for c in config["components"]]
    header = next(t for t in texts if "running on" in t)
    assert "**512 px** by default (up to 640)" in header


def _png_data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("tool", ["tag", "tag_batch", "pca", "heatmap", "similarity", "similarity_batch"])
def test_every_mcp_tool_takes_max_size(app: RunningApp, seen: list, wide: Path, pairs: Path, tool: str) -> None:
    image = _png_data_url(wide)
    arguments: dict[str, dict[str, Any]] = {
        "tag": {"image": image},
        "pca": {"image": image},
        "heatmap": {"image": image, "tag": app.context.vocab.tags[3]},
        "similarity": {"image_a": image, "image_b": image},
    }

    async def main() -> tuple[Any, Any]:
        async with (
            streamable_http_client(app.url + "gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = {t.name: t for t in (await session.list_tools()).tools}
            if tool not in INLINE_TOOLS:
                return listed[tool], None
            return listed[tool], await session.call_tool(tool, {**arguments[tool], "max_size": 256})

    listed, result = asyncio.run(main())
    schema = listed.inputSchema["properties"]["max_size"]
    assert schema.get("default") == 512
    assert "long edge" in schema["description"] and "cap of 640" in schema["description"]
    if tool in INLINE_TOOLS:
        assert not result.isError, result.content
        assert seen and all(edge == 256 for edges in seen for edge in edges), seen
    # The batch tools take uploaded files only (not data: URLs): their max_size is the
    # endpoint's, tested over HTTP above.
