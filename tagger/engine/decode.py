"""Decode any image input to a fully loaded RGB PIL image (``load_image``): EXIF orientation
applied, first frame, transparency on white, high-bit-depth grey scaled rather than clipped.
Every failure is an ``ImageError`` a person can act on, naming the image as the caller knows it;
no raw Pillow/OS exception escapes. ``image_header`` reads a file's declared size only.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, TypeAlias

import numpy as np
from PIL import BmpImagePlugin, IcnsImagePlugin, Image, Jpeg2KImagePlugin, PngImagePlugin, UnidentifiedImageError

from tagger.errors import ImageError

ImageSource: TypeAlias = str | os.PathLike | bytes | Image.Image | np.ndarray

# Refuse larger images: a small compressed file can declare a huge canvas (decompression bomb).
MAX_IMAGE_PIXELS: int = 100_000_000  # the library's and the CLI's default

_EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that makes the image upright (same table as ImageOps.exif_transpose).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_BOMB_NUMBERS = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")


# (width, height) of the upright image -> the (width, height) to return: ``target_size`` with
# the model's settings, so that reduced decoding can skip pixels the model never sees.
Fit: TypeAlias = Callable[[int, int], tuple[int, int]]

# Decode at a reduced scale (JPEG DCT scaling; other formats: a box average) only while the
# reduced image keeps at least this many pixels per output pixel along each side, for Lanczos
# to work from (effect: benchmarks/bench_decode.py, bounded in tests/test_hostile.py).
REDUCED_DECODE_MARGIN = 3
# Modes are converted to RGB in bands of about this many pixels, so a big palette, alpha or
# 16-bit image never has a second full-size copy in another mode.
BAND_PIXELS = 1 << 20

_REDUCIBLE_FORMATS = frozenset({"JPEG"})
_SWAPS_AXES = frozenset({Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
                         Image.Transpose.ROTATE_90})  # fmt: skip
# The transposes that another one undoes; every other undoes itself.
_INVERSE: dict[Image.Transpose | None, Image.Transpose] = {
    Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
    Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
}


def load_image(
    source: ImageSource,
    max_pixels: int = MAX_IMAGE_PIXELS,
    *,
    fit: Fit | None = None,
    reduced_decode: bool = False,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` to a new, fully loaded RGB image; ``ImageError`` for anything else.
    ``source``: a file path, a file's bytes, a PIL image (its current frame; not modified) or a
    numpy array (HxW, HxWx3 or HxWx4; uint8, or float in [0, 1]). More than ``max_pixels``
    pixels is refused from the header, before any pixel is decoded. ``fit`` maps the upright
    (width, height) to the size to return, resized with Lanczos as ``preprocess`` would resize
    the full image, keeping only the pixels that size needs. ``reduced_decode``: files opened
    here may be decoded at a reduced scale (``REDUCED_DECODE_MARGIN``): much cheaper for huge
    images, not bit-identical (the web app's choice; library, CLI and bulk stay exact).
    ``name``: what error sentences call the image (the name a person knows, not a temp path)."""
    if isinstance(source, Image.Image):
        return _finish(source, name or "the given PIL image", max_pixels, fit, own=False)
    if isinstance(source, np.ndarray):
        label = name or "the given array"
        image = _from_array(source, label, max_pixels)
        return _finish(image, label, max_pixels, fit, own=reduced_decode) if fit is not None else image
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "the given data"
        if not data:
            raise ImageError(f"Could not read {label}: it is empty (0 bytes), so it holds no image.")
        return _decode(io.BytesIO(data), label, max_pixels, fit, reduced_decode)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, name or os.fsdecode(os.fspath(source)), max_pixels, fit, reduced_decode)
    raise ImageError(
        f"Cannot read an image from an object of type {type(source).__name__}; "
        "pass a file path, bytes, a PIL image or a numpy array."
    )


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header declares, read without decoding any pixel."""

    width: int
    height: int  # 1 when only the pixel count is known (Pillow's own bomb guard fired)
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def describe(self) -> str:
        shown = f"{self.width}x{self.height} ({self.pixels:,} pixels)" if self.height > 1 else f"{self.pixels:,} pixels"
        return f"the image is {shown}"


def image_header(
    source: str | os.PathLike | bytes, cost: Callable[[ImageHeader], float] = lambda header: header.pixels
) -> ImageHeader | None:
    """The size and format a file's header declares (None: not an image we decode), read
    without decoding, to check limits first. For ICO/ICNS: the embedded image with the highest
    ``cost`` (default: the most pixels), from that image's own header (``embedded_images``)."""
    try:
        fp: BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except (OSError, ValueError, TypeError):
        return None
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            embedded = embedded_images(fp)
            if embedded is not None:  # never Image.open: Pillow's ICO plugin decodes while opening
                return max(embedded, key=cost) if embedded else None
            with Image.open(fp, formats=DECODABLE_FORMATS) as image:
                return ImageHeader(image.width, image.height, image.format or "")
        except Image.DecompressionBombError as exc:
            found = _BOMB_NUMBERS.search(str(exc))
            return ImageHeader(int(found.group(1)), 1, "") if found else None
        except Exception:
            return None


