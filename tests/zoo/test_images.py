"""zoo.images: sample grids written through Pillow and decoded back; image files of any mode read as model inputs.

References are built by hand: where each image lands in a grid, ITU-R 601 luma
for colour-to-grey, 16-bit levels over 65535.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo import images
from zoo.cli import _write_samples
from zoo.errors import UsageError


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_written_grid_decodes_to_the_expected_pixels(tmp_path, channels):
    values = [0.2, 0.6, 1.0]  # 51, 153, 255 after *255
    samples = np.stack([np.full((2, 3, channels), v, np.float32) for v in values])
    samples[0, 0, 0] = 0.0  # one distinct pixel, to catch a transposed or flipped grid
    path = images.save_grid(samples, tmp_path / "grid.png")
    # ceil(sqrt(3)) = 2 columns, 2 rows; each 2x3 cell after a 2-pixel pad: 2*(2+2)+2 by 2*(3+2)+2.
    expected = np.zeros((10, 12, channels), np.uint8)
    for (top, left), level in zip([(2, 2), (2, 7), (6, 2)], [51, 153, 255], strict=True):
        expected[top : top + 2, left : left + 3] = level
    expected[2, 2] = 0
    pixels = decoded(path)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels.reshape(expected.shape), expected)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == ("L" if channels == 1 else "RGB")


def test_grey_png_is_read_exactly(tmp_path):
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image = images.read_image(tmp_path / "g.png", (4, 4, 1))
    assert image.dtype == np.float32 and image.shape == (4, 4, 1)
    np.testing.assert_array_equal(image[..., 0], pixels.astype(np.float32) / 255)


def test_colour_to_grey_uses_luma_and_grey_to_colour_repeats(tmp_path):
    Image.new("RGB", (2, 2), (255, 0, 0)).save(tmp_path / "red.png")
    # ITU-R 601-2 luma: 0.299 R + 0.587 G + 0.114 B; Pillow rounds 76.245 down to 76.
    np.testing.assert_array_equal(images.read_image(tmp_path / "red.png", (2, 2, 1)), np.full((2, 2, 1), 76 / 255, np.float32))
    Image.new("L", (2, 2), 200).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "grey.png", (2, 2, 3)), np.full((2, 2, 3), 200 / 255, np.float32))


def test_sixteen_bit_keeps_its_precision(tmp_path):
    levels = np.array([[0, 1000], [40000, 65535]], np.uint16)  # 1000 and 40000 would clip or collapse in 8 bits
    Image.fromarray(levels).save(tmp_path / "deep.png")
    image = images.read_image(tmp_path / "deep.png", (2, 2, 1))
    np.testing.assert_allclose(image[..., 0], levels / 65535, rtol=1e-6)


def test_transparent_parts_are_black_and_sizes_are_converted(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)  # one opaque white pixel; the rest white but fully transparent
    rgba[1:, :, :3] = rgba[0, 1, :3] = 255
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "alpha.png", (2, 2, 1))[..., 0], [[1, 0], [0, 0]])
    Image.new("L", (40, 24), 100).save(tmp_path / "big.jpg", quality=100)
    np.testing.assert_allclose(images.read_image(tmp_path / "big.jpg", (4, 4, 1)), 100 / 255, atol=2 / 255)


def test_unreadable_images_are_usage_errors(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(UsageError, match="not an image Pillow can read"):
        images.read_image(tmp_path / "x.png", (2, 2, 1))
    Image.new("L", (2, 2)).save(tmp_path / "y.png")
    with pytest.raises(UsageError, match="4-channel images; pass them as a .npy"):
        images.read_image(tmp_path / "y.png", (2, 2, 4))


@pytest.mark.parametrize(
    ("samples", "name", "needle"),
    [
        (["a text", "another"], "out.png", "--out must end in .txt for texts; got out.png"),
        (["a text"], "out.npy", "--out must end in .txt for texts; got out.npy"),
        (np.zeros((1, 2, 2, 1)), "out.txt", "--out must end in .png or .npy for images; got out.txt"),
    ],
)
def test_samples_go_only_to_files_of_their_kind(tmp_path, samples, name, needle):
    with pytest.raises(UsageError) as e:
        _write_samples(samples, tmp_path / name)
    assert str(e.value) == needle and list(tmp_path.iterdir()) == []
