"""PCA false colour, per-tag relevance maps and descriptor similarity: engine and endpoints.

Engine tests use the tiny random checkpoints (no download); the end-to-end tests start the
real app in demo mode and call ``/pca``, ``/heatmap``, ``/similarity`` and
``/similarity_batch`` over HTTP, counting GPU calls (``ModelRunner.call``) per request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import ForwardPasses, image_bytes, patch_features, write_zip

from tagger.engine.model import TaggerConfig, TaggerModel
from tagger.engine.preprocess import normalise
from tagger.engine.synthetic import write_random_checkpoint
from tagger.engine.tagger import Tagger
from tagger.errors import FeatureError
from tagger.features.overlay import colormap, parse_colour, upscale
from tagger.features.pca import FeatureMaps, analyse, color_blend, pca_components, pca_images, pca_rgb
from tagger.features.relevance import (
    DEFAULT_LAYERS_FROM_END,
    capture_block_input,
    heatmap_images,
    relevance,
    resolve_tag,
    tap_block,
)
from tagger.features.similarity import batch_similarity, cosine_similarity, parse_url_pairs
from tagger.web.tabs.similarity import score_url_pairs, summary_markdown

MakeImage = Callable[..., Image.Image]


@pytest.fixture(scope="module")
def deep_tagger(tmp_path_factory: pytest.TempPathFactory, tiny_files: tuple[Path, Path]) -> Tagger:
    """Four blocks, so that the default depth (input of the 4th block from the end) is real."""
    config = TaggerConfig.tiny(num_tags=48, num_layers=4)
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("deep") / "deep.safetensors", config, seed=3)
    return Tagger(checkpoint, tiny_files[1], device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def pixels(tiny_tagger: Tagger, make_image: MakeImage) -> torch.Tensor:
    return tiny_tagger.prepare(make_image(80, 48, seed=1))  # 5 × 3 patches


# ---------------------------------------------------------------------------------------------
# PCA


def test_pca_image_has_the_preprocessed_size_and_is_deterministic(tiny_tagger: Tagger, pixels: torch.Tensor) -> None:
    (analysis,) = analyse(tiny_tagger, [pixels])
    assert not hasattr(analysis, "image")  # the GPU work returns no image: it is the uint8 pixels
    maps = FeatureMaps.of(pixels, analysis)
    assert maps.image.shape == (48, 80, 3) and maps.image.dtype == np.uint8
    assert np.array_equal(maps.image, pixels.permute(1, 2, 0).numpy())
    assert maps.pca.shape == (3, 5, 3)
    # Each component is min-max scaled over the image.
    assert np.allclose(maps.pca.min(axis=(0, 1)), 0) and np.allclose(maps.pca.max(axis=(0, 1)), 1)
    pca, overlay, blend = pca_images(maps)
    for image in (pca, overlay, blend):
        assert image.shape == (48, 80, 3) and image.dtype == np.uint8
        assert image.std() > 1  # not constant
    again = FeatureMaps.of(pixels, analyse(tiny_tagger, [pixels])[0])
    assert np.array_equal(again.pca, maps.pca)
    assert all(np.array_equal(a, b) for a, b in zip(pca_images(again), (pca, overlay, blend), strict=True))


def test_the_colour_blend_takes_one_to_three_colour_stops(tiny_tagger: Tagger, pixels: torch.Tensor) -> None:
    maps = FeatureMaps.of(pixels, analyse(tiny_tagger, [pixels])[0])
    _, _, one = pca_images(maps, ("#ff0000",), resample="nearest")
    # One stop: component 1 alone, in that colour (red scaled by it; no green or blue).
    assert one[..., 1:].max() == 0 and one[..., 0].std() > 1
    _, _, two = pca_images(maps, ("#ff0000", "#00ff00"))
    assert two[..., 2].max() == 0 and two[..., 1].max() > 0
    _, _, three = pca_images(maps)
    assert not np.array_equal(two, three)
    with pytest.raises(FeatureError, match="one colour per component"):
        pca_images(maps, ("#ff0000",) * 4)


def test_pca_from_patch_features_matches_the_analysis(tiny_tagger: Tagger, pixels: torch.Tensor) -> None:
    (features,) = patch_features(tiny_tagger, [pixels])
    assert features.shape == (3, 5, tiny_tagger.model.config.hidden_size)
    (maps,) = analyse(tiny_tagger, [pixels])
    assert np.allclose(pca_rgb(features), maps.pca, atol=1e-5)
    # Nearest upscaling makes 16 × 16 blocks of one colour.
    big = upscale(maps.pca, (80, 48), "nearest")
    assert big.shape == (48, 80, 3)
    assert np.array_equal(big[:16, :16], np.broadcast_to(maps.pca[0, 0], (16, 16, 3)))


def test_pca_sign_is_fixed_by_the_largest_loading() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 7, 32)).astype(np.float32)
    scores = pca_components(features)
    # Negating the data negates the scores (the loadings keep their sign), and reordering the
    # channels changes nothing: the SVD's own sign choice never leaks into the colours.
    assert np.allclose(pca_components(-features), -scores, atol=1e-4)
    perm = rng.permutation(32)
    assert np.allclose(pca_components(features[..., perm]), scores, atol=1e-4)
    assert np.allclose(pca_rgb(features[..., perm]), pca_rgb(features), atol=1e-4)


def test_large_inputs_use_a_seeded_randomised_svd_that_matches_the_exact_one() -> None:
    generator = torch.Generator().manual_seed(1)
    spectrum = torch.cat([torch.tensor([10.0, 7.0, 5.0]), torch.linspace(2, 0.1, 297)])
    u = torch.linalg.qr(torch.randn(1024, 300, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(320, 300, generator=generator)).Q
    features = ((u * spectrum) @ v.T).reshape(32, 32, 320)
    scores = pca_components(features)  # min(1024, 320) > 256: the randomised path
    flat = features.reshape(-1, 320) - features.reshape(-1, 320).mean(0)
    vh = torch.linalg.svd(flat, full_matrices=False).Vh[:3]
    vh = vh * torch.sign(vh.gather(1, vh.abs().argmax(1, keepdim=True)))
    assert np.allclose(scores, (flat @ vh.T).reshape(32, 32, 3).numpy(), atol=1e-3)
    assert np.array_equal(pca_components(features), scores)


def test_the_gpu_path_eigh_of_the_gram_matrix_gives_the_exact_components() -> None:
    """On a GPU the components come from ``eigh(xᵀx)`` in float64 instead of cuSOLVER's slow
    SVD; checked here on the CPU against the exact SVD, on a 4096 × 1280 matrix (a 1024 px
    image's patch features) with closely spaced leading singular values."""
    from tagger.features.pca import _gram_eigenvectors

    generator = torch.Generator().manual_seed(2)
    spectrum = torch.cat([torch.tensor([10.0, 9.5, 9.0]), torch.linspace(3, 0.01, 397)])
    u = torch.linalg.qr(torch.randn(4096, 400, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(1280, 400, generator=generator)).Q
    x = (u * spectrum) @ v.T
    exact = torch.linalg.svd(x.double(), full_matrices=False).Vh[:3].float()
    gram = _gram_eigenvectors(x, 3)
    assert gram.shape == (3, 1280) and gram.dtype == torch.float32
    cosines = (gram * exact).sum(dim=1).abs()  # each vector equal up to its (arbitrary) sign
    assert torch.all(cosines > 1 - 1e-5), cosines


def test_degenerate_features_give_zeros() -> None:
    assert np.array_equal(pca_rgb(np.ones((2, 3, 8), dtype=np.float32)), np.zeros((2, 3, 3)))
    assert pca_rgb(np.ones((1, 1, 8), dtype=np.float32)).shape == (1, 1, 3)


def test_colour_blend_uses_the_given_colours() -> None:
    components = np.array(
        [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 0], [0.5, 0, 0], [1, 1, 1]]],
        dtype=np.float32,
    )
    colours = ["#ff8000", "rgb(0, 128, 255)", "#0f0"]
    out = color_blend(components, colours)
    expected = [parse_colour(c) for c in colours]
    for i in range(3):
        assert np.allclose(out[0, i], expected[i])  # a pixel carried by one component has its colour
    assert np.allclose(out[1, 0], 0)
    assert np.allclose(out[1, 1], 0.5 * expected[0])
    assert np.allclose(out[1, 2], np.mean(expected, axis=0))  # weights above 1 are normalised
    other = color_blend(components, ["#000000", "#000000", "#ffffff"])
    assert np.allclose(other[0, :2], 0) and np.allclose(other[0, 2], 1)


