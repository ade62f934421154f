"""Decoding, the size rule and normalisation (tagger.engine.decode, tagger.engine.preprocess).

Every image is generated here at run time with Pillow; nothing is read from the repository.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from support import assert_sentence

from tagger.engine.decode import MAX_IMAGE_PIXELS, ImageError, load_image
from tagger.engine.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_to_pixels,
    normalise,
    preprocess,
    resize,
    target_size,
)

WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def numpy_normalise(rgb: np.ndarray) -> np.ndarray:
    """Independent float32 reference: ToTensor (/255) then Normalize ((x - mean) / std)."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    chw = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (chw - mean) / std


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(encode(Image.new("RGB", (1, 1))))
    assert data[12:16] == b"IHDR"
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Size rule


@pytest.mark.parametrize(
    ("size", "max_size", "patch", "expected"),
    [
        ((1, 1), 1024, 16, (16, 16)),  # tiny: one patch, the only "upscale" the rule allows
        ((15, 17), 1024, 16, (16, 16)),
        ((16, 4000), 1024, 16, (16, 1024)),  # thin side kept at one patch
        ((4000, 16), 1024, 16, (1024, 16)),
        ((1024, 1024), 1024, 16, (1024, 1024)),  # already fine: unchanged
        ((1025, 700), 1024, 16, (1024, 688)),  # 700·1024/1025 = 699.3 → 699 → 688
        ((513, 512), 1024, 16, (512, 496)),  # long edge floored, not capped: 511.0 → 496
        ((800, 600), 1024, 16, (800, 592)),  # no downscale; 600 floored to 592
        ((2000, 1000), 512, 16, (512, 256)),
        ((1000, 2000), 512, 16, (256, 512)),
        ((2000, 1500), 1000, 16, (992, 736)),  # max_size not a multiple of 16 → 992
        ((1000, 500), 518, 14, (518, 252)),  # other patch sizes work the same way
    ],
)
def test_target_size_table(size: tuple[int, int], max_size: int, patch: int, expected: tuple[int, int]) -> None:
    assert target_size(*size, max_size=max_size, patch=patch) == expected


@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    max_size=st.integers(16, 2048),
)
def test_target_size_properties(width: int, height: int, max_size: int) -> None:
    out_w, out_h = target_size(width, height, max_size)
    for original, side in ((width, out_w), (height, out_h)):
        assert side % 16 == 0 and side >= 16
        assert side <= max(original, 16)  # never upscaled beyond one patch
    assert max(out_w, out_h) <= max_size


@pytest.mark.parametrize(("max_size", "patch"), [(8, 16), (0, 16), (1024, 0)])
def test_target_size_rejects_bad_settings(max_size: int, patch: int) -> None:
    with pytest.raises(ValueError):
        target_size(100, 100, max_size=max_size, patch=patch)


def test_image_to_pixels_rejects_bad_settings_before_decoding() -> None:
    with pytest.raises(ValueError, match="max_size"):
        image_to_pixels(b"not even an image", max_size=8)


# ---------------------------------------------------------------------------------------------
# Normalisation and tensor layout


