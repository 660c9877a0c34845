"""Rotary position embeddings (RoPE; Su et al., 2021), for any plugin's attention.

Each query and key is split into pairs ``(x[i], x[i + K/2])`` (the half-split
layout), and pair ``i`` is rotated by the angle ``position * base ** (-i / (K/2))``.
A rotation by ``a`` then one by ``-b`` is one by ``a - b``, so the score of a
rotated query at position ``m`` and a rotated key at ``n`` depends on ``m - n``
only: attention sees relative positions, with no table of positions to learn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_head_width(head_width: int) -> None:
    """Raise ``ValueError`` for an odd head width: rotation turns the head's values in pairs."""
    if head_width % 2:
        raise ValueError(f"rotary positions need an even head width; got {head_width}")


def rotate(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """``x (B, T, H, K)`` rotated at ``positions int (T,)``; ``K`` even. Computed in float32, returned in ``x``'s dtype."""
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # (K/2,)
    angles = positions.astype(jnp.float32)[:, None] * frequencies  # (T, K/2)
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)
