"""Encoding results: PNG is lossless and valid for every shape and kind of image."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
from PIL import Image

from calculators.image_gen import images
from calculators.image_gen.images import encode_b64, encode_image, encode_png


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _gradient(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256],
                    axis=2).astype(np.uint8)


def _stripes(height: int, width: int) -> np.ndarray:
    """Rows where Up wins, rows where Sub wins, flat rows where None wins, and every byte value."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = np.arange(width, dtype=np.uint8)[None, :] * 7
    image[::2, :, 1] = 255
    image[:, :, 2] = (np.arange(height * width).reshape(height, width) % 256).astype(np.uint8)
    return image


def _decoded(png: bytes) -> np.ndarray:
    checked = Image.open(io.BytesIO(png))
    checked.verify()  # chunk CRCs, structure
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode) == ("PNG", "RGB")
    return np.asarray(image)


@pytest.mark.parametrize("pixels", [
    _noise(1, 1), _noise(1, 7), _noise(9, 1), _noise(33, 17, seed=1), _noise(256, 256, seed=2),
    np.zeros((8, 8, 3), np.uint8), np.full((5, 3, 3), 255, np.uint8), np.full((4, 4, 3), 128, np.uint8),
    _gradient(64, 96), _stripes(31, 300),
], ids=["1x1", "1x7", "9x1", "33x17", "noise-256", "black", "white", "mid-grey", "gradient", "stripes"])
def test_png_decodes_to_the_same_pixels(pixels: np.ndarray) -> None:
    decoded = _decoded(encode_png(pixels))
    assert decoded.shape == pixels.shape
    assert np.array_equal(decoded, pixels)


def test_png_from_a_strided_view_encodes_the_view() -> None:
    base = _noise(40, 60, seed=3)
    view = base[::2, 1::3]
    assert np.array_equal(_decoded(encode_png(view)), view)


def test_rows_are_filtered_before_deflate() -> None:
    """Each row is the row above plus one: noise to deflate until filtered, then all but the first
    row are ones. Stored unfiltered, this image does not shrink at all."""
    noise = np.random.default_rng(4).integers(0, 256, 128 * 3, dtype=np.uint16)
    ramp = ((noise[None, :] + np.arange(128, dtype=np.uint16)[:, None]) % 256).astype(np.uint8).reshape(128, 128, 3)
    assert np.array_equal(_decoded(encode_png(ramp)), ramp)
    assert len(encode_png(ramp)) < ramp.nbytes // 20


@pytest.mark.parametrize("pixels", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.uint8),
                                    np.zeros((4, 4, 3), np.float32)], ids=["rgba", "grey", "float"])
def test_png_refuses_what_it_would_mislabel(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_png(pixels)


def test_encode_b64_carries_the_png() -> None:
    pixels = _gradient(16, 24)
    text = encode_b64(pixels, "png", None)
    assert text.isascii() and b"\n" not in text
    assert np.array_equal(_decoded(base64.b64decode(text)), pixels)


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_other_formats_still_go_through_pillow(fmt: str, pil: str) -> None:
    image = Image.open(io.BytesIO(encode_image(_gradient(16, 24), fmt, 90)))
    assert (image.format, image.size) == (pil, (24, 16))


@pytest.mark.parametrize("pixels", [_noise(33, 17, seed=3), _gradient(64, 96), _stripes(31, 300)],
                         ids=["noise", "gradient", "stripes"])
def test_without_the_fast_extra_zlib_writes_the_same_pixels(
        monkeypatch: pytest.MonkeyPatch, pixels: np.ndarray) -> None:
    monkeypatch.setattr(images, "_deflate", zlib)
    png = encode_png(pixels)
    assert np.array_equal(_decoded(png), pixels)


def test_make_install_gives_the_fast_deflate() -> None:
    # The fast extra (ISA-L) is what make install and deploy/Dockerfile install; the benches measure it.
    assert images._deflate.__name__ == "isal.isal_zlib"
