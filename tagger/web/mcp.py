"""Gradio's MCP server (``/gradio_api/mcp/``), fit for a public Space.

Gradio runs each tool call through a ``gradio_client.Client`` of its own on loopback. As it
stands, a caller's ``data:`` image is written to the cache before any limit (and stays), then
uploaded again without the caller's headers (every MCP upload counts for 127.0.0.1), a list of
files (``tag_batch``) is passed on unconverted, and a failure answers gradio_client's text with
the loopback URL in it. ``serve_mcp_callers`` changes that:

* **Files.** Each file argument (one, or a list) is an http(s) URL, handed on as a file payload
  (for the guarded fetcher), or a base64 ``data:`` URL: decoded within ``MAX_DOWNLOAD_BYTES``,
  charged to the caller's ``fairshare.UploadBudget``, written once into the upload cache and
  removed when the call ends, answered or refused. Anything else (a server path, a file payload
  dict) is refused: the loopback client would upload a file of the server's disk.
* **Who calls.** The caller the request guard names (``fairshare.mcp_caller``), so the queue's
  per-client and per-session limits count per caller.
* **Errors.** A failed call answers the app's sentence, never gradio_client's text.
"""

from __future__ import annotations

import base64
import contextvars
import functools
import inspect
import logging
import mimetypes
import shutil
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from gradio import FileData
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from tagger.errors import format_bytes
from tagger.fetch import MAX_DOWNLOAD_BYTES
from tagger.web import gradio_compat
from tagger.web.fairshare import UploadBudget, _TooLarge, client_key
from tagger.web.gradio_compat import ImageData, QueueError, get_upload_folder

log = logging.getLogger("tagger")

# The folders written for the tool call running in this context (removed when it ends).
_CALL_FOLDERS: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("tagger_mcp_files", default=None)


class ToolError(Exception):
    """A tool call refused or failed, with the sentence the caller sees."""


def serve_mcp_callers(server: Any, budget: UploadBudget) -> None:
    """Files, callers and errors of Gradio's MCP ``server`` as the module docstring says."""

    def with_files(prepare: Callable[[str, dict[str, Any]], Any]) -> Callable[[str, dict[str, Any]], Any]:
        def prepare_with_files(name: str, arguments: dict[str, Any]) -> Any:
            folders: list[Path] = []
            _CALL_FOLDERS.set(folders)
            try:
                caller = client_key(gradio_compat.mcp_request_scope(server), budget.limits.proxy_hops)
                write = functools.partial(_write, caller=caller, budget=budget, folders=folders)
                return prepare(name, _with_files(server, name, arguments, write))
            except Exception:
                _remove(folders)
                raise

        return prepare_with_files

    gradio_compat.hook_mcp_tool_calls(server, with_files, _answering)


def _answering(run: Callable[..., Any]) -> Callable[..., Any]:
    async def run_and_clean_up(*args: Any, **kwargs: Any) -> Any:
        try:
            return await run(*args, **kwargs)
        except Exception as e:
            raise ToolError(_sentence(e)) from None
        finally:
            _remove(_CALL_FOLDERS.get() or [])

    return run_and_clean_up


def _file_parameters(server: Any, name: str) -> dict[str, bool]:
    """The tool's file parameters: name -> whether it takes a list of files."""
    fn = gradio_compat.mcp_tool_function(server, name)
    if fn is None:
        return {}
    found = {}
    for parameter in inspect.signature(fn).parameters.values():
        annotation = parameter.annotation
        if annotation in (FileData, ImageData):
            found[parameter.name] = False
        elif typing.get_origin(annotation) is list and typing.get_args(annotation)[0] in (FileData, ImageData):
            found[parameter.name] = True
    return found


def _with_files(
    server: Any, name: str, arguments: dict[str, Any], write: Callable[[bytes, str], str]
) -> dict[str, Any]:
    if _holds_file_payload(arguments):
        raise ToolError("Send files as http(s) URLs or base64 data: URLs, not as file objects.")
    converted = dict(arguments)
    for parameter, many in _file_parameters(server, name).items():
        value = arguments.get(parameter)
        if value is None:
            continue
        if many:
            values = value if isinstance(value, list) else [value]
            converted[parameter] = [_file(v, parameter, write) for v in values]
        else:
            converted[parameter] = _file(value, parameter, write)
    return converted


def _holds_file_payload(value: object) -> bool:
    if isinstance(value, dict):
        return "meta" in value or "path" in value or any(_holds_file_payload(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_file_payload(v) for v in value)
    return False


def _file(value: object, parameter: str, write: Callable[[bytes, str], str]) -> dict[str, Any]:
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return handle_file(value)  # fetched by the app's guarded fetcher (tagger.web.inputs)
    if isinstance(value, str) and value.startswith("data:"):
        header, _, encoded = value.partition(",")
        if not header.endswith(";base64"):
            raise ToolError(f"The data: URL sent for '{parameter}' is not base64 (data:image/png;base64,...).")
        # Named by its media type: the batch endpoints pick images by their extension.
        extension = mimetypes.guess_extension(header.removeprefix("data:").removesuffix(";base64")) or ""
        path = write(_decoded(encoded, parameter), extension)
        return {"path": path, "orig_name": Path(path).name}
    raise ToolError(f"Send '{parameter}' as an http(s) URL or a base64 data: URL.")


def _decoded(encoded: str, parameter: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    if len(encoded) > (max_bytes * 4) // 3 + 4:  # checked before decoding
        raise ToolError(f"The data sent for '{parameter}' is larger than the limit of {format_bytes(max_bytes)}.")
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error is one
        raise ToolError(f"The data: URL sent for '{parameter}' is not valid base64.") from None


def _write(data: bytes, extension: str, caller: str, budget: UploadBudget, folders: list[Path]) -> str:
    """``data`` as a received upload of ``caller``: charged first, then written into the cache."""
    try:
        budget.charge(caller).to(len(data))
    except _TooLarge as refusal:
        log.info("Refused an MCP call from %s: %s", caller, refusal.detail)
        raise ToolError(refusal.detail) from None
    folder = Path(tempfile.mkdtemp(prefix="mcp-", dir=get_upload_folder()))
    folders.append(folder)
    path = folder / f"image-{len(folders)}{extension}"
    path.write_bytes(data)
    return str(path)


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    folders.clear()


def _sentence(error: Exception) -> str:
    """What the caller reads for a failed call: the app's own sentence where there is one."""
    if isinstance(error, ToolError):
        return str(error)
    if isinstance(error, AppError) and error.message:
        return str(error.message)
    if isinstance(error, httpx.HTTPStatusError):  # the queue refused the call (429: the caller's share)
        try:
            detail = error.response.json().get("detail")
        except ValueError:
            detail = None
        if isinstance(detail, str):
            return detail
        return f"The Space refused the call (HTTP {error.response.status_code}); try again later."
    if isinstance(error, QueueError):
        return "The Space's queue is full; try again in a moment."
    if isinstance(error, RuntimeError) and str(error).startswith("Error: "):  # Gradio's progress path
        return str(error).removeprefix("Error: ")
    log.error("MCP tool call failed: %s: %s", type(error).__name__, error)
    return "The tool call failed on the server; please try again."
