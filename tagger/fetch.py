"""Download an image from an http(s) URL without letting the URL reach inside the server.

Gradio downloads URL file inputs itself, with a public-address check but no size or time
limit, so the app's inputs (``tagger.web.inputs``) send them here instead:

* only ``http`` and ``https``, no ``user:password@``, at most ``MAX_REDIRECTS`` redirects;
* every address the host resolves to must pass the address policy, again after each redirect:
  ``public_only`` (the web app) allows public internet addresses only (not cloud metadata at
  169.254.169.254, carrier-grade NAT, nor IPv6 forms embedding a refused IPv4 address);
  ``local_network_too`` (the local CLI, whose user owns the machine) also allows the user's
  own machine and network (a NAS), refusing only addresses no download can come from;
* the connection goes to the checked address, so a second DNS answer cannot swap in an internal
  one (DNS rebinding); the Host header, TLS SNI and certificate check use the URL's name;
* at most ``max_bytes`` are read (Content-Length first, then the stream is counted) and the
  whole fetch, redirects included, ends within ``timeout`` seconds.

Every refusal or failure raises ``FetchError`` whose message is one sentence.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import unquote, urljoin, urlsplit

from tagger.errors import FetchError, format_bytes, shorten

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
# Why a download from (address, port) is refused, or None when it is allowed.
AddressPolicy: TypeAlias = Callable[[IPAddress, int], str | None]

MAX_DOWNLOAD_BYTES = 25 * 1024 * 1024  # one image by URL; uploads may be larger (server.MAX_FILE_SIZE, zips)
DOWNLOAD_TIMEOUT_S = 15.0  # the whole fetch, redirects included; it holds a queue slot meanwhile
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 4096
ALLOWED_SCHEMES = ("http", "https")
REQUEST_HEADERS = {
    "User-Agent": "dinov3-tagger (image fetch)",
    "Accept": "image/*, */*;q=0.5",
    "Accept-Encoding": "identity",
    "Connection": "close",
}

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
# Not public, yet not caught (on every Python version) by the ipaddress flags checked below.
_EXTRA_V4 = (
    (ipaddress.ip_network("100.64.0.0/10"), "carrier-grade NAT"),
    (ipaddress.ip_network("0.0.0.0/8"), "'this network'"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignment"),
    (ipaddress.ip_network("198.18.0.0/15"), "benchmarking"),
    (ipaddress.ip_network("240.0.0.0/4"), "reserved"),
)
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def parse_ip(text: str) -> IPAddress | None:
    """The IP address ``text`` spells, an IPv6 zone id (``%eth0``) dropped; None if it is none."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def is_url(value: object) -> TypeGuard[str]:
    """True for what Gradio would download as a URL (its own test: an http(s) prefix)."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be fetched from (e.g. ``"loopback"``), or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return "Teredo tunnel"
        # These carry an IPv4 address that the packet really goes to: judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_problem(embedded)
    if ip in _METADATA:
        return "cloud metadata service"
    problems = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private network", ip.is_private),
        ("reserved", ip.is_reserved),
        *((name, ip in net) for net, name in _EXTRA_V4),  # an IPv6 address is in no IPv4 network
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, found in problems if found), None)


def public_only(ip: IPAddress, port: int) -> str | None:
    """The web app's policy: public internet addresses only (``address_problem``)."""
    return address_problem(ip)


def local_network_too(ip: IPAddress, port: int) -> str | None:
    """The local CLI's policy: its user owns the machine, so loopback, the private network (a NAS,
    a local server) and link-local hosts are fine; only addresses no download can come from
    (unspecified, multicast, broadcast) are refused."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    problems = (("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast), ("broadcast", ip == _BROADCAST))
    return next((name for name, found in problems if found), None)


class _Deadline:
    """One clock for the whole fetch; when it runs out, the open socket is shut down so that
    a server trickling bytes cannot hold a read open past it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            self.expired = True
            raise TimeoutError
        return left

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to a checked address; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, address: IPAddress, deadline: _Deadline, **kwargs: Any):
        super().__init__(host, port, timeout=deadline.remaining(), **kwargs)
        self._address = address
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self._address), self.port), self._deadline.remaining())
        self._deadline.watch(self.sock)


