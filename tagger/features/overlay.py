"""Pixels, colours and overlays for the feature views: plain numpy / Pillow on the CPU.

Shared by the PCA and relevance views (``tagger.features.pca``, ``tagger.features.relevance``) and the UI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from tagger.errors import FeatureError, shorten

RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def pixels_to_image(pixels: torch.Tensor) -> np.ndarray:
    """Prepared uint8 ``[3, H, W]`` pixels (``Tagger.prepare``) as the RGB image the model saw ``[H, W, 3]``."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels_to_image expects the uint8 pixels of Tagger.prepare, not {pixels.dtype}.")
    return np.ascontiguousarray(pixels.cpu().numpy().transpose(1, 2, 0))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → uint8 (clipped)."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def upscale(grid: np.ndarray, size: tuple[int, int], resample: str = "nearest") -> np.ndarray:
    """A float patch map ``[h, w]`` or ``[h, w, k]`` resized to ``size = (width, height)``, each
    channel through Pillow as a 32-bit float image, so no precision is lost to uint8."""
    if resample not in RESAMPLING:
        raise FeatureError(f"Unknown upscaling {resample!r}; use one of: {', '.join(RESAMPLING)}.")
    grid = np.asarray(grid, dtype=np.float32)
    channels = grid[..., None] if grid.ndim == 2 else grid
    resized = [
        np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., i]), mode="F").resize(size, RESAMPLING[resample]))
        for i in range(channels.shape[-1])
    ]
    out = np.stack(resized, axis=-1)
    return out[..., 0] if grid.ndim == 2 else out


_HEX_COLOUR = re.compile(r"#?([0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})", re.IGNORECASE)
_RGB_COLOUR = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+%?\s*)?\)", re.IGNORECASE)


def parse_colour(value: str | Sequence[float]) -> np.ndarray:
    """``"#rrggbb"``, ``"#rgb"``, ``"#rrggbbaa"``, ``"rgb(r, g, b)"`` / ``"rgba(...)"`` (0-255, as
    colour pickers send them) or three 0-255 numbers → float32 RGB in [0, 1]; alpha is ignored."""
    rgb: list[float]
    if isinstance(value, str):
        text = value.strip()
        if match := _HEX_COLOUR.fullmatch(text):
            digits = match.group(1)
            if len(digits) == 3:
                digits = "".join(d * 2 for d in digits)
            rgb = [int(digits[i : i + 2], 16) for i in (0, 2, 4)]
        elif match := _RGB_COLOUR.fullmatch(text):
            rgb = [float(g) for g in match.groups()]
        else:
            raise FeatureError(
                f"{shorten(repr(value), 80)} is not a colour; use #rrggbb (e.g. #ff8800) or rgb(255, 136, 0)."
            )
    else:
        try:
            rgb = [float(v) for v in value]
        except (TypeError, ValueError):  # None from a raw API call, a number, a list of words
            raise FeatureError(f"{shorten(repr(value), 80)} is not a colour; use #rrggbb (e.g. #ff8800).") from None
        if len(rgb) != 3:
            raise FeatureError(f"A colour needs three values (red, green, blue), not {len(rgb)}.")
    array = np.asarray(rgb, dtype=np.float32)
    if not np.all((array >= 0) & (array <= 255)):
        raise FeatureError(f"Colour values must lie between 0 and 255: {value!r}.")
    return array / 255.0


def alpha_blend(image: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) · image + alpha · overlay`` for uint8 RGB images of the same size."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise FeatureError(f"alpha must be a number between 0 and 1, not {alpha!r}.") from None
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise FeatureError(f"alpha must be between 0 and 1, not {alpha}.")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * overlay.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


# A 5-stop approximation of matplotlib's "inferno": black → purple → red → orange → pale yellow.
_INFERNO_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
_STOP_LEVELS = np.linspace(0, 1, len(_INFERNO_STOPS))
COLORMAP_LUT: np.ndarray = np.rint(
    np.stack([np.interp(np.linspace(0, 1, 256), _STOP_LEVELS, _INFERNO_STOPS[:, ch]) for ch in range(3)], axis=-1)
).astype(np.uint8)  # [256, 3]


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) → uint8 RGB ``[..., 3]`` through the inferno-like LUT."""
    index = np.rint(np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0, 1) * 255).astype(np.intp)
    return COLORMAP_LUT[index]
