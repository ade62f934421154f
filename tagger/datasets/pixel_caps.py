"""The pixel caps of a shared web app: what one uploaded image may declare in its header.

Local tools (library, CLI, bulk) keep the decoder's larger default (``tagger.engine.decode``).
"""

from __future__ import annotations

import os

from tagger.engine.decode import ImageHeader, image_header

# The model sees at most 1024 px a side, and decoding costs grow with the pixels (SECURITY.md).
WEB_MAX_IMAGE_PIXELS: int = 40_000_000
# Formats whose decoding costs more get a lower cap (benchmarks/bench_decode.py): libwebp and
# libavif hold ~15 bytes a pixel at peak (one upload under ~300 MiB); float TIFF and OpenJPEG
# decode slowest a pixel (each upload under ~1 s of decoding on a 2-core machine).
WEB_FORMAT_MAX_PIXELS: dict[str, int] = {
    "WEBP": 16_000_000,
    "AVIF": 16_000_000,
    "TIFF": 16_000_000,
    "JPEG2000": 6_000_000,
}
FORMAT_NAMES = {"WEBP": "WebP", "JPEG2000": "JPEG 2000"}  # as people write them, where Pillow's differ


def web_limit(header: ImageHeader, max_pixels: int = WEB_MAX_IMAGE_PIXELS) -> int:
    """The cap for this image's format: some decoders need a lower one (``WEB_FORMAT_MAX_PIXELS``)."""
    return min(max_pixels, WEB_FORMAT_MAX_PIXELS.get(header.format, max_pixels))


def web_image_header(source: str | os.PathLike | bytes) -> ImageHeader | None:
    """``image_header``; of an icon container's images, the one furthest over its cap."""
    return image_header(source, cost=lambda header: header.pixels / web_limit(header))