def test_parse_colour() -> None:
    assert np.allclose(parse_colour("#FF0000"), [1, 0, 0])
    assert np.allclose(parse_colour("00ff00"), [0, 1, 0])
    assert np.allclose(parse_colour("#0000ff80"), [0, 0, 1])
    assert np.allclose(parse_colour("rgba(255, 255, 0, 0.5)"), [1, 1, 0])
    assert np.allclose(parse_colour((0, 0, 255)), [0, 0, 1])
    for bad in ("red", "#12345", "#00f8", "rgb(300, 0, 0)", ""):
        with pytest.raises(FeatureError, match=r"(?i)colour"):
            parse_colour(bad)


# ---------------------------------------------------------------------------------------------
# Relevance


def informative_maps(tagger: Tagger, pixels: torch.Tensor) -> dict[int, np.ndarray]:
    """Every tag's map; random weights give some tags no positive evidence at all."""
    maps = {i: relevance(tagger, [pixels], i)[0].map for i in range(tagger.model.config.num_tags)}
    return {i: m for i, m in maps.items() if m.max() > m.min()}


def test_relevance_map_grid_range_and_tag_dependence(deep_tagger: Tagger, make_image: MakeImage) -> None:
    pixels = deep_tagger.prepare(make_image(64, 48, seed=2))
    maps = informative_maps(deep_tagger, pixels)
    assert len(maps) >= 2
    for m in maps.values():
        assert m.shape == (3, 4) and m.dtype == np.float32
        assert m.min() >= 0 and m.max() == pytest.approx(1.0)
    first, second = list(maps.values())[:2]
    assert not np.allclose(first, second)


