"""PCA false colour of the final patch features: what the backbone sees.

``analyse`` is model work, a function of ``(tagger, pixels)`` so that ``ModelRunner.call`` runs
it inside one GPU call; the image shown beside it (``FeatureMaps.of``), colouring and overlays
are numpy on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from tagger.engine.tagger import Tagger, gpu_cost
from tagger.errors import FeatureError
from tagger.features.overlay import alpha_blend, parse_colour, pixels_to_image, to_uint8, upscale

DEFAULT_COLOURS: tuple[str, str, str] = ("#ff4d4d", "#4dff88", "#4d79ff")


def _top_right_vectors(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` leading right singular vectors ``[k, C]`` of ``x`` ``[N, C]``: an exact SVD for small
    CPU matrices; on a GPU, where cuSOLVER's SVD of a 1024-pixel image's 4096 × 1280 features is
    slow, the eigenvectors of the Gram matrix ``xᵀx`` (``_gram_eigenvectors``); for a large CPU
    matrix (many seconds exactly), a randomised range finder with power iterations from a fixed
    seed (like ``torch.pca_lowrank``, but seeded, hence deterministic, and with more iterations
    for closely spaced components)."""
    if x.is_cuda:
        return _gram_eigenvectors(x, k)
    if min(x.shape) <= 256:
        return torch.linalg.svd(x, full_matrices=False).Vh[:k]
    n, c = x.shape
    width = min(k + 10, n, c)
    generator = torch.Generator().manual_seed(0)
    y = x @ torch.randn(c, width, generator=generator).to(x.device)
    for _ in range(6):
        y = x @ torch.linalg.qr(x.T @ torch.linalg.qr(y).Q).Q
    basis = torch.linalg.qr(y).Q  # [N, width], spans the leading left singular vectors
    return torch.linalg.svd(basis.T @ x, full_matrices=False).Vh[:k]


def _gram_eigenvectors(x: torch.Tensor, k: int) -> torch.Tensor:
    """Right singular vectors as eigenvectors of ``xᵀx``, largest first. Forming the Gram
    matrix squares the condition number, so it is formed and solved in float64 (exact for
    the leading components of float32 features)."""
    x64 = x.double()
    _, vectors = torch.linalg.eigh(x64.T @ x64)  # eigenvalues ascending
    return vectors[:, -k:].flip(-1).T.to(x.dtype)


def pca_components(features: np.ndarray | torch.Tensor, k: int = 3) -> np.ndarray:
    """Scores of the first ``k`` principal components of patch features ``[h, w, C]`` → float32
    ``[h, w, k]`` (zeros where the data has fewer). A component's sign is arbitrary in any SVD, so
    each is flipped to make its largest absolute loading positive: same features, same colours."""
    x = torch.as_tensor(features)
    if x.ndim != 3:
        raise ValueError(f"features must be [h, w, C], got shape {tuple(x.shape)}.")
    h, w, c = x.shape
    flat = x.reshape(h * w, c).float()
    flat = flat - flat.mean(dim=0, keepdim=True)
    scores = torch.zeros(h * w, k, device=flat.device)
    usable = min(k, h * w, c)
    if usable and torch.any(flat != 0):
        v = _top_right_vectors(flat, usable)
        sign = torch.sign(v.gather(1, v.abs().argmax(dim=1, keepdim=True)))
        v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
        scores[:, :usable] = flat @ v.T
    return scores.reshape(h, w, k).cpu().numpy()


def pca_rgb(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """False colour of patch features ``[h, w, C]``: components 1-3 → R, G, B, each min-max
    scaled to [0, 1] over the image (a constant component becomes 0). Float32 ``[h, w, 3]``."""
    values = pca_components(features, 3)
    low = values.min(axis=(0, 1), keepdims=True)
    span = values.max(axis=(0, 1), keepdims=True) - low
    return np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def color_blend(components: np.ndarray, colours: Sequence[str | Sequence[float]]) -> np.ndarray:
    """Mix one colour per [0, 1] component (``pca_rgb``): ``Σ_i component_i · colour_i`` ``[h, w, 3]``.
    Where the weights add up to more than 1 the mix is divided by their sum, so bright colours
    never clip to white and a pixel carried by one component shows exactly that component's colour."""
    components = np.asarray(components, dtype=np.float32)
    if components.ndim != 3 or components.shape[-1] != len(colours):
        raise FeatureError(f"Need one colour per component: {components.shape[-1]} components, {len(colours)} colours.")
    palette = np.stack([parse_colour(c) for c in colours])  # [k, 3]
    mixed = components @ palette
    total = components.sum(axis=-1, keepdims=True)
    return (mixed / np.maximum(total, 1.0)).astype(np.float32)


@dataclass
class PatchAnalysis:
    """What the model work of one image returns: its PCA colours and tag probabilities."""

    pca: np.ndarray  # float32 [H/16, W/16, 3] in [0, 1]
    probabilities: np.ndarray  # float32 [num_tags]


@dataclass
class FeatureMaps(PatchAnalysis):
    """One image's analysis together with the image the model saw."""

    image: np.ndarray  # uint8 [H, W, 3], the resized image

    @classmethod
    def of(cls, pixels: torch.Tensor, analysis: PatchAnalysis) -> FeatureMaps:
        """Join ``analyse``'s result with the image from the uint8 pixels (on the CPU, outside the GPU call)."""
        return cls(analysis.pca, analysis.probabilities, pixels_to_image(pixels))


@gpu_cost(1.5)  # one forward pass, plus an SVD of at most 4096 x 1280 patch features
def analyse(tagger: Tagger, pixels: Sequence[torch.Tensor]) -> list[PatchAnalysis]:
    """PCA colours and tag probabilities from ONE forward pass per batch: both come from the
    same final-norm tokens (each image's own patch grid → PCA, CLS + registers → head). The
    PCA runs where the model runs, so on a GPU the SVD costs milliseconds."""
    model = tagger.model
    out: list[PatchAnalysis | None] = [None] * len(pixels)
    with torch.inference_mode():
        for idx, images in tagger.batches(pixels):
            tokens = model.tokens(images)
            probabilities = torch.sigmoid(model.head(model.descriptor_from_tokens(tokens))).float().cpu().numpy()
            for i, grid, row in zip(idx, model.patch_grids(tokens, images), probabilities, strict=True):
                out[i] = PatchAnalysis(pca_rgb(grid), row)
    return cast(list[PatchAnalysis], out)  # every image is in one of the batches


def pca_images(
    maps: FeatureMaps,
    colours: Sequence[str | Sequence[float]] = DEFAULT_COLOURS,
    alpha: float = 0.5,
    resample: str = "nearest",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PCA map, PCA map over the image, colour blend), uint8 at the image's size. The blend
    mixes the first ``len(colours)`` components (one colour stop each, 1 to 3)."""
    size = (maps.image.shape[1], maps.image.shape[0])
    pca = to_uint8(upscale(maps.pca, size, resample))
    blend = to_uint8(upscale(color_blend(maps.pca[..., : max(len(colours), 1)], colours), size, resample))
    return pca, alpha_blend(maps.image, pca, alpha), blend