def test_white_image_normalises_to_known_values() -> None:
    tensor = preprocess(Image.new("RGB", (32, 48), WHITE))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 48, 32) and tensor.is_contiguous()
    expected = (np.float32(1) - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    for channel in range(3):
        assert torch.all(tensor[channel] == float(expected[channel]))
    assert tensor[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)


def test_normalisation_is_bit_identical_to_numpy_reference() -> None:
    rgb = noise(48, 32)  # multiples of 16: no resize, so every value is checkable
    tensor = preprocess(Image.fromarray(rgb))
    np.testing.assert_array_equal(tensor.numpy(), numpy_normalise(rgb))


def test_resize_gives_uint8_and_normalise_gives_the_float_pipeline_bit_for_bit() -> None:
    rgb = noise(100, 50, seed=3)
    resized = resize(Image.fromarray(rgb))
    assert resized.dtype == torch.uint8 and resized.shape == (3, 48, 96) and resized.is_contiguous()
    expected = np.asarray(Image.fromarray(rgb).resize((96, 48), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resized.permute(1, 2, 0).numpy(), expected)
    np.testing.assert_array_equal(normalise(resized).numpy(), numpy_normalise(expected))
    assert torch.equal(normalise(resized), preprocess(Image.fromarray(rgb)))
    # A stacked batch normalises the same as each image alone.
    batch = normalise(torch.stack([resized, resized.flip(-1)]))
    assert torch.equal(batch[0], normalise(resized)) and torch.equal(batch[1], normalise(resized.flip(-1)))
    with pytest.raises(ValueError, match="uint8"):
        normalise(normalise(resized))  # normalising twice is refused


def test_preprocess_resizes_with_lanczos_to_target_size() -> None:
    rgb = noise(100, 50)
    tensor = preprocess(Image.fromarray(rgb))
    assert tensor.shape == (3, 48, 96)
    resized = Image.fromarray(rgb).resize((96, 48), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(tensor.numpy(), numpy_normalise(np.asarray(resized)))


def test_preprocess_caps_long_edge_and_keeps_aspect() -> None:
    tensor = image_to_pixels(encode(Image.new("RGB", (2000, 1000), (10, 20, 30))), max_size=512)
    assert tensor.shape == (3, 256, 512)


def test_preprocess_converts_non_rgb_input_like_load_image() -> None:
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    assert torch.equal(preprocess(rgba), preprocess(load_image(rgba)))
    assert torch.equal(preprocess(rgba), preprocess(Image.new("RGB", (32, 32), WHITE)))


# ---------------------------------------------------------------------------------------------
# Colour modes and transparency


def test_rgba_transparent_becomes_white_and_half_alpha_blends() -> None:
    array = np.zeros((2, 3, 4), dtype=np.uint8)
    array[0, 0] = (255, 0, 0, 0)  # invisible red
    array[0, 1] = (0, 0, 255, 255)  # opaque blue
    array[0, 2] = (0, 0, 0, 128)  # half-transparent black
    array[1, :] = (200, 100, 0, 64)
    image = Image.fromarray(array)  # mode RGBA
    for source in (image, encode(image)):
        out = pixels(load_image(source))
        assert tuple(out[0, 0]) == WHITE
        assert tuple(out[0, 1]) == (0, 0, 255)
        assert tuple(out[0, 2]) == (127, 127, 127)  # 255 · (1 − 128/255) = 127.0
        # c·a/255 + 255·(1 − a/255), rounded
        expected = [round(c * 64 / 255 + 255 * (1 - 64 / 255)) for c in (200, 100, 0)]
        assert list(out[1, 0]) == expected


def test_la_is_composited_onto_white() -> None:
    image = Image.new("LA", (2, 1), (0, 255))
    image.putpixel((1, 0), (0, 0))
    out = pixels(load_image(encode(image)))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == WHITE


def test_palette_with_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 2), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # index 0 (red) is see-through
    out = pixels(load_image(path))
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[1, 1]) == (0, 0, 255)


def test_grey_png_with_transparent_value() -> None:
    image = Image.fromarray(np.array([[0, 100]], dtype=np.uint8))
    out = pixels(load_image(encode(image, transparency=100)))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == WHITE


def test_cmyk_becomes_rgb() -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 0, 0))  # pure magenta ink
    assert pixels(load_image(image))[0, 0].tolist() == [255, 0, 255]
    from_jpeg = pixels(load_image(encode(image, "JPEG", quality=95)))  # Adobe CMYK JPEG
    assert np.abs(from_jpeg[8, 8].astype(int) - [255, 0, 255]).max() <= 8


def test_16_bit_png_keeps_its_gradient(tmp_path: Path) -> None:
    levels = np.arange(256, dtype=np.uint16)
    image = Image.fromarray(np.tile(levels * 257, (4, 1)))  # 0 … 65535
    path = tmp_path / "gradient16.png"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")  # really decoded as 16-bit
    out = pixels(load_image(path))
    # Scaled, not clipped: Pillow's own convert("RGB") would turn all but the darkest 255 levels white.
    np.testing.assert_array_equal(out[0, :, 0], np.arange(256))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_big_endian_16_bit_grey() -> None:
    values = np.array([[0, 32896, 65535]], dtype=">u2")
    image = Image.frombytes("I;16B", (3, 1), values.tobytes())
    assert pixels(load_image(image))[0, :, 0].tolist() == [0, 128, 255]


