"""Image files in and out, through Pillow: sample grids as PNG, any image file as a model input, a terminal preview.

Pillow reads every format people have (PNG, JPEG, BMP, GIF, WebP, TIFF; grey,
palette, colour, 16-bit, with alpha) and writes PNG; a hand-written codec would
cover a fraction of that.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from zoo.download import atomic_write_bytes
from zoo.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""File suffixes read as images (by ``read_image``)."""


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) floats in [0, 1] -> one uint8 image (rows*(H+pad)+pad, cols*(W+pad)+pad, C).

    ``columns`` defaults to ceil(sqrt(N)), so 64 images make an 8x8 grid.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UsageError(f"expected images (N, H, W, 1 or 3); got shape {images.shape}")
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top : top + h, left : left + w] = pixels[i]
    return canvas


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 1 or 3) -> PNG file bytes (8-bit grey or RGB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_grid(images: np.ndarray, path: Path, columns: int | None = None) -> Path:
    """Write ``images`` as one PNG grid at ``path`` (atomically)."""
    return atomic_write_bytes(Path(path), png_bytes(grid(images, columns)))


def read_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """An image file as float32 ``shape`` = (H, W, C) in [0, 1], C being 1 (grey) or 3 (RGB).

    Any size and mode Pillow opens: converted to grey or RGB, transparent parts
    laid on black (the background of digit datasets), 16-bit kept at full
    precision, EXIF rotation applied, and resized bilinearly when its size differs.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    height, width, channels = shape
    if channels not in (1, 3):
        raise UsageError(f"{path}: the model takes {channels}-channel images; pass them as a .npy array")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if "A" in image.getbands() or "transparency" in image.info:
                black = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(black, image.convert("RGBA"))
            high_depth = image.mode.startswith("I")  # 16-bit grey: "F" keeps all 65536 levels, "L" would clip
            image = image.convert("F" if high_depth else "L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, np.float32) / (65535.0 if high_depth else 255.0)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise UsageError(f"{path}: not an image Pillow can read ({e})") from None
    except OSError as e:  # truncated or corrupt data
        raise UsageError(f"{path}: cannot decode the image: {e}") from None
    pixels = pixels.reshape(height, width, -1)
    if pixels.shape[-1] != channels:  # 16-bit grey for a colour model
        pixels = np.repeat(pixels, channels, axis=-1)
    return np.clip(pixels, 0.0, 1.0)


def ascii_preview(image: np.ndarray, width: int = 28) -> str:
    """One (H, W, C) image in [0, 1] as text, for a terminal without --out."""
    shades = " .:-=+*#%@"
    grey = np.asarray(image, np.float32).mean(axis=-1)
    step = max(1, grey.shape[1] // width)
    rows = grey[:: step * 2, ::step]  # characters are about twice as tall as wide
    return "\n".join("".join(shades[min(int(v * len(shades)), len(shades) - 1)] for v in row) for row in rows)
