"""Image and file inputs that are safe to expose to anyone.

Gradio downloads an http(s) URL sent as a file payload (what ``gradio_client.handle_file(url)``
sends) itself: with a public-address check, but without a size or time limit. ``SafeImage``,
``SafeFile`` and ``SafeApi`` (what ``gr.api`` endpoints' parameters are built as) send those URLs
through ``tagger.fetch.fetch_url`` instead (public addresses only, checked again after each
redirect, byte cap, total time limit), and leave decoding to ``tagger.engine.decode`` with its
pixel limit and readable errors. The browser sees the stock components: only server-side
methods change. ``received_path`` accepts only files Gradio has received, inside its upload cache.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import gradio as gr
from gradio import FileData

from tagger.datasets.pixel_caps import FORMAT_NAMES, WEB_FORMAT_MAX_PIXELS, web_image_header, web_limit
from tagger.errors import FetchError, UploadError, format_bytes, shorten
from tagger.fetch import DOWNLOAD_TIMEOUT_S, MAX_DOWNLOAD_BYTES, AddressPolicy, fetch_url, is_url, public_only
from tagger.web.gradio_compat import ApiComponent, NamedString, get_upload_folder, no_stub_files, register_cached_file

log = logging.getLogger("tagger")

if TYPE_CHECKING:  # for the checker: super() below is the Gradio component the mixin is mixed into
    from gradio.components import Component as _MixedInto
else:
    _MixedInto = object


class _SafeDownloads(_MixedInto):
    """Mixin for Gradio components: URLs go through ``fetch_url``; everything else as in Gradio."""

    stock: str  # the frontend component to render: the stock one
    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    download_timeout: float = DOWNLOAD_TIMEOUT_S
    # A public server: other people's URLs may only reach public addresses (tests widen it).
    address_policy: AddressPolicy = staticmethod(public_only)

    def get_block_name(self) -> str:
        return self.stock

    def get_block_class(self) -> str:
        return self.stock

    def _limits(self) -> tuple[int, float]:
        """(bytes, seconds) for one download."""
        return self.max_download_bytes, self.download_timeout

    def fetch_into_cache(self, url: str) -> str:
        """``url`` fetched into Gradio's cache with this input's limits and policy, else ``FetchError``."""
        max_bytes, timeout = self._limits()
        folder = Path(get_upload_folder()) / "fetched"
        path = fetch_url(url, folder, max_bytes=max_bytes, timeout=timeout, policy=self.address_policy)
        register_cached_file(self, str(path))
        return str(path)

    def _fetch(self, url: str) -> str:
        try:
            return self.fetch_into_cache(url)
        except FetchError as e:
            # Expected on a public server: one line in the log, no traceback.
            log.info("Refused a URL: %s", shorten(str(e), 300))
            raise gr.Error(str(e), print_exception=False) from None

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        if is_url(url_or_file_path):
            # Blocking sockets and DNS: keep them off the event loop.
            return await anyio.to_thread.run_sync(self._fetch, url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        if is_url(url_or_file_path):
            return self._fetch(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)


def check_web_pixels(path: str, shown: str | None = None) -> str:
    """``path`` if its image is within the web app's pixel cap (read from its header before anything is
    decoded; non-images pass), else ``gr.Error`` with a sentence naming ``shown``."""
    header = web_image_header(path)
    if header is not None and header.pixels > (limit := web_limit(header)):
        name = FORMAT_NAMES.get(header.format, header.format)
        kind = f" for {name} images" if header.format in WEB_FORMAT_MAX_PIXELS else ""
        raise gr.Error(
            f"Could not read '{shown or 'the image'}': {header.describe()}, more than this Space's limit of "
            f"{limit:,} pixels{kind}; make it smaller, or run the tagger on your own "
            "machine (python -m tagger) for bigger images.",
            print_exception=False,
        )
    return path


with no_stub_files():

    class SafeImage(_SafeDownloads, gr.Image):
        """As a file path input, the file goes to our decoder untouched (Gradio would open it with Pillow
        first, without our limits and with a developer-facing error for anything but an image)."""

        stock = "image"

        def preprocess(self, payload: Any) -> Any:
            if payload is None or self.type != "filepath" or self.image_mode is not None:
                return super().preprocess(payload)
            url = getattr(payload, "url", None)
            if isinstance(url, str) and url.startswith("data:"):
                return check_web_pixels(self._save_data_url(url), "the image data")
            if payload.path is None:
                raise gr.Error("No image was received; please upload the image again.", print_exception=False)
            return check_web_pixels(str(payload.path), getattr(payload, "orig_name", None))

        def _save_data_url(self, url: str) -> str:
            # Gradio would decode (and fully decompress) a base64 image before any limit applies.
            encoded = url.partition(",")[2]
            if len(encoded) > (self.max_download_bytes * 4) // 3 + 4:
                raise gr.Error(
                    f"The image data is larger than the limit of {format_bytes(self.max_download_bytes)}.",
                    print_exception=False,
                )
            try:
                data = base64.b64decode(encoded, validate=True)
            except ValueError:  # binascii.Error is one
                raise gr.Error("The image data URL is not valid base64.", print_exception=False) from None
            path = Path(tempfile.mkdtemp(prefix="data-url-", dir=get_upload_folder())) / "image"
            path.write_bytes(data)
            register_cached_file(self, str(path))
            return str(path)

    class SafeFile(_SafeDownloads, gr.File):
        """``gr.File`` whose URL downloads are limited."""

        stock = "file"

        def preprocess(self, payload: Any) -> Any:
            # Gradio's File.preprocess creates an empty NamedTemporaryFile in the cache for every
            # single file path it returns and never removes it: one leaked file per request.
            if self.file_count == "single" and isinstance(payload, FileData):
                check_web_pixels(payload.path, payload.orig_name)  # zips and non-images pass
                if self.type == "filepath" and not self.file_types:
                    return NamedString(payload.path)
            return super().preprocess(payload)

    class SafeApi(_SafeDownloads, ApiComponent):
        """The component ``gr.api`` makes for each parameter and result, with URL downloads
        through ``fetch_url`` and the limits of ``SafeFile`` (one setting for every file input)."""

        stock = "api"
        example: Any = None  # what "Use via API" suggests for this parameter (Gradio: "...")

        def _limits(self) -> tuple[int, float]:
            return SafeFile.max_download_bytes, SafeFile.download_timeout

        def example_payload(self) -> Any:
            return self.example if self.example is not None else super().example_payload()


def received_path(payload: object) -> str | None:
    """The server path of a ``gr.api`` endpoint's file parameter, or None when none was sent. Gradio
    moves a file payload (``handle_file``; a URL fetched by ``SafeApi``) into its upload cache (an
    upload already there stays where it is) but passes anything else (a bare string, a dict without
    ``meta``) on untouched: only a path inside the cache is accepted, so no request can name a file
    elsewhere on the server."""
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if isinstance(path, str) and Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()):
        shown = payload.get("orig_name") if isinstance(payload, dict) else None
        return check_web_pixels(path, shown if isinstance(shown, str) else None)
    raise UploadError(
        "Send files as uploads: gradio_client's handle_file(path or URL), or "
        '{"path": ..., "meta": {"_type": "gradio.FileData"}} with a path from /gradio_api/upload.'
    )


def image_upload(elem_id: str, *, label: str = "Image (upload, paste or drop)", height: int = 380) -> SafeImage:
    """Upload or paste, handed to our decoder as a file path, alpha kept (we composite onto white ourselves)."""
    return SafeImage(
        type="filepath", image_mode=None, label=label, sources=["upload", "clipboard"], height=height, elem_id=elem_id
    )
