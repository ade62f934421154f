"""The prediction API (``tagger.engine.tagger.Tagger``) on the tiny random checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagger.engine.decode import ImageError, load_image
from tagger.engine.preprocess import normalise, preprocess
from tagger.engine.synthetic import write_random_vocabulary
from tagger.engine.tagger import Tagger, parse_dtype, resolve_device
from tagger.engine.vocab import Vocabulary
from tagger.engine.weights import CheckpointError


@pytest.fixture
def fresh_tagger(tiny_files):
    """A Tagger of its own that batches up to 8 images per forward pass."""
    checkpoint, vocab = tiny_files
    return Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_batch_size=8)


def test_predict_defaults_to_the_30_best_tags(tiny_tagger, image_files):
    result = tiny_tagger.predict(image_files[0])
    assert len(result) == 30
    assert len(tiny_tagger.vocab) > 30
    tags = [tag for tag, _ in result]
    scores = [score for _, score in result]
    assert scores == sorted(scores, reverse=True)
    assert len(set(tags)) == 30
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)

    probs = tiny_tagger.probabilities([image_files[0]])[0]
    best = np.argsort(-probs, kind="stable")[:30]
    assert tags == [tiny_tagger.vocab.tags[i] for i in best]
    np.testing.assert_allclose(scores, probs[best], rtol=0, atol=1e-6)


def test_predict_topk_and_threshold(tiny_tagger, image_files):
    image = image_files[0]
    default = tiny_tagger.predict(image)
    assert tiny_tagger.predict(image, topk=5) == default[:5]
    assert tiny_tagger.predict(image, topk=0) == []

    probs = tiny_tagger.probabilities([image])[0]
    threshold = float(np.median(probs))
    above = tiny_tagger.predict(image, threshold=threshold)
    expected = {tiny_tagger.vocab.tags[i] for i in np.flatnonzero(probs >= np.float32(threshold))}
    assert {tag for tag, _ in above} == expected
    assert 0 < len(above) < len(tiny_tagger.vocab)
    assert all(score >= np.float32(threshold) for _, score in above)
    # A threshold alone has no top-30 cap; both together give at most topk tags above it.
    assert len(tiny_tagger.predict(image, threshold=0.0)) == len(tiny_tagger.vocab)
    assert tiny_tagger.predict(image, topk=3, threshold=threshold) == above[:3]


def test_predict_batch_equals_single_predictions(tiny_tagger, image_files):
    # Sizes interleaved (a, b, a, b): results must come back in input order.
    images = [image_files[0], image_files[2], image_files[1], image_files[2]]
    batch = tiny_tagger.predict_batch(images, topk=10)
    assert len(batch) == 4
    for image, got in zip(images, batch, strict=True):
        single = tiny_tagger.predict(image, topk=10)
        assert [tag for tag, _ in got] == [tag for tag, _ in single]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in single], rtol=0, atol=1e-5)

    probs = tiny_tagger.probabilities(images)
    for row, image in zip(probs, images, strict=True):
        np.testing.assert_allclose(row, tiny_tagger.probabilities([image])[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(probs[1], probs[3])  # same file, same batch
    assert not np.allclose(probs[0], probs[2])  # different images give different scores
    assert tiny_tagger.predict_batch([]) == []


def test_same_size_images_share_one_forward_pass(fresh_tagger, make_image, count_passes):
    images = [make_image(64, 48, seed=i) for i in range(5)]
    counted = count_passes(fresh_tagger)
    fresh_tagger.probabilities(images)
    assert (counted.passes, counted.images) == (1, 5)


def test_two_token_counts_take_two_forward_passes_on_cpu(fresh_tagger, make_image, count_passes):
    # 4 × 3 patches and 2 × 4: the CPU default allows no padding.
    images = [make_image(64, 48, seed=0), make_image(40, 72, seed=1), make_image(64, 48, seed=2)]
    counted = count_passes(fresh_tagger)
    fresh_tagger.predict_batch(images)
    assert (counted.passes, counted.images) == (2, 3)


def test_same_token_count_in_other_shapes_shares_one_forward_pass(fresh_tagger, make_image, count_passes):
    images = [make_image(64, 48, seed=0), make_image(48, 64, seed=1), make_image(192, 16, seed=2)]  # 12 patches each
    counted = count_passes(fresh_tagger)
    probs = fresh_tagger.probabilities(images)
    assert counted.passes == 1
    for image, row in zip(images, probs, strict=True):
        np.testing.assert_allclose(row, fresh_tagger.probabilities([image])[0], rtol=0, atol=1e-5)


def test_max_batch_size_splits_large_groups(tiny_files, make_image, count_passes):
    checkpoint, vocab = tiny_files
    tagger = Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_batch_size=2)
    counted = count_passes(tagger)
    probs = tagger.probabilities([make_image(32, 32, seed=i) for i in range(5)])
    assert probs.shape[0] == 5
    assert counted.passes == 3


def test_probabilities_and_descriptors_shapes(tiny_tagger, tiny_config, image_files):
    probs = tiny_tagger.probabilities(image_files)
    assert probs.shape == (3, tiny_config.num_tags)
    assert probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))

    descriptors = tiny_tagger.descriptors(image_files)
    assert descriptors.shape == (3, tiny_config.descriptor_dim)
    assert descriptors.dtype == np.float32
    assert np.isfinite(descriptors).all()
    # They are the CLS + register tokens the head sees.
    pixels = normalise(tiny_tagger.prepare(image_files[2]))
    with torch.inference_mode():
        expected = tiny_tagger.model.descriptor(pixels[None]).float().numpy()[0]
        logits = tiny_tagger.model.head(torch.from_numpy(descriptors[2:3]))
    np.testing.assert_allclose(descriptors[2], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs[2], torch.sigmoid(logits).numpy()[0], rtol=0, atol=1e-5)

    assert tiny_tagger.probabilities([]).shape == (0, tiny_config.num_tags)
    assert tiny_tagger.descriptors([]).shape == (0, tiny_config.descriptor_dim)


def test_every_input_kind_gives_the_same_scores(tiny_tagger, image_files):
    from PIL import Image

    path = image_files[0]
    with Image.open(path) as opened:
        pil = opened.convert("RGB")
    inputs = {
        "str": str(path),
        "path": path,
        "pil": pil,
        "bytes": path.read_bytes(),
        "numpy": np.asarray(pil),
    }
    expected = tiny_tagger.probabilities([path])[0]
    for name, source in inputs.items():
        np.testing.assert_allclose(tiny_tagger.probabilities([source])[0], expected, rtol=0, atol=1e-6, err_msg=name)
    assert tiny_tagger.predict(pil, topk=5) == tiny_tagger.predict(path, topk=5)


def test_prepare_respects_max_size(tiny_files, make_image):
    checkpoint, vocab = tiny_files
    tagger = Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_size=32)
    pixels = tagger.prepare(make_image(100, 50))
    assert pixels.shape == (3, 16, 32)
    assert pixels.dtype == torch.uint8  # normalised later, on the model's device
    with pytest.raises(ValueError, match="max_size"):
        Tagger(checkpoint, vocab, device="cpu", dtype="fp32", max_size=8)


def test_unreadable_image_raises_image_error(tiny_tagger, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(ImageError):
        tiny_tagger.predict(bad)
    with pytest.raises(ImageError):
        tiny_tagger.predict(tmp_path / "missing.png")


def test_vocabulary_length_must_match_the_checkpoint(tiny_files, tiny_config, tmp_path):
    checkpoint, _ = tiny_files
    n = tiny_config.num_tags
    vocab = write_random_vocabulary(tmp_path / "other_vocab.json", n - 3)
    with pytest.raises(CheckpointError) as info:
        Tagger(checkpoint, vocab, device="cpu", dtype="fp32")
    assert str(n) in str(info.value) and str(n - 3) in str(info.value)


def test_a_vocabulary_object_is_accepted(tiny_files, tiny_config):
    checkpoint, vocab_path = tiny_files
    vocab = Vocabulary.load(vocab_path)
    tagger = Tagger(checkpoint, vocab, device="cpu", dtype="fp32")
    assert tagger.vocab is vocab
    assert len(tagger.vocab) == tiny_config.num_tags


def test_bf16_tagger_agrees_roughly_with_fp32(tiny_files, tiny_tagger, image_files):
    checkpoint, vocab = tiny_files
    bf16 = Tagger(checkpoint, vocab, device="cpu", dtype="bf16")
    assert bf16.model.dtype == torch.bfloat16
    probs = bf16.probabilities(image_files[:1])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, tiny_tagger.probabilities(image_files[:1]), rtol=0, atol=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_resolve_device_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda:1")


def test_resolve_device_rejects_nonsense():
    with pytest.raises(ValueError, match="banana"):
        resolve_device("banana")


def test_parse_dtype():
    assert parse_dtype("bf16") == torch.bfloat16
    assert parse_dtype("FP32") == torch.float32
    assert parse_dtype(None) is None
    assert parse_dtype(torch.float16) == torch.float16
    assert parse_dtype("int8") == torch.qint8  # the opt-in CPU precision (tests/test_cpu.py)
    with pytest.raises(ValueError, match="int8"):
        parse_dtype("int4")


def test_run_normalises_on_the_device_exactly_like_the_float_pipeline(tiny_tagger, make_image):
    """prepare → uint8, run normalises: the same fp32 model input as the old CPU float pipeline."""
    image = make_image(100, 70, seed=4)
    prepared = tiny_tagger.prepare(image)
    reference = preprocess(load_image(image))  # resize + ToTensor/Normalize arithmetic, on the CPU
    (idx, batch), *_ = list(tiny_tagger.batches([prepared]))
    assert idx == [0] and torch.equal(batch[0].cpu(), reference)
    with torch.inference_mode():
        expected = torch.sigmoid(tiny_tagger.model(reference[None])).numpy()
    np.testing.assert_array_equal(tiny_tagger.run([prepared]), expected)
    with pytest.raises(ValueError, match="uint8"):
        tiny_tagger.run([reference])  # already-normalised floats are refused, not normalised twice