class _PinnedHTTPSConnection(_PinnedHTTPConnection, http.client.HTTPSConnection):
    """TLS to a checked address, with SNI and certificate verification for the URL's host."""

    def __init__(self, host: str, port: int, address: IPAddress, deadline: _Deadline, context: ssl.SSLContext):
        super().__init__(host, port, address, deadline, context=context)  # on to HTTPSConnection
        self._tls = context

    def connect(self) -> None:
        super().connect()  # the TCP socket, watched during the handshake too
        sock = self.sock
        try:
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._deadline.watch(self.sock)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA) form, no brackets
    port: int
    path: str  # request target: path and query


class _Refused(Exception):
    """Why a URL is refused, before any network access (the caller words the sentence)."""


def _parse(url: str) -> _Target:
    if len(url) > MAX_URL_LENGTH:
        raise _Refused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _Refused("it is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise _Refused("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise _Refused("URLs with a user name or password are not allowed")
    host = parts.hostname or ""
    try:
        # IDNA for non-ASCII names: the Host header and TLS both need the ASCII form.
        host = host.encode("idna").decode("ascii") if host else ""
    except UnicodeError:
        host = ""
    if not host or any(c.isspace() or ord(c) < 33 for c in host):
        raise _Refused("it has no valid host name")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _resolve(target: _Target, deadline: _Deadline, shown: str) -> list[IPAddress]:
    """Every address the host resolves to; getaddrinfo has no timeout, so wait in a thread."""
    # getaddrinfo's answers (family, type, proto, canonname, sockaddr); none when it failed.
    result: list[Sequence[tuple[int, int, int, str, tuple[Any, ...]]]] = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError):
            result.append([])

    worker = threading.Thread(target=lookup, name="fetch-dns", daemon=True)
    worker.start()
    worker.join(deadline.remaining())
    if not result:
        raise TimeoutError
    addresses: list[IPAddress] = []
    for *_, sockaddr in result[0]:
        ip = parse_ip(str(sockaddr[0]))
        if ip is not None and ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise FetchError(f"Could not download {shown}: the host name {target.host} could not be resolved.")
    return addresses


def _check_addresses(target: _Target, addresses: list[IPAddress], shown: str, via: str, policy: AddressPolicy) -> None:
    # All of them, not just the first: a host must not mix allowed and refused answers.
    for ip in addresses:
        problem = policy(ip, target.port)
        if problem is not None:
            # Name the address only when the URL gave it: never reveal what internal names resolve to.
            what = target.host if parse_ip(target.host) is not None else f"the host {target.host}"
            kind = "a public internet address" if address_problem(ip) else "an address images can be fetched from"
            raise FetchError(f"Refused to download {shown}{via}: {what} is not {kind} ({problem}).")


