"""Resize and normalise a decoded image the way the authors' model expects.

``resize`` (the reference size rule, Lanczos) → uint8 ``[3, H, W]``; ``normalise`` runs later,
on the model's device; ``preprocess`` is both, on the CPU; ``Preprocessor`` decodes and resizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from tagger.engine.decode import MAX_IMAGE_PIXELS, ImageSource, load_image, to_rgb

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Built once: torchvision's Normalize turns the tuples into float32 tensors the same way.
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]


def _check_sizes(max_size: int, patch: int) -> None:
    if patch < 1:
        raise ValueError(f"patch must be at least 1, got {patch}")
    if max_size < patch:
        raise ValueError(f"max_size must be at least the patch size ({patch}), got {max_size}")


def target_size(width: int, height: int, max_size: int = 1024, patch: int = 16) -> tuple[int, int]:
    """The (width, height) the model sees, by the authors' rule: the long edge capped at ``max_size``
    and floored to a multiple of ``patch``; with scale = that edge / the long edge, each side
    ``max(patch, round(side · scale))`` floored to a multiple of ``patch``. Never larger than the
    input, except that a side shorter than one patch becomes one."""
    _check_sizes(max_size, patch)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    long_edge = max(width, height)
    target = max(patch, min(long_edge, max_size) // patch * patch)
    scale = target / long_edge

    def side(length: int) -> int:
        # Python's round (half to even), as in the authors' script.
        return max(patch, round(length * scale)) // patch * patch

    return side(width), side(height)


def resize(image: Image.Image, max_size: int = 1024, patch: int = 16) -> torch.Tensor:
    """Resize (Lanczos) to ``target_size`` → contiguous uint8 ``[3, H, W]``, not yet normalised.
    The image should come from ``load_image``; other modes are converted to RGB the same way."""
    if image.mode != "RGB" or "transparency" in image.info:
        image = to_rgb(image)
    size = target_size(image.width, image.height, max_size, patch)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    # np.array copies: torch wants a writable array.
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` → ImageNet-normalised float32 on the pixels' device: torchvision's
    ``ToTensor`` + ``Normalize`` step for step, each one correctly rounded float32 operation, so
    bit-identical with the authors' pipeline on any device."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"normalise expects uint8 pixels (from Tagger.prepare), not {pixels.dtype}.")
    mean, std = _MEAN.to(pixels.device, non_blocking=True), _STD.to(pixels.device, non_blocking=True)
    return pixels.float().div(255).sub(mean).div(std)


def preprocess(image: Image.Image, max_size: int = 1024, patch: int = 16) -> torch.Tensor:
    """``resize`` then ``normalise`` on the CPU → contiguous float32 ``[3, H, W]``."""
    return normalise(resize(image, max_size, patch))


def image_to_pixels(
    source: ImageSource,
    max_size: int = 1024,
    patch: int = 16,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    reduced_decode: bool = False,
    name: str | None = None,
) -> torch.Tensor:
    """``load_image`` then ``resize``: any supported input → uint8 ``[3, H, W]`` for ``normalise``,
    resized while converted (``fit``): the same pixels, without a second full-size copy."""
    _check_sizes(max_size, patch)  # fail on bad settings before decoding anything
    image = load_image(
        source,
        max_pixels,
        fit=lambda width, height: target_size(width, height, max_size, patch),
        reduced_decode=reduced_decode,
        name=name,
    )
    return resize(image, max_size, patch)


class Prepare(Protocol):
    """Decode and resize one image (``Tagger.prepare``, a ``Preprocessor``); ``name``: what errors call it."""

    def __call__(self, source: ImageSource, /, *, name: str | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Preprocessor:
    """``image_to_pixels`` with a model's settings (``Tagger.prepare``); picklable, so decoding
    processes and Ray tasks run the very same preprocessing without the model."""

    max_size: int = 1024
    patch: int = 16
    reduced_decode: bool = False

    def __call__(self, source: ImageSource, name: str | None = None) -> torch.Tensor:
        return image_to_pixels(source, self.max_size, self.patch, reduced_decode=self.reduced_decode, name=name)
