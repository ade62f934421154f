"""Every use of a Gradio name outside its public API, and every Gradio method the app replaces:
the rest of ``tagger.web`` uses Gradio's public API and the functions here. ``PRIVATE_NAMES`` lists
what these rely on, each with the feature that needs it; ``tests/test_gradio_compat.py`` checks
every entry against the installed Gradio and names what a new release no longer has (``missing``)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr
import gradio.component_meta
import gradio.components.api_component
from gradio import route_utils
from gradio.context import get_blocks_context
from gradio.data_classes import ImageData as ImageData
from gradio.exceptions import InvalidPathError as InvalidPathError
from gradio.utils import NamedString as NamedString
from gradio.utils import get_function_description as get_function_description
from gradio.utils import get_upload_folder as get_upload_folder
from gradio_client.utils import QueueError as QueueError
from gradio_client.utils import json_schema_to_python_type as json_schema_to_python_type

ApiComponent = gradio.components.api_component.Api  # what gr.api makes for each parameter and result


@dataclass(frozen=True)
class PrivateName:
    """A function, class, method or attribute (of the class, or assigned to ``self`` in its source) of
    Gradio's or a package it brings, with the ``params`` it must take; or, ``text``, a phrase of its source."""

    module: str
    name: str  # "Class.attribute", "function", or the phrase
    needed_by: str
    params: tuple[str, ...] = ()
    text: bool = False


def _uses(needed_by: str, module: str, *names: str) -> tuple[PrivateName, ...]:
    """``names``: "Class.name", "function", "name(param, ...)" (parameters relied on), '"phrase"'."""
    parts = (name.rstrip(")").partition("(") for name in names)
    return tuple(
        PrivateName(module, name.strip('"'), needed_by, tuple(re.findall(r"\w+", params)), name.startswith('"'))
        for name, _, params in parts
    )


_QUEUE = "tagger.web.fairshare's per-client queue limits and round-robin order"
_UPLOADS = "tagger.web.fairshare's removal of the partial files of failed uploads"
_ERRORS = "tagger.web.server's readable errors for malformed API calls"
_URLS = "tagger.web.inputs's limits on URL downloads"
_SCHEMA = "tagger.web.endpoints's parameter schemas and descriptions"
_MCP = "tagger.web.mcp's file, caller and error handling of MCP tool calls"
_ANALYTICS = "tagger.web.server's queue without Gradio's per-event analytics"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    *_uses(_QUEUE, "gradio.blocks", "Blocks._queue", "BlockFunction.concurrency_id"),
    *_uses(_QUEUE, "gradio.queueing", "Queue.push(body, request, username)", "Queue.active_jobs", "Queue.blocks"),
    *_uses(_QUEUE, "gradio.queueing", "Queue.event_queue_per_concurrency_id", "EventQueue.queue"),
    *_uses(_QUEUE, "gradio.queueing", "Event.request", "Event.session_hash", "Event.concurrency_id"),
    *_uses(_QUEUE, "gradio.data_classes", "PredictBodyInternal.fn_index", "PredictBodyInternal.session_hash"),
    *_uses(_ANALYTICS, "gradio.queueing", "Queue.ANALYTICS_MAX_EVENTS", "Queue.ANAYLTICS_CACHE_FREQUENCY"),
    *_uses("tagger.web.fairshare's time budget per event", "gradio.blocks", "Blocks.fns", "BlockFunction.fn"),
    *_uses(_UPLOADS, "gradio.route_utils", "GradioMultiPartParser.parse"),
    *_uses(_UPLOADS, "gradio.route_utils", "GradioMultiPartParser._files_to_close_on_error"),
    *_uses(_ERRORS, "gradio.blocks", "Blocks.validate_inputs(block_fn, inputs)"),
    *_uses(_ERRORS, "gradio.blocks", "Blocks.preprocess_data(block_fn, inputs)"),
    *_uses(_ERRORS, "gradio.blocks", "Blocks.postprocess_data", "BlockFunction.inputs", '"component at index"'),
    *_uses(_ERRORS, "gradio.exceptions", "InvalidPathError"),
    *_uses("tagger.web.tempfiles's cache sweeps", "gradio.blocks", "Blocks.temp_file_sets", "Block.keep_in_cache"),
    *_uses(_URLS, "gradio.components.base", "Component.move_resource_to_block_cache(url_or_file_path)"),
    *_uses(_URLS, "gradio.components.base", "Component.async_move_resource_to_block_cache(url_or_file_path)"),
    *_uses(_URLS, "gradio.blocks", "Block.temp_files"),
    *_uses("tagger.web.inputs's SafeFile (no empty file per request)", "gradio.utils", "NamedString"),
    *_uses("tagger.web.inputs (no .pyi files in the sources)", "gradio.component_meta", "create_or_modify_pyi"),
    *_uses(_URLS + " in gr.api endpoints", "gradio.components.api_component", "Api"),
    *_uses(_SCHEMA, "gradio.components.api_component", "Api._api_info"),
    *_uses(_SCHEMA, "gradio.context", "get_blocks_context"),
    *_uses(_SCHEMA, "gradio.blocks", "BlocksConfig.blocks"),
    *_uses(_SCHEMA, "gradio.utils", "get_function_description", "get_upload_folder"),
    *_uses(_SCHEMA, "gradio.data_classes", "ImageData"),
    *_uses(_SCHEMA, "gradio_client.utils", "json_schema_to_python_type"),
    *_uses(_MCP, "gradio.blocks", "Blocks.mcp_server_obj"),
    *_uses(_MCP, "gradio.mcp", "GradioMCPServer._prepare_tool_call_args(name, arguments)"),
    *_uses(_MCP, "gradio.mcp", "GradioMCPServer._execute_tool_without_progress", "GradioMCPServer.mcp_server"),
    *_uses(_MCP, "gradio.mcp", "GradioMCPServer._execute_tool_with_progress", "GradioMCPServer.tool_to_endpoint"),
    *_uses(_MCP, "gradio.mcp", "GradioMCPServer.get_block_fn_from_endpoint_name"),
    *_uses(_MCP, "mcp.server.lowlevel.server", "Server.request_context"),
    *_uses(_MCP, "gradio_client.utils", "QueueError"),
)