# Icon containers: their directory declares small sizes, but each entry is a PNG, BMP or JPEG
# 2000 stream of any size, which Pillow decodes in full whatever the directory says.
_ICO_MAGIC, _ICNS_MAGIC, _PNG_MAGIC = b"\x00\x00\x01\x00", b"icns", b"\x89PNG\r\n\x1a\n"
_ICNS_STREAM_TYPES = tuple(
    code
    for readers in IcnsImagePlugin.IcnsFile.SIZES.values()
    for code, reader in readers
    if reader is IcnsImagePlugin.read_png_or_jpeg2000
)


def embedded_images(fp: BinaryIO) -> list[ImageHeader] | None:
    """The images an ICO or ICNS file embeds as streams of their own (PNG, BMP, JPEG 2000), read
    from their own headers; None for any other file. Leaves ``fp`` where it was."""
    start = fp.tell()
    try:
        magic = fp.read(4)
        if magic == _ICO_MAGIC:
            return _ico_images(fp, start)
        if magic == _ICNS_MAGIC:
            fp.seek(start)
            return _icns_images(fp)
        return None
    finally:
        fp.seek(start)


def _ico_images(fp: BinaryIO, start: int) -> list[ImageHeader]:
    count = int.from_bytes(fp.read(2), "little")
    directory = fp.read(16 * count)
    found = []
    for i in range(len(directory) // 16):
        fp.seek(start + int.from_bytes(directory[16 * i + 12 : 16 * i + 16], "little"))
        is_png = fp.read(8) == _PNG_MAGIC
        fp.seek(-8, io.SEEK_CUR)
        try:  # the classes Pillow's ICO plugin reads its entries with, headers only
            image = PngImagePlugin.PngImageFile(fp) if is_png else BmpImagePlugin.DibImageFile(fp)
        except Exception:
            continue  # an entry Pillow cannot read either
        width, height = image.size if is_png else (image.size[0], image.size[1] // 2)  # XOR + AND masks
        found.append(ImageHeader(width, height, "PNG" if is_png else "BMP"))
    return found


def _icns_images(fp: BinaryIO) -> list[ImageHeader]:
    icns = IcnsImagePlugin.IcnsFile(fp)  # the block directory, no pixel data
    found = []
    for code in _ICNS_STREAM_TYPES:
        if code not in icns.dct:
            continue
        offset, length = icns.dct[code]
        fp.seek(offset)
        is_png = fp.read(8) == _PNG_MAGIC
        fp.seek(offset)
        try:  # as Pillow's ICNS plugin reads them, headers only
            if is_png:
                found.append(ImageHeader(*PngImagePlugin.PngImageFile(fp).size, "PNG"))
            else:
                stream = Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(fp.read(length)))
                found.append(ImageHeader(*stream.size, "JPEG2000"))
        except Exception:
            continue
    return found


def _load_path(
    source: str | os.PathLike, shown: str, max_pixels: int, fit: Fit | None, reduced_decode: bool
) -> Image.Image:
    # Open the file ourselves: OS errors get their own messages, and the handle is always closed.
    try:
        fp = open(source, "rb")  # noqa: SIM115 - closed by the with-block below
    except FileNotFoundError:
        raise ImageError(f"Image file not found: '{shown}'.") from None
    except IsADirectoryError:
        raise ImageError(f"'{shown}' is a directory, not an image file.") from None
    except PermissionError:
        raise ImageError(f"Cannot read '{shown}': permission denied.") from None
    except (OSError, ValueError) as exc:  # ValueError: e.g. a NUL character in the path
        raise ImageError(f"Cannot open '{shown}': {exc}.") from None
    with fp:
        try:
            empty = os.fstat(fp.fileno()).st_size == 0 and fp.peek(1) == b""
        except OSError:
            empty = False  # let the decoder report whatever is wrong
        if empty:
            raise ImageError(f"The file '{shown}' is empty (0 bytes), so it holds no image.")
        return _decode(fp, f"the file '{shown}'", max_pixels, fit, reduced_decode)


# Raster formats people tag (JPEG covers the MPO files phones write). Anything else (EPS/PS
# would run Ghostscript if installed, WMF, scientific containers) is refused as unidentified.
DECODABLE_FORMATS: tuple[str, ...] = (
    "PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "AVIF", "QOI", "TGA", "PPM",
    "ICO", "ICNS", "JPEG2000", "PCX", "SGI", "DDS", "PSD", "IM", "XBM",
)  # fmt: skip


def _decode(fp: BinaryIO, name: str, max_pixels: int, fit: Fit | None, reduced_decode: bool) -> Image.Image:
    with _decoding_errors(name, max_pixels):
        for embedded in embedded_images(fp) or ():  # before Image.open, which decodes an ICO's image
            _check_size((embedded.width, embedded.height), name, max_pixels)
    with _decoding_errors(name, max_pixels), Image.open(fp, formats=DECODABLE_FORMATS) as image:
        # Image.open reads only the header (and the first frame's position), so the size
        # checks inside _finish run before any pixel data is decompressed.
        return _finish(image, name, max_pixels, fit, own=reduced_decode)


def _finish(image: Image.Image, name: str, max_pixels: int, fit: Fit | None, own: bool) -> Image.Image:
    """A new RGB image, upright and fitted; ``own``: opened here, so its decoder may be told to reduce."""
    _check_size(image.size, name, max_pixels)
    with _decoding_errors(name, max_pixels):
        # Reducible formats keep EXIF in their header, so the orientation (hence the target) is
        # known before the decoder is told how far to reduce; others may keep it anywhere.
        reduce = own and fit is not None and image.format in _REDUCIBLE_FORMATS
        if not reduce:
            image.load()
        fix = _orientation_fix(image)
        upright = _upright_size(image.size, fix)
        width, height = upright if fit is None else (int(v) for v in fit(*upright))
        if width < 1 or height < 1:
            raise ValueError(f"fit returned {width}x{height} for a {upright[0]}x{upright[1]} image")
        target = (width, height)
        box = _reduce_while_decoding(image, fix, upright, target) if reduce else None
        image.load()  # already loaded unless reduced
        if fit is None and image.mode == "RGB" and "transparency" not in image.info:
            rgb = image.copy()  # nothing to convert: one copy, as small as it gets
            return rgb.transpose(fix) if fix is not None else rgb
        # Formats the decoder cannot shrink are box-averaged after conversion instead, under
        # the same margin (the web app's choice: the resize pass is a large part of their cost).
        shrink = own and fit is not None and box is None
        return _rgb_in_bands(image, fix, target, box, name, shrink)


def _upright_size(size: tuple[int, int], fix: Image.Transpose | None) -> tuple[int, int]:
    return (size[1], size[0]) if fix in _SWAPS_AXES else size


def _reduce_while_decoding(
    image: Image.Image, fix: Image.Transpose | None, upright: tuple[int, int], target: tuple[int, int]
) -> tuple[float, float, float, float] | None:
    """Ask a JPEG decoder for a smaller image (DCT scaling), keeping ``REDUCED_DECODE_MARGIN``
    pixels per output pixel; the region of the reduced (upright) image covering the original, or
    None if nothing changed. (JPEG 2000 could reduce by resolution levels, but the web app caps
    it below the sizes where that applies: ``tagger.datasets.pixel_caps``.)"""
    factor = min(upright[0] / target[0], upright[1] / target[1]) / REDUCED_DECODE_MARGIN
    if factor < 2 or len(getattr(image, "tile", ())) != 1:
        return None
    width, height = image.size
    stored_target = (target[1], target[0]) if fix in _SWAPS_AXES else target
    request = (stored_target[0] * REDUCED_DECODE_MARGIN, stored_target[1] * REDUCED_DECODE_MARGIN)
    if image.draft(None, request) is None:
        return None
    scale = width / image.size[0] if image.size[0] else 1
    scale = 2 ** round(np.log2(max(scale, 1)))  # 1, 2, 4 or 8
    # The decoders round the reduced size up, so its last column and row are partly outside.
    covered = (0, 0, min(width / scale, image.size[0]), min(height / scale, image.size[1]))
    return _upright_box(fix, covered, image.size)


def _upright_box(
    fix: Image.Transpose | None, box: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Where the region ``box`` of an image of ``size`` lies once ``fix`` is applied."""
    left, top, right, bottom = box
    width, height = size
    boxes = {
        None: box,
        Image.Transpose.FLIP_LEFT_RIGHT: (width - right, top, width - left, bottom),
        Image.Transpose.ROTATE_180: (width - right, height - bottom, width - left, height - top),
        Image.Transpose.FLIP_TOP_BOTTOM: (left, height - bottom, right, height - top),
        Image.Transpose.TRANSPOSE: (top, left, bottom, right),
        Image.Transpose.ROTATE_270: (height - bottom, left, height - top, right),
        Image.Transpose.TRANSVERSE: (height - bottom, width - right, height - top, width - left),
        Image.Transpose.ROTATE_90: (top, width - right, bottom, width - left),
    }
    return boxes[fix]


def _rgb_in_bands(
    image: Image.Image,
    fix: Image.Transpose | None,
    target: tuple[int, int],
    box: tuple[float, float, float, float] | None,
    name: str,
    shrink: bool = False,
) -> Image.Image:
    """RGB at ``target`` size, converted and resized band by band: no full-size copy in another mode.
    Pillow's Lanczos resize is a horizontal pass, an 8-bit intermediate, then a vertical pass,
    and each row of the horizontal pass depends on that row only: bands converted, resized
    horizontally and stacked are exactly one full resize's intermediate, so the result is the
    same pixels. ``shrink``: box-average each band first by whole factors keeping
    ``REDUCED_DECODE_MARGIN`` (bands are whole multiples of the vertical factor, so this equals
    one ``Image.reduce`` of the whole image); not exact."""
    width, height = _upright_size(image.size, fix)
    left, top, right, bottom = box if box is not None else (0, 0, width, height)
    out_width, out_height = target
    fx, fy = (_box_factor(width, out_width), _box_factor(height, out_height)) if shrink else (1, 1)
    left, right, top, bottom = left / fx, right / fx, top / fy, bottom / fy
    width_in, height_in = -(-width // fx), -(-height // fy)  # Image.reduce rounds up
    horizontal = (out_width, left, right) != (width_in, 0, width_in)
    vertical = (out_height, top, bottom) != (height_in, 0, height_in)
    stats = _grey_stats(image) if image.mode in ("I", "F") else None
    rows = max(1, BAND_PIXELS // max(width, 1) // fy) * fy
    stacked = Image.new("RGB", (out_width if horizontal else width_in, height_in))
    for y in range(0, height, rows):
        # The region of the stored image that becomes these rows of the upright one.
        band = image.crop(_upright_box(_INVERSE.get(fix, fix), (0, y, width, min(y + rows, height)), (width, height)))
        if fix is not None:
            band = band.transpose(fix)
        rgb = to_rgb(band, name, stats)
        if fx > 1 or fy > 1:
            rgb = rgb.reduce((fx, fy))
        if horizontal:
            rgb = rgb.resize((out_width, rgb.height), Image.Resampling.LANCZOS, box=(left, 0, right, rgb.height))
        stacked.paste(rgb, (0, y // fy))
        del band, rgb
    if not vertical:
        return stacked
    return stacked.resize((out_width, out_height), Image.Resampling.LANCZOS, box=(0, top, stacked.width, bottom))


def _box_factor(length: int, out: int) -> int:
    """The whole factor a side may be box-averaged by before Lanczos (1: none)."""
    factor = length // (out * REDUCED_DECODE_MARGIN)
    return factor if factor >= 2 else 1


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"Could not read {name}: the image has zero size ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageError(
            f"Could not read {name}: the image is {width}x{height} ({width * height:,} pixels), more than "
            f"the limit of {max_pixels:,} pixels (a guard against decompression bombs)."
        )


@contextmanager
def _decoding_errors(name: str, max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises while decoding into an ImageError with a readable sentence."""
    try:
        # Our max_pixels check replaces Pillow's DecompressionBombWarning (issued above ~89.5 M
        # pixels, under our default). Before Python 3.14 catch_warnings swaps a process-wide list:
        # concurrent threads may leave this "ignore" in place longer, harmless for this warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own bomb guard fires in Image.open when the header declares more than
        # 2 x Image.MAX_IMAGE_PIXELS (the warning too, if warnings are turned into errors).
        raise ImageError(_bomb_message(name, exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(f"Could not read {name}: it is not an image, or its format is not supported.") from None
    except MemoryError:
        raise ImageError(f"Could not read {name}: there is not enough memory to decode it.") from None
    except Exception as exc:
        # Pillow signals broken data with OSError, SyntaxError, ValueError, EOFError, struct.error...
        detail = str(exc) or type(exc).__name__
        raise ImageError(f"Could not read {name}: the image data is truncated or corrupt ({detail}).") from None


def _bomb_message(name: str, exc: BaseException, max_pixels: int) -> str:
    found = _BOMB_NUMBERS.search(str(exc))
    if found is None:
        return f"Could not read {name}: Pillow refused it as a possible decompression bomb ({exc})."
    pixels, pillow_limit = int(found.group(1)), int(found.group(2))
    if pixels > max_pixels:
        limit = f"the limit of {max_pixels:,} pixels"
    else:  # allowed by us, but above Pillow's process-wide limit
        limit = f"Pillow's limit of {pillow_limit:,} pixels (raise PIL.Image.MAX_IMAGE_PIXELS to allow it)"
    return f"Could not read {name}: the image has {pixels:,} pixels, more than {limit}; it may be a decompression bomb."


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied, from the header alone."""
    return _upright_size(image.size, _orientation_fix(image))


def _orientation_fix(image: Image.Image) -> Image.Transpose | None:
    """The transpose that makes the image upright by its EXIF orientation (None: it is)."""
    # Broken EXIF must not make an otherwise good image unreadable: treat it as upright.
    try:
        return _ORIENTATION_FIX.get(int(image.getexif().get(_EXIF_ORIENTATION, 1)))
    except Exception:
        return None


def to_rgb(image: Image.Image, name: str = "the image", stats: tuple[float, float] | None = None) -> Image.Image:
    """A new RGB image; transparency is composited onto white, wide grey scaled to 8 bit.
    ``stats``: the whole image's (min, max) for modes I and F when ``image`` is one band of it."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy()
    if mode in _WIDE_GREY_MODES:  # Pillow's own convert() clips these at 255, turning most 16-bit images white
        values = np.asarray(image)
        grey = _scale_to_uint8(image, values, stats)
        transparent = image.info.get("transparency")
        if isinstance(transparent, (int, float)):  # PNG tRNS for grey: one sample value is see-through
            alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
            return _on_white(Image.fromarray(np.dstack([grey, grey, grey, alpha])))
        return Image.fromarray(np.dstack([grey, grey, grey]))
    try:
        if mode == "La":  # Pillow converts premultiplied La only to LA
            image = image.convert("LA")
            mode = "LA"
        # Palette images go through RGBA too: their alpha may sit in the palette, not in info.
        if mode in _ALPHA_MODES or mode == "P" or "transparency" in image.info:
            return _on_white(image if mode == "RGBA" else image.convert("RGBA"))
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(
            f"Could not read {name}: its colour mode {mode!r} cannot be converted to RGB ({exc})."
        ) from None


def _grey_stats(image: Image.Image) -> tuple[float, float]:
    """(min, max) of a mode I or F image as ``_scale_to_uint8`` sees it, read band by band."""
    low, high = np.inf, -np.inf
    rows = max(1, BAND_PIXELS // max(image.width, 1))
    for y in range(0, image.height, rows):
        values = np.asarray(image.crop((0, y, image.width, min(y + rows, image.height))))
        if image.mode == "F":
            values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return (low, high) if low <= high else (0.0, 0.0)


def _scale_to_uint8(image: Image.Image, values: np.ndarray, stats: tuple[float, float] | None) -> np.ndarray:
    """``values`` (``image``'s pixels) as 8-bit grey; ``stats``: as in ``to_rgb``."""
    if image.mode.startswith("I;16"):  # the bit depth is known: 0..65535
        return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
    low, high = stats or _grey_stats(image)
    if image.mode == "F":
        # Float images carry no nominal range: [0, 1] when the data fits it, else 0..255 like Pillow.
        data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if data.size and low >= 0.0 and high <= 1.0:
            data = data * 255.0
        return np.rint(np.clip(data, 0.0, 255.0)).astype(np.uint8)
    # Mode "I" (32-bit signed) has no nominal range either: 8-bit data stays as is, 16-bit data
    # (older Pillow opened 16-bit PNGs as "I") is scaled, anything wider is stretched to its range.
    data = values.astype(np.float64)
    if low >= 0 and high <= 255:
        return data.astype(np.uint8)
    if low >= 0 and high <= 65535:
        return np.rint(data / 257.0).astype(np.uint8)
    scale = 255.0 / (high - low) if high > low else 0.0  # one negative or huge value everywhere: black
    return np.rint((data - low) * scale).astype(np.uint8)


def _on_white(rgba: Image.Image) -> Image.Image:
    """Straight-alpha RGBA blended onto white: pasting with an alpha mask computes
    (c·a + 255·(255 − a)) / 255 rounded to nearest, exactly (checked for every c, a)."""
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _from_array(array: np.ndarray, name: str, max_pixels: int) -> Image.Image:
    shape = array.shape
    if not (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))):
        raise ImageError(
            f"Could not read {name}: shape {shape} is not an image; expected HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA)."
        )
    _check_size((shape[1], shape[0]), name, max_pixels)
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_to_uint8(array, name)
    else:
        raise ImageError(
            f"Could not read {name}: dtype {array.dtype} is not supported; use uint8 (0-255) or float (0-1)."
        )
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return _on_white(Image.fromarray(pixels))  # a new image: no memory shared with the caller
    if pixels.ndim == 2 or pixels.shape[2] == 1:
        pixels = np.repeat(pixels.reshape(shape[0], shape[1], 1), 3, axis=2)
    # A private C-ordered copy: the image must not share memory with the caller's array.
    return Image.fromarray(np.array(pixels, dtype=np.uint8, order="C", copy=True))


def _float_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    data = array.astype(np.float64)
    if not np.isfinite(data).all():
        raise ImageError(f"Could not read {name}: it contains NaN or infinite values.")
    low, high = float(data.min()), float(data.max())
    tolerance = 1.0 / 512  # under half an 8-bit step: absorbs float rounding, not wrong scales
    if low < -tolerance or high > 1.0 + tolerance:
        raise ImageError(
            f"Could not read {name}: float pixels must lie in [0, 1], but they range from {low:g} to {high:g}."
        )
    return np.rint(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8)