def test_relevance_leaves_no_gradient_and_works_inside_inference_mode(
    deep_tagger: Tagger, pixels: torch.Tensor
) -> None:
    deep_tagger.run([pixels])  # RoPE tables cached under inference_mode must not break autograd
    with torch.inference_mode():
        (result,) = relevance(deep_tagger, [pixels], 5)
        assert torch.is_inference_mode_enabled()  # the caller's mode is restored
    assert all(p.grad is None and not p.requires_grad for p in deep_tagger.model.parameters())
    expected = torch.sigmoid(deep_tagger.model(normalise(pixels)[None]))[0, 5].item()
    assert result.probability == pytest.approx(expected, abs=1e-5)
    assert np.array_equal(result.map, relevance(deep_tagger, [pixels], 5)[0].map)


def test_relevance_of_a_batch_equals_one_image_at_a_time(
    deep_tagger: Tagger, make_image: MakeImage, count_passes: Callable[[Tagger], ForwardPasses]
) -> None:
    images = [deep_tagger.prepare(make_image(w, h, seed=s)) for s, (w, h) in enumerate([(64, 48), (64, 48), (32, 64)])]
    counted = count_passes(deep_tagger)
    together = [r.map for r in relevance(deep_tagger, images, 7)]
    assert counted.passes == 2  # one per size
    # Batched and single kernels sum gradient x activation in a different order (float32 noise
    # up to ~3e-4 seen); 2e-3 is still under one step of the 8-bit heatmap (1/255).
    for image, m in zip(images, together, strict=True):
        assert np.allclose(m, relevance(deep_tagger, [image], 7)[0].map, atol=2e-3)


def test_depth_choice() -> None:
    assert DEFAULT_LAYERS_FROM_END == 4
    assert tap_block(32) == 28 and tap_block(32, 2) == 30 and tap_block(32, 8) == 24 and tap_block(2, 2.0) == 0
    for bad in (1, 9, 32, 33, 0, 2.5, "x"):  # deeper than MAX_LAYERS_FROM_END (8) costs too much memory
        with pytest.raises(FeatureError, match="layers_from_end"):
            tap_block(32, bad)  # type: ignore[arg-type]


def test_last_block_input_carries_no_relevance(pixels: torch.Tensor) -> None:
    """Why the default depth is not 1: the head reads the last block's input only through that
    block's norm1, which is scale-invariant, so Σ grad · activation vanishes there (up to eps)."""
    torch.manual_seed(0)
    model = TaggerModel(TaggerConfig.tiny(num_tags=8, num_layers=3, layer_norm_eps=1e-12)).requires_grad_(False)
    prefix = model.config.num_prefix_tokens

    def grad_times_input(block: int) -> float:
        with torch.enable_grad(), capture_block_input(model, block) as captured:
            tokens = model.tokens(normalise(pixels)[None])
            logit = model.head(model.descriptor_from_tokens(tokens))[0, 5]
            (grad,) = torch.autograd.grad(logit, captured[0])
        g, x = grad[0, prefix:].double(), captured[0].detach()[0, prefix:].double()
        # Per patch: cosine between gradient and activation (scale-free, unlike the raw sum).
        return ((g * x).sum(-1) / (g.norm(dim=-1) * x.norm(dim=-1))).abs().max().item()

    assert grad_times_input(2) < 1e-4
    assert grad_times_input(1) > 1e-2 and grad_times_input(0) > 1e-2


