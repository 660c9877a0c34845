"""Images out: a grid of samples as PNG (zlib + struct; no imaging dependency), and a terminal preview."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from zoo.download import atomic_write_bytes
from zoo.errors import UsageError


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
    h, w, c = image.shape
    color_type = {1: 0, 3: 2}[c]
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def save_grid(images: np.ndarray, path: Path, columns: int | None = None) -> Path:
    """Write ``images`` as one PNG grid at ``path`` (atomically)."""
    return atomic_write_bytes(Path(path), png_bytes(grid(images, columns)))


def ascii_preview(image: np.ndarray, width: int = 28) -> str:
    """One (H, W, C) image in [0, 1] as text, for a terminal without --out."""
    shades = " .:-=+*#%@"
    grey = np.asarray(image, np.float32).mean(axis=-1)
    step = max(1, grey.shape[1] // width)
    rows = grey[:: step * 2, ::step]  # characters are about twice as tall as wide
    return "\n".join("".join(shades[min(int(v * len(shades)), len(shades) - 1)] for v in row) for row in rows)