def _open(
    target: _Target, addresses: list[IPAddress], deadline: _Deadline, context: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    last: OSError | None = None
    for ip in addresses:
        if target.scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPSConnection(
                target.host, target.port, ip, deadline, context or ssl.create_default_context()
            )
        else:
            conn = _PinnedHTTPConnection(target.host, target.port, ip, deadline)
        try:
            conn.connect()
            return conn
        except OSError as exc:
            conn.close()
            if isinstance(exc, (ssl.SSLError, socket.timeout)) or deadline.expired:
                raise
            last = exc
    raise last or ConnectionError("no address to connect to")


def _filename(url: str, content_type: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:100] or "download"
    if "." not in name and content_type.startswith("image/"):
        subtype = re.sub(r"[^a-z0-9]", "", content_type.split("/", 1)[1].split(";", 1)[0].split("+", 1)[0].lower())
        if subtype:
            name += "." + {"jpeg": "jpg"}.get(subtype, subtype)
    return name


def _read_body(
    response: http.client.HTTPResponse,
    sock: socket.socket | None,
    dest: Path,
    max_bytes: int,
    deadline: _Deadline,
    shown: str,
) -> int:
    total = 0
    with open(dest, "wb") as out:
        while True:
            # Each read may wait at most until the deadline (the watchdog covers trickling).
            remaining = deadline.remaining()
            if sock is not None:
                sock.settimeout(remaining)
            chunk = response.read(_CHUNK)
            if not chunk:
                if deadline.expired:  # the watchdog closed the socket: a cut-off body, not the end
                    raise TimeoutError
                return total
            total += len(chunk)
            if total > max_bytes:
                raise FetchError(
                    f"Refused to download {shown}: it is larger than the limit of {format_bytes(max_bytes)}."
                )
            out.write(chunk)


def fetch_url(
    url: str,
    dest_dir: str | os.PathLike,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    *,
    max_redirects: int = MAX_REDIRECTS,
    context: ssl.SSLContext | None = None,
    policy: AddressPolicy = public_only,
) -> Path:
    """Download ``url`` into a new folder under ``dest_dir`` and return the file's path.

    ``FetchError`` (a sentence) for a refused URL, address or redirect, too many redirects, an
    answer other than 200, a web page, an empty or oversized body, or a fetch over ``timeout``
    seconds in all. ``context``: the TLS context (default: the system's verified one).
    ``policy``: ``public_only`` (the default, for anything serving other people) or
    ``local_network_too`` (a tool run by the machine's own user)."""
    original = shorten(str(url), 120)
    if not isinstance(url, str):
        raise FetchError(f"Refused to download {original}: a URL must be text.")
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="fetch-", dir=dest_dir))
    deadline = _Deadline(timeout)
    current = url
    try:
        for hop in range(max_redirects + 1):
            via = "" if hop == 0 else f" (redirected to {shorten(current, 120)})"
            try:
                target = _parse(current)
            except _Refused as refused:
                where = "" if hop == 0 else f": it redirects to {shorten(current, 120)}, and"
                raise FetchError(f"Refused to download {original}{where or ':'} {refused}.") from None
            addresses = _resolve(target, deadline, original)
            _check_addresses(target, addresses, original, via, policy)
            conn = _open(target, addresses, deadline, context)
            try:
                conn.request("GET", target.path, headers=REQUEST_HEADERS)
                if conn.sock is not None:
                    conn.sock.settimeout(deadline.remaining())
                response = conn.getresponse()
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(f"Could not download {original}: it redirects without saying where to.")
                    current = urljoin(current, location.strip())
                    continue
                if response.status != 200:
                    status = f"{response.status} {response.reason or ''}".strip()
                    raise FetchError(f"Could not download {original}{via}: the server answered {status}.")
                content_type = (response.getheader("Content-Type") or "").lower()
                if content_type.startswith(("text/html", "application/xhtml")):
                    raise FetchError(
                        f"Could not download {original}{via}: it is a web page, not an image; "
                        "use the address of the image itself."
                    )
                declared = response.getheader("Content-Length") or ""
                if declared.strip().isdigit() and int(declared) > max_bytes:
                    raise FetchError(
                        f"Refused to download {original}: it is larger than the limit of {format_bytes(max_bytes)}."
                    )
                dest = folder / _filename(current, content_type)
                received = _read_body(response, conn.sock, dest, max_bytes, deadline, original)
                if received == 0:
                    raise FetchError(f"Could not download {original}{via}: the server sent an empty file.")
                # http.client returns a short body without complaint when the server hangs up early.
                if declared.strip().isdigit() and received != int(declared):
                    raise http.client.IncompleteRead(b"", int(declared) - received)
                return dest
            finally:
                deadline.watch(None)
                conn.close()
        raise FetchError(f"Refused to download {original}: it redirects more than {max_redirects} times.")
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, FetchError):
            raise
        if isinstance(exc, (TimeoutError, socket.timeout)) or deadline.expired:
            raise FetchError(f"Could not download {original}: it took longer than {timeout:g} s.") from None
        if isinstance(exc, Exception):
            raise FetchError(f"Could not download {original}: {_describe(exc)}.") from None
        raise
    finally:
        deadline.cancel()


def _describe(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the server's TLS certificate could not be verified"
    if isinstance(exc, ssl.SSLError):
        return "the secure (TLS) connection failed"
    if isinstance(exc, ConnectionRefusedError):
        return "the server refused the connection"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed before the whole file arrived"
    if isinstance(exc, http.client.InvalidURL):
        return "the URL contains characters that cannot be sent"
    if isinstance(exc, http.client.HTTPException):
        return "the server's answer is not valid HTTP"
    if isinstance(exc, OSError):
        return f"the connection failed ({exc.strerror or type(exc).__name__})"
    return f"an unexpected error occurred ({type(exc).__name__})"
