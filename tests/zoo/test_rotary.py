"""Rotary position embeddings against complex multiplication, and the property attention relies on."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from zoo.rotary import rotate


def test_rotation_is_complex_multiplication_by_the_position_phase():
    # The reference: pair i of a vector as the complex number x[i] + 1j * x[i + K/2], multiplied by
    # exp(1j * position * base ** (-i / (K/2))) (RoFormer's definition), in float64.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8))
    positions = np.array([0, 1, 7, 100, 511])
    half, base = 4, 500.0
    z = x[..., :half] + 1j * x[..., half:]
    phase = np.exp(1j * positions[:, None] * base ** (-np.arange(half) / half))  # (T, K/2)
    expected = z * phase[None, :, None, :]
    got = np.asarray(rotate(jnp.asarray(x, jnp.float32), jnp.asarray(positions), base))
    np.testing.assert_allclose(got, np.concatenate([expected.real, expected.imag], -1), atol=2e-5)


def test_scores_depend_on_relative_position_only():
    rng = np.random.default_rng(1)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32) for _ in range(2))

    def score(m: int, n: int) -> np.ndarray:
        return np.asarray(jnp.sum(rotate(q, jnp.array([m])) * rotate(k, jnp.array([n])), -1))

    np.testing.assert_allclose(score(3, 1), score(40, 38), rtol=1e-4)
    np.testing.assert_allclose(score(0, 9), score(20, 29), rtol=1e-4)
    assert not np.allclose(score(3, 1), score(3, 2), rtol=1e-3)  # and it does depend on the distance