def test_heatmap_images(pixels: torch.Tensor) -> None:
    image = np.full((48, 80, 3), 128, dtype=np.uint8)
    rel = np.zeros((3, 5), dtype=np.float32)
    rel[1, 2] = 1.0
    over, heat = heatmap_images(image, rel, alpha=0.5, resample="nearest")
    assert over.shape == heat.shape == (48, 80, 3)
    assert np.array_equal(heat[16:32, 32:48], np.broadcast_to(colormap(1.0), (16, 16, 3)))
    assert np.array_equal(heat[0, 0], colormap(0.0))
    assert tuple(colormap(np.array([0.0, 1.0]))[1]) == (252, 255, 164)
    # The LUT gets lighter (luma) from 0 to 1, like inferno.
    luma = colormap(np.linspace(0, 1, 256)) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) >= 0)


def test_resolve_tag(tiny_tagger: Tagger) -> None:
    vocab = tiny_tagger.vocab
    name = next(t for t in vocab.tags if " " in t and "(" in t)
    index = vocab.tags.index(name)
    typed = name.upper().replace(" ", "_").replace("(", "\\(").replace(")", "\\)")
    assert resolve_tag(vocab, name) == index and resolve_tag(vocab, typed) == index
    with pytest.raises(FeatureError, match=r"Unknown tag 'no such tag': it is not one of the model's 48 tags"):
        resolve_tag(vocab, "no such tag")
    with pytest.raises(FeatureError, match="Choose a tag"):
        resolve_tag(vocab, "  ")


# ---------------------------------------------------------------------------------------------
# Similarity


def test_similarity_of_an_image_with_itself_is_one(tiny_tagger: Tagger, make_image: MakeImage) -> None:
    a = tiny_tagger.prepare(make_image(64, 48, seed=0))
    b = tiny_tagger.prepare(make_image(48, 64, seed=5))
    da, da2, db = tiny_tagger.run_descriptors([a, a.clone(), b])
    assert cosine_similarity(da, da2) == pytest.approx(1.0, abs=1e-5)
    assert cosine_similarity(da, db) < cosine_similarity(da, da2)
    assert cosine_similarity(da, -da) == pytest.approx(-1.0)
    assert cosine_similarity(da, np.zeros_like(da)) == 0.0


@pytest.fixture
def pairs_zip(tmp_path: Path) -> Path:
    cat = image_bytes(64, 48, seed=10)
    return write_zip(
        tmp_path / "pairs.zip",
        {
            "before/cat.png": cat,
            "after/cat.jpg": cat,  # named .jpg, PNG inside: Pillow goes by the content
            "before/dog.png": image_bytes(64, 48, seed=11),
            "after/dog.png": image_bytes(48, 64, seed=12),
            "before/sub/bird.png": image_bytes(32, 32, seed=13),
            "after/sub/bird.webp": image_bytes(32, 32, seed=13, fmt="WEBP"),
            "before/only_here.png": image_bytes(32, 32, seed=14),
            "after/lonely.png": image_bytes(32, 32, seed=15),
            "after/notes.txt": b"not an image",
            "readme.png": image_bytes(16, 16, seed=16),
            "__MACOSX/before/._cat.png": b"resource fork",
            "before/.DS_Store": b"finder",
        },
    )


def counting(fn: Callable) -> tuple[Callable, list[int]]:
    calls: list[int] = []

    def wrapper(pixels: list[torch.Tensor]) -> np.ndarray:
        calls.append(len(pixels))
        return fn(pixels)

    return wrapper, calls


