"""Exact batching of mixed sizes: a padded batch gives every image its result alone.

Images of different sizes share a forward pass padded to the longest token sequence, each with
the RoPE coordinates of its own grid and padded keys masked out of attention. Checked against
one image at a time on random sizes (tall, wide, tiny, 1024 px) for probabilities, descriptors,
patch features, PCA and relevance, in fp32 and bf16; and the grouping by token count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import patch_features

from tagger.engine.tagger import Tagger, plan_batches
from tagger.engine.weights import load_model
from tagger.features.pca import analyse
from tagger.features.relevance import capture_block_input, relevance

# (width, height) before resizing to max_size 1024: tall, wide, tiny, 1024 px and in between.
FIXED_SIZES = [(40, 1000), (1000, 40), (10, 10), (1024, 768), (300, 200), (16, 16)]


def random_sizes(seed: int, count: int = 5) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(8, 1100)), int(rng.integers(8, 1100))) for _ in range(count)]


@pytest.fixture(scope="module")
def images(make_image) -> list:
    return [make_image(w, h, seed=i) for i, (w, h) in enumerate(FIXED_SIZES + random_sizes(7, count=3))]


def make_tagger(tiny_files, dtype: str, **kwargs) -> Tagger:
    checkpoint, vocab = tiny_files
    return Tagger(checkpoint, vocab, device="cpu", dtype=dtype, max_size=1024, **kwargs)


@pytest.fixture(scope="module")
def mixed(tiny_files) -> Tagger:
    """Batches anything together: every batch of mixed sizes is padded and masked."""
    return make_tagger(tiny_files, "fp32", max_batch_size=64, max_padding=math.inf)


@pytest.fixture(scope="module")
def single(tiny_files) -> Tagger:
    return make_tagger(tiny_files, "fp32", max_batch_size=1)


def test_mixed_sizes_in_one_pass_give_each_image_its_own_probabilities(mixed, single, images, count_passes):
    pixels = [mixed.prepare(image) for image in images]
    assert len({tuple(p.shape) for p in pixels}) == len(pixels) - 1  # 10 × 10 and 16 × 16 are one patch
    counted = count_passes(mixed)
    batched = mixed.run(pixels)
    assert counted.passes == 1
    alone = single.run(pixels)
    assert np.abs(batched - alone).max() <= 1e-5
    np.testing.assert_allclose(mixed.run_descriptors(pixels), single.run_descriptors(pixels), rtol=0, atol=1e-5)


def test_bf16_mixed_batch_is_within_bf16_tolerance(tiny_files, single, images):
    mixed_bf16 = make_tagger(tiny_files, "bf16", max_batch_size=64, max_padding=math.inf)
    single_bf16 = make_tagger(tiny_files, "bf16", max_batch_size=1)
    pixels = [mixed_bf16.prepare(image) for image in images[:4]]  # tall, wide, tiny, 1024 px
    batched, alone, exact = mixed_bf16.run(pixels), single_bf16.run(pixels), single.run(pixels)
    # The tolerance bf16 already has against fp32 (tests/test_predict.py), for batched and alone.
    assert np.abs(alone - exact).max() <= 0.05
    assert np.abs(batched - exact).max() <= 0.05
    assert np.abs(batched - alone).max() <= 0.05
    # Padding changes a bf16 result by less than bf16 itself does (measured: 4e-4 against 2e-3).
    assert np.abs(batched - alone).max() <= np.abs(alone - exact).max()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sizes_and_batch_splits(tiny_files, single, make_image, seed):
    tagger = make_tagger(tiny_files, "fp32", max_batch_size=3, max_padding=0.5)
    sizes = random_sizes(seed, count=7)
    pixels = [tagger.prepare(make_image(w, h, seed=seed * 10 + i)) for i, (w, h) in enumerate(sizes)]
    assert np.abs(tagger.run(pixels) - single.run(pixels)).max() <= 1e-5


def test_patch_features_pca_and_relevance_crop_each_images_own_grid(mixed, single, images):
    pixels = [mixed.prepare(image) for image in images[:6]]
    together, alone = patch_features(mixed, pixels), patch_features(single, pixels)
    for image, a, b in zip(pixels, together, alone, strict=True):
        assert a.shape == b.shape == (image.shape[1] // 16, image.shape[2] // 16, 128)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    for a, b in zip(analyse(mixed, pixels), analyse(single, pixels), strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.pca, b.pca, rtol=0, atol=1e-3)
    small = pixels[:3] + pixels[4:]  # relevance's backward pass: skip the 1024 px image
    for a, b in zip(relevance(mixed, small, 7, 2), relevance(single, small, 7, 2), strict=True):
        assert a.map.shape == b.map.shape
        # Gradient × activation sums small terms of both signs: fp32 rounding shows at ~1e-4 of
        # the peak (exact in float64, see the next test).
        np.testing.assert_allclose(a.map, b.map, rtol=0, atol=1e-3)
        assert a.probability == pytest.approx(b.probability, abs=1e-5)


def test_padding_changes_nothing_in_float64_forward_or_backward(tiny_files):
    """In float64 rounding vanishes: padded tokens and block-input gradients equal the image alone."""
    model = load_model(tiny_files[0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    sizes = [(48, 80), (160, 96), (16, 16)]
    images = [torch.randn(3, h, w, generator=generator, dtype=torch.float64) for h, w in sizes]
    weights = torch.randn(model.config.descriptor_dim, generator=generator, dtype=torch.float64)

    def run(batch: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.enable_grad(), capture_block_input(model, 1) as captured:
            tokens = model.tokens(batch)
            (grad,) = torch.autograd.grad((model.descriptor_from_tokens(tokens) @ weights).sum(), captured[0])
        grids = model.patch_grids(tokens, batch)
        own_tokens = [torch.cat([t[:5].flatten(), g.flatten()]) for t, g in zip(tokens, grids, strict=True)]
        return own_tokens, model.patch_grids(grad, batch)

    together = run(images)
    for i, image in enumerate(images):
        alone = run([image])
        torch.testing.assert_close(together[0][i], alone[0][0], rtol=0, atol=1e-12)
        torch.testing.assert_close(together[1][i], alone[1][0], rtol=0, atol=1e-12)


def test_only_padded_batches_are_masked(mixed, make_image, monkeypatch):
    masks: list[torch.Tensor | None] = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    same = [mixed.prepare(make_image(64, 48, seed=i)) for i in range(3)]
    same_tokens = [mixed.prepare(make_image(w, h, seed=9)) for w, h in [(64, 48), (48, 64), (192, 16)]]
    padded = [mixed.prepare(make_image(w, h, seed=9)) for w, h in [(64, 48), (32, 32)]]
    for pixels, masked in [(same, False), (same_tokens, False), (padded, True)]:
        masks.clear()
        mixed.run(pixels)
        assert masks and all((m is not None) is masked for m in masks)
    assert masks[0].shape == (2, 1, 1, 5 + 12)  # [batch, heads, queries, keys]: real keys per image
    # Shortest first: the 2 × 2 patch image has 5 + 4 real keys, the 4 × 3 one all 17.
    assert masks[0][0, 0, 0].tolist() == [True] * (5 + 4) + [False] * 8 and bool(masks[0][1].all())


def test_plan_groups_by_token_count_and_reports_the_padding():
    lengths = [17, 1029, 13, 17, 1000, 261, 1029]
    batches = plan_batches(lengths, max_batch_size=4, max_padding=0.0)
    assert [b.indices for b in batches] == [[2], [0, 3], [5], [4], [1, 6]]
    assert all(b.padded_tokens == b.tokens and not b.masked for b in batches)
    # Runs of equal counts filling half a batch stay unmasked; the rest is pooled with padding.
    lengths = [17, 1029, 13, 17, 1000, 261, 1029, 14]
    batches = plan_batches(lengths, max_batch_size=4, max_padding=0.2)
    assert [b.indices for b in batches] == [[2, 7], [0, 3], [5], [4], [1, 6]]
    assert [(b.tokens, b.padded_tokens) for b in batches] == [
        (27, 28),
        (34, 34),
        (261, 261),
        (1000, 1000),
        (2058, 2058),
    ]
    assert [b.masked for b in batches] == [True, False, False, False, False]
    for b in batches:
        assert b.padded_tokens <= 1.2 * b.tokens
    assert [b.indices for b in plan_batches(lengths, max_batch_size=8, max_padding=math.inf)] == [
        [2, 7, 0, 3, 5, 4, 1, 6]
    ]
    assert plan_batches([], 4, 0.0) == []


def test_equal_token_counts_fill_unmasked_batches_before_any_padding():
    """A phone-photo mix: 3:4 and 4:3 photos have equal token counts (48 × 64 and 64 × 48
    patches), so they share passes without a mask; only the odd sizes are padded."""
    portrait, landscape, square, tall, odd = 5 + 48 * 64, 5 + 64 * 48, 5 + 64 * 64, 5 + 36 * 64, 5 + 47 * 64
    lengths = [portrait] * 10 + [landscape] * 9 + [square] * 8 + [tall] * 3 + [odd]
    batches = plan_batches(lengths, max_batch_size=16, max_padding=0.25)
    assert sorted(i for b in batches for i in b.indices) == list(range(len(lengths)))
    unmasked = [b for b in batches if not b.masked]
    assert [len(b.indices) for b in unmasked] == [16, 8]  # 19 of 3:4 + 4:3 in 16 + 3, then the 8 squares
    assert sum(len(b.indices) for b in unmasked) == 24
    assert all(b.padded_tokens <= 1.25 * b.tokens and len(b.indices) <= 16 for b in batches)


def test_tagger_plan_is_what_run_does(tiny_files, make_image, count_passes):
    tagger = make_tagger(tiny_files, "fp32", max_batch_size=8, max_padding=0.25)
    pixels = [tagger.prepare(make_image(w, h, seed=1)) for w, h in [(64, 48), (64, 64), (32, 32), (64, 48)]]
    plan = tagger.plan(pixels)  # 12 + 16 patches fit in one batch, 4 does not join them
    assert [b.indices for b in plan] == [[2], [0, 3, 1]]
    assert sum(b.padded_tokens for b in plan) / sum(b.tokens for b in plan) - 1 == pytest.approx(8 / 64)
    counted = count_passes(tagger)
    tagger.run(pixels)
    assert counted.passes == len(plan)
