"""A fair share of a public Space for every client: bounded cost per request, per-client limits.

Gradio's queue bounds the work running at once and the requests waiting, but not whose they
are: one client could fill the whole queue. Around Gradio, before it sees a request:

* **Who a client is** (``client_key``): its address as the Space's proxy reports it (so a
  client cannot choose it; IPv6 by /64); for MCP, the caller the guard signs in a header
  (``mcp_caller``).
* **Per-client queue limits** (``FairQueue``): per browser session, per client and in the heavy
  group, beyond which HTTP 429 and a sentence; waiting requests are served round-robin.
* **A time budget per event** (``tagger.datasets.intake.time_budget``): a batch stops reading
  images once it is spent and returns what it has, the rest listed as not read.
* **HTTP limits** (``RequestGuard``, ASGI middleware): no remote URLs through ``/file=`` nor
  ``/proxy=``, JSON bodies and uploads capped per request, uploaded bytes per client and per
  Space per hour (``UploadBudget``), unqueued events (``/run/``) limited per client and overall,
  an unreadable upload answered with a sentence, a failed upload's partial files removed at once.
* **Memory**: after every event, ``tagger.engine.cpu.MEMORY`` decides whether memory goes back.

``install(demo, limits)`` wires the queue side; ``RequestGuard`` goes into the app's middleware
(``tagger.web.server.launch``). Every value is in ``FairShareLimits``; SECURITY.md lists them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import os
import secrets
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import gradio as gr
from fastapi import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tagger.datasets.intake import time_budget
from tagger.engine.cpu import MEMORY
from tagger.errors import GiB, MiB, format_bytes
from tagger.fetch import parse_ip
from tagger.web import gradio_compat

log = logging.getLogger("tagger")


def _proxy_hops_from_env() -> int:
    # A Space is always behind Hugging Face's proxy, which appends the client's address.
    default = "1" if os.environ.get("SPACE_ID") else "0"
    try:
        return max(0, int(os.environ.get("TAGGER_PROXY_HOPS", default)))
    except ValueError:
        return int(default)


@dataclass(frozen=True)
class FairShareLimits:
    """Every per-client and per-request limit of the web app (see SECURITY.md)."""

    events_per_session: int = 4  # queued or running, one browser tab or gradio_client Client
    events_per_client: int = 8  # queued or running, one address (sessions behind one NAT share it)
    heavy_per_client: int = 2  # of those, in the heavy group (batches, feature maps, similarity)
    event_seconds: float = 300.0  # time budget of one event; a batch stops reading images after it
    max_json_bytes: int = 1 * MiB  # a JSON request body (API calls, queue joins)
    max_mcp_json_bytes: int = 4 * MiB  # MCP tool calls (the mcp package's own cap): a base64 image of ~3 MiB
    max_upload_request_bytes: int = 512 * MiB  # one /upload request, all its files together
    upload_bytes_per_client: int = 1 * GiB  # per client in upload_window_s
    upload_bytes_all: int = 16 * GiB  # the whole Space in upload_window_s
    upload_window_s: float = 3600.0
    unqueued_per_client: int = 2  # events that skip the queue (cheap UI updates), in flight per client
    unqueued_at_once: int = 2  # ... and in the whole app; more wait up to unqueued_wait_s
    unqueued_wait_s: float = 10.0
    proxy_hops: int = field(default_factory=_proxy_hops_from_env)


# -- Who a client is --------------------------------------------------------------------------
def _header(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == name]


# Gradio's MCP server runs each tool call through a gradio_client of its own on loopback,
# forwarding the caller's headers: the request guard names the caller of every MCP request in
# this header, signed with a secret of this process, so that those loopback calls count for
# the caller (not for 127.0.0.1, nor for an X-Forwarded-For the caller chose).
MCP_CALLER_HEADER = b"x-tagger-mcp-caller"
_MCP_SECRET = secrets.token_bytes(32)


def signed_caller(key: str) -> str:
    """The value of ``MCP_CALLER_HEADER`` naming ``key``."""
    return f"{key} {hmac.new(_MCP_SECRET, key.encode(), hashlib.sha256).hexdigest()}"


def mcp_caller(scope: Scope) -> str | None:
    """The client an MCP request (or Gradio's loopback call for it) is made for; None for any other request."""
    values = _header(scope, MCP_CALLER_HEADER)
    if len(values) != 1:
        return None
    key = values[0].rpartition(" ")[0]
    return key if key and hmac.compare_digest(signed_caller(key), values[0]) else None


def client_key(scope: Scope, proxy_hops: int) -> str:
    """The MCP caller (``mcp_caller``), else the ``X-Forwarded-For`` entry the outermost of
    ``proxy_hops`` proxies appended (a Space has one), else the peer's address; IPv6 by /64 (one
    subscriber's usual allocation)."""
    caller = mcp_caller(scope)
    if caller is not None:
        return caller
    address = None
    if proxy_hops > 0:
        entries = [e.strip() for value in _header(scope, b"x-forwarded-for") for e in value.split(",") if e.strip()]
        if len(entries) >= proxy_hops:
            address = _ip(entries[-proxy_hops])
    if address is None:
        client = scope.get("client") or ("unknown", 0)
        address = _ip(str(client[0]))
        if address is None:
            return str(client[0])
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    return parse_ip(text)


# -- Time budget of an event ------------------------------------------------------------------
def _with_budget(fn: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        return fn  # left as they are: the budget below would end at their first await or yield

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with time_budget(seconds):
                return fn(*args, **kwargs)
        finally:
            MEMORY.after_request()

    return run


# -- The queue: per-client limits and round-robin order ---------------------------------------
class FairQueue:
    """In Gradio's queue: a client's request beyond its share refused (HTTP 429), waiting ones round-robin."""

    def __init__(self, queue: Any, limits: FairShareLimits, heavy_group: str):
        self.queue = queue
        self.limits = limits
        self.heavy_group = heavy_group
        gradio_compat.hook_queue_push(queue, self.admit, self._fair_order)

    def key(self, event: Any) -> str:
        return client_key(gradio_compat.event_origin(event).scope, self.limits.proxy_hops)

    @staticmethod
    def session(scope: Scope, session: str | None) -> str | None:
        """An MCP caller's own session (Gradio's MCP server sends all calls through one), else Gradio's."""
        caller = mcp_caller(scope)
        return f"mcp {caller}" if caller is not None else session

    def _refusal(self, client: str, session: str | None, group: str | None) -> str | None:
        held = [e for events in gradio_compat.waiting_events(self.queue).values() for e in events]
        held += gradio_compat.running_events(self.queue)
        limits = self.limits
        sessions = [self.session(o.scope, o.session) for o in map(gradio_compat.event_origin, held)]
        if session is not None and sessions.count(session) >= limits.events_per_session:
            return (
                f"You already have {limits.events_per_session} requests waiting or running; "
                "wait for one to finish before sending another."
            )
        mine = [e for e in held if self.key(e) == client]
        if len(mine) >= limits.events_per_client:
            return (
                f"Your address already has {limits.events_per_client} requests waiting or running on this "
                "Space; wait for one to finish before sending another."
            )
        heavy = sum(gradio_compat.event_origin(e).group == group for e in mine)
        if group == self.heavy_group and heavy >= limits.heavy_per_client:
            return (
                f"You already have {limits.heavy_per_client} batch, feature or similarity requests waiting "
                "or running; wait for one to finish before sending another."
            )
        return None

    def admit(self, request: Any, session: str | None, group: str | None) -> None:
        """Before Gradio queues a request: HTTPException 429 with a sentence beyond its client's share."""
        client = client_key(request.scope, self.limits.proxy_hops)
        refusal = self._refusal(client, self.session(request.scope, session), group)
        if refusal is not None:
            log.info("Refused a request from %s: %s", client, refusal)
            raise HTTPException(status_code=429, detail=refusal, headers={"Retry-After": "5"})

    def _fair_order(self) -> None:
        """Round-robin per concurrency group: a waiting request ranks by how many of its client's requests
        are ahead of it in the group (running ones included); ties keep their arrival order."""
        running_now = gradio_compat.running_events(self.queue)
        running = Counter((self.key(e), gradio_compat.event_origin(e).group) for e in running_now)
        for group, events in gradio_compat.waiting_events(self.queue).items():
            if len(events) < 2:
                continue
            seen = Counter({key: n for (key, of_group), n in running.items() if of_group == group})
            ranked = []
            for position, event in enumerate(events):
                key = self.key(event)
                ranked.append((seen[key], position, event))
                seen[key] += 1
            events[:] = [event for _, _, event in sorted(ranked, key=lambda r: (r[0], r[1]))]


def install(demo: gr.Blocks, limits: FairShareLimits, heavy_group: str) -> FairQueue:
    """Per-client limits on ``demo``'s queue (after ``demo.queue()``), a time budget and memory policy per event."""
    gradio_compat.remove_files_of_failed_uploads()
    gradio_compat.wrap_event_functions(demo, functools.partial(_with_budget, seconds=limits.event_seconds))
    return FairQueue(gradio_compat.app_queue(demo), limits, heavy_group)


# -- HTTP: before Gradio sees a request -------------------------------------------------------
class _TooLarge(HTTPException):
    """A refusal with a sentence. Raised before the app runs, the guard answers it; raised while
    the app reads the body, FastAPI answers it like any HTTPException (``{"detail": ...}``)."""


class _Window:
    """Bytes per key over a sliding window; an entry can grow after it was added (bytes
    charged as a body arrives), and counts from when it was added."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.entries: defaultdict[str, deque[list[float]]] = defaultdict(deque)
        self._pruned = time.monotonic()

    def _expire(self, key: str, cutoff: float) -> deque[list[float]] | None:
        entries = self.entries[key]
        while entries and entries[0][0] < cutoff:
            entries.popleft()
        if not entries:
            del self.entries[key]
            return None
        return entries

    def total(self, key: str) -> int:
        entries = self._expire(key, time.monotonic() - self.seconds)
        return int(sum(n for _, n in entries)) if entries else 0

    def add(self, key: str, n: int) -> list[float]:
        now = time.monotonic()
        # A client that never comes back is never asked about again: drop every key whose entries
        # are all past the window, at most once a minute (or once a window, if shorter).
        if now - self._pruned >= min(60.0, self.seconds):
            self._pruned = now
            for old in list(self.entries):
                self._expire(old, now - self.seconds)
        # Charges less than a sixtieth of the window apart share one entry, so a client's record
        # holds about 60 entries however many requests it sends in a window (they count from the
        # entry's start: a minute of an hour early at most).
        entries = self.entries[key]
        if entries and now - entries[-1][0] < self.seconds / 60:
            entries[-1][1] += n
            return entries[-1]
        entry = [now, float(n)]
        entries.append(entry)
        return entry


class UploadBudget:
    """Uploaded bytes per client and for the whole Space over ``upload_window_s``, charged before they
    are stored (a declared length at once, a streamed body by chunk): parallel uploads share one budget."""

    def __init__(self, limits: FairShareLimits):
        self.limits = limits
        self.window = _Window(limits.upload_window_s)

    def charge(self, client: str) -> UploadCharge:
        """A new charge for one request of ``client``, at 0 bytes."""
        return UploadCharge(self, client)

    def check(self, client: str, more: int) -> None:
        """Refuse (``_TooLarge`` with a sentence) if ``more`` bytes would pass a budget."""
        limits = self.limits
        mine = self.window.total(client)
        if mine + more > limits.upload_bytes_per_client:
            raise _TooLarge(
                429,
                f"Your address uploaded {format_bytes(mine)} in the last hour; the limit is "
                f"{format_bytes(limits.upload_bytes_per_client)}. Try again later.",
            )
        if self.window.total("") + more > limits.upload_bytes_all:
            raise _TooLarge(503, "This Space has received too many uploads in the last hour; try again later.")


@dataclass
class UploadCharge:
    """What one request has been charged so far (``UploadBudget.charge``)."""

    budget: UploadBudget
    client: str
    bytes: int = 0
    _entries: tuple[list[float], list[float]] | None = None  # its entries in the budget's window

    def to(self, total: int) -> None:
        """Charge the request for ``total`` bytes in all: what passes the count so far is new,
        and refused (``_TooLarge``) if it does not fit the budgets; nothing is charged then."""
        extra = total - self.bytes
        if extra <= 0:
            return
        self.budget.check(self.client, extra)
        if self._entries is None:
            self._entries = (self.budget.window.add(self.client, 0), self.budget.window.add("", 0))
        for entry in self._entries:
            entry[1] += extra
        self.bytes = total


def _is_remote_file_route(path: str) -> bool:
    """``/gradio_api/file=<URL>`` (Gradio would download and stream any URL) and ``/proxy=``."""
    if "/proxy=" in path:
        return True
    _, found, rest = path.partition("/file=")
    if not found:
        return False
    rest = unquote(rest).strip().lower()
    scheme, colon, _ = rest.partition(":")
    return rest.startswith("//") or (bool(colon) and scheme.isascii() and scheme.isalpha() and len(scheme) > 1)


class RequestGuard:
    """ASGI middleware in front of Gradio: the HTTP limits of the module docstring."""

    def __init__(self, app: ASGIApp, budget: UploadBudget):
        self.app = app
        self.budget = budget
        self.limits = budget.limits
        self.unqueued_now: Counter[str] = Counter()
        self.unqueued_slots = asyncio.Semaphore(self.limits.unqueued_at_once)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if method in ("GET", "HEAD") and _is_remote_file_route(path):
            await _answer(
                send,
                403,
                "This Space does not fetch other addresses through /file=: it serves only its own files. "
                "Send an image URL as the image input instead.",
            )
            return
        if "/gradio_api/mcp" in path:
            scope = self._for_mcp_caller(scope)
        if method != "POST":
            await self.app(scope, receive, send)
            return
        client = client_key(scope, self.limits.proxy_hops)
        try:
            if path.endswith("/upload"):
                await self._upload(scope, receive, send, client)
            elif "/gradio_api/run/" in path or "/gradio_api/api/" in path:
                await self._unqueued(scope, receive, send, client)
            else:
                limit = self.limits.max_mcp_json_bytes if "/mcp" in path else self.limits.max_json_bytes
                await self._capped(scope, receive, send, limit)
        except _TooLarge as refusal:
            log.info("Refused a request from %s to %s: %s", client, path, refusal.detail)
            await _answer(send, refusal.status_code, refusal.detail)
        except ClientDisconnect:
            # Expected on a public server (a closed tab, a dropped connection): one line, no answer.
            log.info("A request from %s to %s was cut off by the client.", client, path)

    def _for_mcp_caller(self, scope: Scope) -> Scope:
        """``scope`` with its client named in ``MCP_CALLER_HEADER`` (any such header sent replaced)."""
        headers = [(key, value) for key, value in scope.get("headers", ()) if key != MCP_CALLER_HEADER]
        scope = {**scope, "headers": headers}
        caller = client_key(scope, self.limits.proxy_hops)
        scope["headers"] = [*headers, (MCP_CALLER_HEADER, signed_caller(caller).encode("latin-1"))]
        return scope

    async def _capped(
        self, scope: Scope, receive: Receive, send: Send, limit: int, on_body: Callable[[int], None] | None = None
    ) -> None:
        """Run the app with the request body capped at ``limit``; ``on_body`` is told the declared length
        before the app runs, then the bytes received so far after each chunk (it may refuse by raising)."""
        upload = scope.get("path", "").endswith("/upload")
        what = "The upload" if upload else "The request"
        try:
            declared: int | None = int(_header(scope, b"content-length")[0])
        except (IndexError, ValueError):  # none declared (a streamed body), or not a number
            declared = None
        if declared is not None and declared > limit:  # refused before anything is stored or counted
            raise _TooLarge(413, f"{what} is {format_bytes(declared)}; the limit is {format_bytes(limit)}.")
        if on_body is not None:
            on_body(declared or 0)
        started = False
        count = 0

        async def counted_receive() -> Message:
            nonlocal count
            message = await receive()
            if message.get("type") == "http.request":
                count += len(message.get("body", b""))
                try:
                    if on_body is not None:
                        on_body(count)
                    if count > limit:
                        raise _TooLarge(413, f"{what} is larger than the limit of {format_bytes(limit)}.")
                except _TooLarge as refusal:
                    # Raised inside the app, which answers it (an HTTPException): logged here, once.
                    log.info("Refused a request to %s: %s", scope.get("path", ""), refusal.detail)
                    raise
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except (_TooLarge, ClientDisconnect):
            if started:
                raise RuntimeError("request body limit passed after the response started") from None
            raise
        except Exception:
            if started or not upload:
                raise
            log.exception("Upload failed")
            raise _TooLarge(400, "The upload could not be read; send each file with a file name.") from None

    async def _upload(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        # The declared length is reserved before a byte is stored; what arrives beyond it is charged
        # chunk by chunk (a streamed body declares no length).
        charge = self.budget.charge(client)
        await self._capped(scope, receive, send, self.limits.max_upload_request_bytes, on_body=charge.to)

    async def _unqueued(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        limits = self.limits
        if self.unqueued_now[client] >= limits.unqueued_per_client:
            raise _TooLarge(429, "Too many updates at once from your address; wait for the last one to finish.")
        self.unqueued_now[client] += 1
        try:
            try:
                await asyncio.wait_for(self.unqueued_slots.acquire(), limits.unqueued_wait_s)
            except asyncio.TimeoutError:
                raise _TooLarge(429, "The Space is busy with other updates; try again in a moment.") from None
            try:
                await self._capped(scope, receive, send, limits.max_json_bytes)
            finally:
                self.unqueued_slots.release()
        finally:
            self.unqueued_now[client] -= 1
            if self.unqueued_now[client] <= 0:
                del self.unqueued_now[client]


async def _answer(send: Send, status: int, message: str) -> None:
    # "detail" is what FastAPI errors carry (the browser shows it); "error" what Gradio's do.
    body = json.dumps({"detail": message, "error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", b"30"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