def test_url_pairs_are_fetched_scored_and_downloadable(tiny_tagger: Tagger, tmp_path: Path) -> None:
    """Pairs of URLs score like a zip's pairs: one model call, a refused URL reported, its pair skipped."""
    from types import SimpleNamespace

    from tagger.datasets.intake import BatchLimits
    from tagger.errors import FetchError, UploadError

    files = {}
    for name, seed in (("cat", 10), ("dog", 11)):
        files[f"https://img.example/{name}.png"] = tmp_path / f"{name}.png"
        files[f"https://img.example/{name}.png"].write_bytes(image_bytes(64, 48, seed=seed))

    def fetch(url: str) -> str:
        if url not in files:
            raise FetchError(f"Refused {url}: not a public address.")
        return str(files[url])

    descriptors, calls = counting(tiny_tagger.run_descriptors)
    ctx = SimpleNamespace(
        preparer=lambda max_size: tiny_tagger.prepare, runner=SimpleNamespace(descriptors=descriptors)
    )
    cat, dog = "https://img.example/cat.png", "https://img.example/dog.png"
    text = json.dumps([[cat, cat], [cat, dog], [dog, "http://10.0.0.1/x.png"]])
    result = score_url_pairs(ctx, text, fetch)  # type: ignore[arg-type]
    assert [(s, a, b) for s, a, b, _ in result.rows] == [("1", cat, cat), ("2", cat, dog)]
    assert result.rows[0][3] == pytest.approx(1.0, abs=1e-5) and result.rows[1][3] < result.rows[0][3]
    assert result.errors == [("http://10.0.0.1/x.png", "Refused http://10.0.0.1/x.png: not a public address.")]
    assert calls == [4]  # the two scored pairs in one model call
    csv_path, jsonl_path = result.write_downloads(tmp_path)
    assert csv_path.read_text().splitlines()[0] == "stem,a,b,similarity"
    assert [json.loads(line)["b"] for line in jsonl_path.read_text().splitlines()] == [cat, dog]
    with pytest.raises(UploadError, match="add up to more than"):
        score_url_pairs(ctx, text, fetch, limits=BatchLimits(max_upload_bytes=100))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "Write the pairs as JSON"),
        ('[["only one"]]', "a JSON list of"),
        ("[]", "empty"),
        (json.dumps([["a", "b"]] * 3), "At most 2 pairs"),
    ],
)
def test_url_pairs_must_be_a_json_list_of_pairs(text: str, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        parse_url_pairs(text, max_pairs=2)
    assert parse_url_pairs(' [[" https://a/1.png ", "https://b/1.png"]]', 2) == [("https://a/1.png", "https://b/1.png")]


def test_batch_similarity_pairs_by_stem(tiny_tagger: Tagger, pairs_zip: Path) -> None:
    descriptors, calls = counting(tiny_tagger.run_descriptors)
    result = batch_similarity(pairs_zip, tiny_tagger.prepare, descriptors)
    assert result.folders == ("after", "before")
    assert [(s, a, b) for s, a, b, _ in result.rows] == [
        ("cat", "after/cat.jpg", "before/cat.png"),
        ("dog", "after/dog.png", "before/dog.png"),
        ("sub/bird", "after/sub/bird.webp", "before/sub/bird.png"),
    ]
    scores = {s: v for s, _, _, v in result.rows}
    assert scores["cat"] == pytest.approx(1.0, abs=1e-5)  # same pixels in both folders
    assert scores["dog"] < scores["cat"]
    assert sorted(result.unmatched) == ["after/lonely.png", "before/only_here.png"]
    assert "after/notes.txt" in result.ignored and "readme.png" in result.ignored
    assert not any("DS_Store" in x or "MACOSX" in x for x in result.ignored + result.unmatched)
    assert calls == [6]  # one model call for the three pairs
    summary = result.to_json()["summary"]
    assert summary["pairs"] == 3
    assert summary["min"] <= summary["mean"] <= summary["max"] == pytest.approx(1.0, abs=1e-5)
    text = summary_markdown(result)
    assert "3 pairs" in text and "Unmatched files (2)" in text and "after/lonely.png" in text


def test_batch_similarity_reports_unreadable_files_and_goes_on(tiny_tagger: Tagger, tmp_path: Path) -> None:
    image = image_bytes(32, 32, seed=1)
    archive = write_zip(
        tmp_path / "wrapped.zip",
        {"set/a/x.png": image, "set/b/x.png": image, "set/a/y.png": b"garbage", "set/b/y.png": image},
    )
    result = batch_similarity(archive, tiny_tagger.prepare, tiny_tagger.run_descriptors)
    assert result.folders == ("a", "b")  # the wrapping folder is looked through
    assert [r[0] for r in result.rows] == ["x"]
    assert [f for f, _ in result.errors] == ["set/a/y.png"]
    assert "set/a/y.png" in result.errors[0][1]


def test_batch_similarity_needs_two_folders(tiny_tagger: Tagger, tmp_path: Path) -> None:
    image = image_bytes(32, 32)
    archive = write_zip(tmp_path / "three.zip", {"a/x.png": image, "b/x.png": image, "c/x.png": image})
    with pytest.raises(FeatureError, match=r"exactly two top-level folders .* found: a, b, c"):
        batch_similarity(archive, tiny_tagger.prepare, tiny_tagger.run_descriptors)
    not_zip = tmp_path / "image.zip"
    not_zip.write_bytes(image)
    with pytest.raises(FeatureError, match="not a zip archive"):
        batch_similarity(not_zip, tiny_tagger.prepare, tiny_tagger.run_descriptors)


# ---------------------------------------------------------------------------------------------
# End to end: the real app (demo mode) over HTTP


def load(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory, make_image: MakeImage) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "photo.png"
    make_image(100, 60, seed=21).save(path)  # preprocessed to 96 × 48
    return path


def test_view_api_lists_the_endpoints(client) -> None:
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = {name: [p["parameter_name"] for p in endpoints[name]["parameters"]] for name in endpoints}
    assert params["/pca"] == ["image", "color_1", "color_2", "color_3", "alpha", "upscale", "max_size"]
    assert params["/heatmap"] == ["image", "tag", "layers_from_end", "alpha", "upscale", "max_size"]
    assert params["/similarity"] == ["image_a", "image_b", "max_size"]
    assert params["/similarity_batch"] == ["archive", "max_size"]
    assert len(endpoints["/pca"]["returns"]) == 3 and len(endpoints["/heatmap"]["returns"]) == 3


def test_pca_endpoint(client, model_calls: list[str], image_path: Path) -> None:
    from gradio_client import handle_file

    pca, overlay, blend = client.predict(handle_file(str(image_path)), api_name="/pca")
    assert model_calls == ["analyse"]
    for path in (pca, overlay, blend):
        image = load(path)
        assert image.shape == (48, 96, 3) and image.std() > 1
    red = load(
        client.predict(handle_file(str(image_path)), "#ff0000", "#ff0000", "#ff0000", 0.5, "bilinear", api_name="/pca")[
            2
        ]
    )
    assert red[..., 1:].max() == 0 and red[..., 0].max() > 0  # only the chosen colour appears


def test_heatmap_endpoint(app, client, model_calls: list[str], image_path: Path) -> None:
    from gradio_client import handle_file

    vocab = app.context.vocab
    name = vocab.tags[3]
    overlay, heat, info = client.predict(
        handle_file(str(image_path)), name.replace(" ", "_").upper(), api_name="/heatmap"
    )
    assert model_calls == ["relevance"]
    assert info["tag"] == name and info["index"] == 3 and info["grid"] == [3, 6]
    assert info["block"] == 0 and info["layers_from_end"] == 2  # the demo model has 2 blocks
    grid = np.asarray(info["relevance"])
    assert grid.shape == (3, 6) and grid.min() >= 0 and grid.max() <= 1
    assert 0 <= info["probability"] <= 1
    for path in (overlay, heat):
        image = load(path)
        assert image.shape == (48, 96, 3)
    assert load(overlay).std() > 1


def test_heatmap_unknown_tag_is_a_sentence(client, model_calls: list[str], image_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Unknown tag 'no such tag at all'"):
        client.predict(handle_file(str(image_path)), "no such tag at all", api_name="/heatmap")
    with pytest.raises(AppError, match="layers_from_end must be between 2 and 2"):
        client.predict(handle_file(str(image_path)), "", 1, api_name="/heatmap")
    assert model_calls == []


def test_similarity_endpoint(client, model_calls: list[str], image_path: Path, tmp_path: Path, make_image) -> None:
    from gradio_client import handle_file

    same = client.predict(handle_file(str(image_path)), handle_file(str(image_path)), api_name="/similarity")
    assert same == pytest.approx(1.0, abs=1e-5)
    other = tmp_path / "other.png"
    make_image(60, 90, seed=22).save(other)
    different = client.predict(handle_file(str(image_path)), handle_file(str(other)), api_name="/similarity")
    assert different < 1.0 - 1e-4
    assert model_calls == ["run_descriptors", "run_descriptors"]  # one GPU call per pair


def test_similarity_batch_endpoint(client, model_calls: list[str], pairs_zip: Path) -> None:
    from gradio_client import handle_file

    result = client.predict(handle_file(str(pairs_zip)), api_name="/similarity_batch")
    assert model_calls == ["run_descriptors"]
    assert [p["stem"] for p in result["pairs"]] == ["cat", "dog", "sub/bird"]
    assert result["pairs"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert result["summary"]["pairs"] == 3
    assert sorted(result["unmatched"]) == ["after/lonely.png", "before/only_here.png"]
    assert result["errors"] == []