def missing(entry: PrivateName) -> str | None:
    """None if the installed Gradio has ``entry`` as the app uses it, else what it lacks."""
    where = f"{entry.module}.{entry.name}"
    try:
        module = importlib.import_module(entry.module)
        if entry.text:
            written = entry.name in inspect.getsource(module)
            return None if written else f"no longer writes '{entry.name}' in {entry.module}"
        *owners, attribute = entry.name.split(".")
        owner: Any = functools.reduce(getattr, owners, module)
    except (ImportError, AttributeError, OSError, TypeError):
        return f"has no {where}"
    found = getattr(owner, attribute, None)
    fields = getattr(owner, "model_fields", {})  # pydantic
    classes = inspect.getmro(owner)[:-1] if inspect.isclass(owner) else ()
    if found is None and attribute not in fields and not any(f"self.{attribute}" in _source(c) for c in classes):
        return f"has no {where}"
    absent = [p for p in entry.params if found is None or p not in inspect.signature(found).parameters]
    return f"has {where}, but without the parameter(s) {', '.join(absent)}" if absent else None


def sentence(entry: PrivateName, problem: str) -> str:
    """``gradio 7.0 has no gradio.queueing.Queue.push: <the feature> cannot hook in.``"""
    return f"gradio {gr.__version__} {problem}: {entry.needed_by} cannot hook in."


def _source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


# -- The queue (tagger.web.fairshare) ---------------------------------------------------------
def app_queue(demo: gr.Blocks) -> Any:
    """The app's event queue (made by ``demo.queue()``): per-client limits hook into it."""
    return demo._queue


def skip_event_analytics(queue: Any) -> None:
    """Gradio's queue rebuilds a pandas summary of up to 10,000 event records after each event for
    its ``/monitoring`` dashboard, even with it off, in worker threads that leave native memory behind
    (the README's abuse soak); this app serves no dashboard: one record, never a summary."""
    queue.ANALYTICS_MAX_EVENTS = 1
    queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize  # Gradio's spelling