def test_32_bit_int_and_float_grey() -> None:
    wide = Image.fromarray(np.array([[0, 65535 // 2, 65535]], dtype=np.int32))
    assert wide.mode == "I"
    assert pixels(load_image(wide))[0, :, 0].tolist() == [0, 127, 255]
    narrow = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32))  # already 8-bit values
    assert pixels(load_image(narrow))[0, :, 0].tolist() == [0, 7, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert pixels(load_image(unit))[0, :, 0].tolist() == [0, 128, 255]


def test_one_bit_image() -> None:
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    out = pixels(load_image(encode(image)))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]


@pytest.mark.parametrize("mode", ["HSV", "YCbCr", "LAB", "RGBX", "L", "P"])
def test_other_modes_end_as_rgb(mode: str) -> None:
    colour = (200, 100, 50)
    image = Image.new("RGB", (4, 4), colour).convert(mode)
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (4, 4)
    if mode in ("L", "P"):  # lossy by design (grey, 216-colour web palette): compare with Pillow's RGB
        colour = image.convert("RGB").getpixel((0, 0))
    assert np.abs(pixels(out)[0, 0].astype(int) - colour).max() <= 3


def test_premultiplied_modes() -> None:
    straight = load_image(Image.new("RGBA", (2, 2), (200, 100, 50, 128)))
    premultiplied = load_image(Image.new("RGBA", (2, 2), (200, 100, 50, 128)).convert("RGBa"))
    assert np.abs(pixels(straight).astype(int) - pixels(premultiplied)).max() <= 1
    la = load_image(Image.new("LA", (2, 2), (100, 128)).convert("La"))
    assert la.mode == "RGB"


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 3
    assert tuple(pixels(load_image(data))[4, 4]) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
    for source in (data, Image.open(io.BytesIO(data))):
        out = load_image(source)
        assert out.size == (20, 40)  # width and height swapped
        top, bottom = pixels(out)[5, 10].astype(int), pixels(out)[35, 10].astype(int)
        assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
        assert bottom[2] > 200 and bottom[0] < 60


# ---------------------------------------------------------------------------------------------
# Input kinds


def test_all_input_kinds_agree(tmp_path: Path) -> None:
    rgb = noise(40, 30, seed=1)
    path = tmp_path / "noise.png"
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    sources = [str(path), path, data, bytearray(data), Image.open(path), rgb, rgb.astype(np.float32) / 255]
    for source in sources:
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (40, 30)
        np.testing.assert_array_equal(pixels(out), rgb)
    reference = image_to_pixels(path)
    for source in sources:
        assert torch.equal(image_to_pixels(source), reference)


def test_numpy_grey_and_rgba_arrays() -> None:
    grey = np.array([[0, 128, 255]], dtype=np.uint8)
    assert pixels(load_image(grey))[0].tolist() == [[0, 0, 0], [128, 128, 128], [255, 255, 255]]
    assert pixels(load_image(grey[:, :, None]))[0, 1].tolist() == [128, 128, 128]
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    assert pixels(load_image(rgba))[0].tolist() == [[255, 255, 255], [10, 20, 30]]
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float64)
    assert pixels(load_image(unit))[0, :, 0].tolist() == [0, 128, 255]


def test_numpy_input_is_copied() -> None:
    array = np.zeros((4, 4), dtype=np.uint8)
    image = load_image(array)
    array[:] = 255
    assert pixels(image).max() == 0


def test_callers_pil_image_is_not_mutated() -> None:
    original = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    before = (original.mode, original.size, original.tobytes(), dict(original.info))
    out = load_image(original)
    assert out is not original and out.mode == "RGB"
    assert (original.mode, original.size, original.tobytes(), dict(original.info)) == before
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    copy = load_image(rgb)
    copy.putpixel((0, 0), (9, 9, 9))
    assert rgb.getpixel((0, 0)) == (1, 2, 3)
    preprocess(rgb, max_size=16)
    assert rgb.size == (4, 4) and rgb.mode == "RGB"


def test_result_is_fully_decoded_and_detached_from_file(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    out = load_image(path)
    path.unlink()  # the decoded image must not need the file any more
    assert out.getpixel((7, 7)) == (1, 2, 3)


# ---------------------------------------------------------------------------------------------
# Failures: always ImageError, always a readable sentence


def raises_image_error(source: object, *fragments: str, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    assert "<_io." not in message, message
    assert_sentence(message)
    return info.value


def test_missing_path_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_cat.png"
    raises_image_error(missing, "not found", "no_such_cat.png")
    raises_image_error(str(missing), "not found", "no_such_cat.png")


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    raises_image_error(tmp_path, "directory")


def test_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    raises_image_error(empty, "empty", "empty.jpg")
    raises_image_error(b"", "empty")


def test_text_file_named_png(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("just some text, not pixels\n")
    raises_image_error(fake, "notes.png", "not an image")
    raises_image_error(b"GIF89a but not really", "not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt: str, tmp_path: Path) -> None:
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    raises_image_error(data[: len(data) // 2], "truncated or corrupt")
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    raises_image_error(path, "truncated or corrupt", path.name)


def test_huge_declared_size_is_refused_before_decoding() -> None:
    # 60000 x 60000: above Pillow's own hard limit too, which must also come out as ImageError.
    raises_image_error(png_with_declared_size(60_000, 60_000), "3,600,000,000", f"{MAX_IMAGE_PIXELS:,}")
    # 12000 x 10000: under Pillow's hard limit, so only our header check can refuse it (there is no
    # pixel data at all, so decoding would have failed with a different message).
    raises_image_error(png_with_declared_size(12_000, 10_000), "12000x10000", "limit")


def test_limit_above_pillows_own_is_explained() -> None:
    # 200 M pixels: allowed by max_pixels, but Pillow's process-wide hard limit (2 x ~89.5 M) refuses it.
    raises_image_error(png_with_declared_size(20_000, 10_000), "Pillow", "MAX_IMAGE_PIXELS", max_pixels=300_000_000)


def test_max_pixels_parameter() -> None:
    data = encode(Image.new("RGB", (100, 100)))
    raises_image_error(data, "100x100", "5,000", max_pixels=5_000)
    raises_image_error(np.zeros((100, 100, 3), np.uint8), "100x100", max_pixels=5_000)
    raises_image_error(Image.new("RGB", (100, 100)), "100x100", max_pixels=5_000)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


@pytest.mark.parametrize("size", [(10_000, 9_000), (12_000, 10_000)])
def test_no_pillow_bomb_warning_escapes(size: tuple[int, int]) -> None:
    # Above Pillow's warning threshold (~89.5 M pixels); our own check decides instead. The
    # 90 M one passes it and then fails to decode (the patched PNG holds no pixel data).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raises_image_error(png_with_declared_size(*size))


def test_zero_size_images() -> None:
    raises_image_error(Image.new("RGB", (0, 0)), "zero size")
    raises_image_error(np.zeros((0, 5, 3), dtype=np.uint8), "zero size")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((2, 4, 4, 3), dtype=np.uint8),
        np.zeros(16, dtype=np.uint8),
        np.zeros((4, 4, 5), dtype=np.uint8),
    ],
)
def test_wrong_array_shape(array: np.ndarray) -> None:
    raises_image_error(array, "shape", str(array.shape))


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.bool_, np.complex64])
def test_wrong_array_dtype(dtype: type) -> None:
    raises_image_error(np.zeros((4, 4, 3), dtype=dtype), "dtype")


def test_bad_float_arrays() -> None:
    raises_image_error(np.full((4, 4), 255.0), "[0, 1]")
    raises_image_error(np.full((4, 4), -0.5), "[0, 1]")
    raises_image_error(np.full((4, 4), np.nan), "nan")


@pytest.mark.parametrize("source", [None, 42, ["cat.png"]])
def test_unsupported_source_types(source: object) -> None:
    raises_image_error(source, "file path")


def test_image_to_pixels_propagates_image_error() -> None:
    with pytest.raises(ImageError, match="not an image"):
        image_to_pixels(b"hello")


def test_a_large_array_is_prepared_exactly_unless_reduced_decoding_is_asked() -> None:
    # Six times the model's size and more: the shrink-while-converting shortcut must stay off.
    rng = np.random.default_rng(7)
    array = rng.integers(0, 256, size=(3000, 4000, 3), dtype=np.uint8)
    exact = resize(load_image(array), 512, 16)
    assert torch.equal(image_to_pixels(array, 512, 16), exact)
    reduced = image_to_pixels(array, 512, 16, reduced_decode=True)
    assert reduced.shape == exact.shape and not torch.equal(reduced, exact)