def hook_queue_push(
    queue: Any, before: Callable[[Any, str | None, str | None], None], after: Callable[[], None]
) -> None:
    """``before(request, session, concurrency group)`` before ``Queue.push`` (it refuses by raising),
    ``after()`` once queued: Gradio has no public hook for admission to its queue."""
    push = queue.push

    async def push_with_hooks(body: Any, request: Any, username: str | None) -> Any:
        group = getattr(getattr(queue.blocks, "fns", {}).get(body.fn_index), "concurrency_id", None)
        before(request, body.session_hash, group)
        result = await push(body=body, request=request, username=username)
        after()
        return result

    queue.push = push_with_hooks


def waiting_events(queue: Any) -> dict[str, list[Any]]:
    """The events waiting in ``queue`` by concurrency group, as lists that may be reordered in place."""
    return {group: event_queue.queue for group, event_queue in queue.event_queue_per_concurrency_id.items()}


def running_events(queue: Any) -> list[Any]:
    """The events ``queue`` is running now."""
    return [event for job in queue.active_jobs if job for event in job]


class EventOrigin(NamedTuple):
    scope: dict[str, Any]  # of the request that queued the event
    session: str | None
    group: str | None  # the concurrency group


def event_origin(event: Any) -> EventOrigin:
    """Where a queued event comes from and which group it waits in."""
    scope = getattr(getattr(event, "request", None), "scope", None) or {}
    return EventOrigin(scope, event.session_hash, event.concurrency_id)


def wrap_event_functions(demo: gr.Blocks, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Every event function of ``demo`` replaced by ``wrap(fn)`` (Gradio has no per-event hook)."""
    for block_fn in demo.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = wrap(block_fn.fn)


def remove_files_of_failed_uploads() -> None:
    """Gradio's multipart parser writes uploaded files into the cache as the body arrives and removes
    them only when the body is malformed: an upload cut off, or refused by ``RequestGuard`` part-way,
    left its partial files for good. After this, any failure of a parse removes them at once."""
    parser = route_utils.GradioMultiPartParser
    parse = parser.parse
    if getattr(parse, "_removes_partial_files", False):
        return

    @functools.wraps(parse)
    async def parse_or_remove(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await parse(self, *args, **kwargs)
        except BaseException:
            for file in getattr(self, "_files_to_close_on_error", ()):  # Gradio's list of them
                with contextlib.suppress(OSError):
                    file.close()
                with contextlib.suppress(OSError):
                    os.unlink(file.name)
            raise

    parse_or_remove._removes_partial_files = True  # type: ignore[attr-defined]
    parser.parse = parse_or_remove  # type: ignore[method-assign]


# -- Requests (tagger.web.server) -------------------------------------------------------------
def hook_request_processing(
    demo: gr.Blocks,
    check: Callable[[list[Any], list[Any]], None],
    preprocess_error: Callable[[Exception, list[Any]], gr.Error],
    postprocess_error: Callable[[Exception], gr.Error],
) -> None:
    """``check(input components, values)`` before Gradio's own check of a call's values, and the
    ``gr.Error`` that ``preprocess_error`` / ``postprocess_error`` make of any other error preparing
    the inputs / the answer (Gradio's own texts are written for developers; there is no public hook)."""
    validate, preprocess, postprocess = demo.validate_inputs, demo.preprocess_data, demo.postprocess_data

    @functools.wraps(validate)
    def validate_inputs(block_fn: Any, inputs: list[Any]) -> None:
        check(block_fn.inputs, inputs)
        validate(block_fn, inputs)

    def translating(method: Callable[..., Any], error_of: Callable[..., gr.Error]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def translated(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(block_fn, *args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise error_of(e, block_fn.inputs) from None

        return translated

    demo.validate_inputs = validate_inputs  # type: ignore[method-assign]
    demo.preprocess_data = translating(preprocess, preprocess_error)  # type: ignore[method-assign]
    demo.postprocess_data = translating(postprocess, lambda e, _: postprocess_error(e))  # type: ignore[method-assign]


def failed_input_index(error: Exception) -> int | None:
    """The input a preprocessing error of Gradio's is about ("... component at index 2 ...")."""
    found = re.search(r"component at index (\d+)", str(error))
    return int(found.group(1)) if found else None


# -- The cache folder (tagger.web.server, tagger.web.tempfiles) -------------------------------
def files_kept(demo: gr.Blocks) -> set[str]:
    """The cached files ``demo``'s components keep for good (its example images)."""
    return {path for block in demo.blocks.values() for path in getattr(block, "keep_in_cache", ())}


def files_written(demo: gr.Blocks) -> set[str]:
    """The files Gradio registered in the cache for ``demo`` in this process."""
    # set(files) copies in one step: the sweep runs in a thread while requests add paths.
    return {path for files in demo.temp_file_sets for path in set(files)}


def forget_files(demo: gr.Blocks, removed: AbstractSet[str]) -> None:
    """Gradio's registry of ``demo``'s cached files without ``removed`` (swept from the disk)."""
    for files in demo.temp_file_sets:
        files -= removed


def register_cached_file(component: gr.components.Component, path: str) -> None:
    """``path`` in the cache, registered like Gradio's own downloads: its clean-up removes it."""
    component.temp_files.add(path)


# -- Components (tagger.web.inputs, tagger.web.endpoints) -------------------------------------
@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def no_stub_files() -> contextlib.AbstractContextManager[None]:
    """Gradio writes a .pyi next to the source of every Component subclass it sees defined
    (meant for custom-component packages); here it would only litter the source tree."""
    return _replaced(gradio.component_meta, "create_or_modify_pyi", lambda *args, **kwargs: None)


def api_components_as(component_class: type[ApiComponent]) -> contextlib.AbstractContextManager[None]:
    """Within it, ``gr.api`` builds parameters and results as ``component_class`` (Gradio has no option)."""
    return _replaced(gradio.components.api_component, "Api", component_class)


def set_api_info(component: Any, info: dict[str, Any]) -> None:
    """The schema ``view_api`` and the MCP tool list show for a ``gr.api`` parameter."""
    component._api_info = info


def components_being_built() -> dict[int, Any]:
    """The components of the ``gr.Blocks`` being built, by id; RuntimeError outside one."""
    blocks = get_blocks_context()
    if blocks is None:
        raise RuntimeError("This must run inside a gr.Blocks context.")
    return blocks.blocks


# -- The MCP server (tagger.web.server, tagger.web.mcp) ---------------------------------------
def mcp_server_of(demo: gr.Blocks) -> Any | None:
    """The app's MCP server, made by ``launch(mcp_server=True)`` (None before, or without one)."""
    return getattr(demo, "mcp_server_obj", None)


def hook_mcp_tool_calls(
    server: Any,
    wrap_prepare: Callable[[Callable[[str, dict[str, Any]], Any]], Callable[[str, dict[str, Any]], Any]],
    wrap_run: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Once per server: ``wrap_prepare(prepare)`` for its preparation of a tool call's arguments, and
    ``wrap_run(run)`` for each way it runs a call (Gradio's MCP server has no hooks)."""
    if getattr(server, "_tagger_hooked", False):
        return
    server._prepare_tool_call_args = wrap_prepare(server._prepare_tool_call_args)
    for attribute in ("_execute_tool_without_progress", "_execute_tool_with_progress"):
        server.__dict__[attribute] = wrap_run(getattr(server, attribute))
    server._tagger_hooked = True


def mcp_request_scope(server: Any) -> dict[str, Any]:
    """The ASGI scope of the MCP request being served."""
    return getattr(server.mcp_server.request_context.request, "scope", None) or {}


def mcp_tool_function(server: Any, tool: str) -> Callable[..., Any] | None:
    """The endpoint function behind an MCP tool."""
    endpoint = server.tool_to_endpoint.get(tool)
    block_fn = server.get_block_fn_from_endpoint_name(endpoint) if endpoint else None
    return getattr(block_fn, "fn", None)
