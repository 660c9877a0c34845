"""Sample quality: the Frechet distance against closed forms and scipy, the classifier-based numbers by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

import zoo
from zoo import sample_quality as sq


def _random_covariance(rng: np.random.Generator, f: int) -> np.ndarray:
    m = rng.normal(size=(f, 2 * f))
    return m @ m.T / (2 * f)


def test_frechet_distance_matches_scipy_sqrtm():
    """The eigh route equals the textbook formula with scipy's general matrix square root."""
    rng = np.random.default_rng(0)
    for f in (1, 3, 16):
        mean_a, mean_b = rng.normal(size=f), rng.normal(size=f)
        cov_a, cov_b = _random_covariance(rng, f), _random_covariance(rng, f)
        cross = scipy.linalg.sqrtm(cov_a @ cov_b).real
        expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross)
        assert sq.gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    """Commuting (diagonal) covariances: |m_a - m_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2."""
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0  # = 10
    assert sq.gaussian_frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)


def test_frechet_distance_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(1)
    n = 200_000
    a = rng.normal([0.0, 0.0], [1.0, 2.0], size=(n, 2))
    b = rng.normal([3.0, 0.0], [1.0, 1.0], size=(n, 2))
    assert sq.frechet_distance(a, b) == pytest.approx(9.0 + 0.0 + 1.0, rel=0.01)
    assert sq.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_refuses_mismatched_features():
    with pytest.raises(zoo.ZooError, match="shared F"):
        sq.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_confident_fraction_and_class_entropy_by_hand():
    probabilities = np.array([[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.0, 0.08, 0.92], [0.1, 0.1, 0.8]])
    assert sq.confident_fraction(probabilities) == 0.5  # rows 0 and 2
    # predicted classes 0, 0 (first maximum), 2, 2: two classes, half each
    assert sq.class_entropy(probabilities) == pytest.approx(np.log(2))
    assert sq.class_entropy(np.eye(10)) == pytest.approx(np.log(10))
    assert sq.class_entropy(np.tile([0.0, 1.0], (7, 1))) == 0.0


class _Identity(nnx.Module):
    """A "classifier" whose features are the flattened pixels and whose logits are two pixel sums."""

    def features(self, x):
        return x.reshape(x.shape[0], -1)

    def __call__(self, x):
        flat = x.reshape(x.shape[0], -1)
        return 50.0 * jnp.stack([flat.sum(-1), flat.shape[-1] - flat.sum(-1)], axis=-1) / flat.shape[-1]


def test_measure_uses_the_classifier_features():
    """With pixels as features, the distance is the one of the pixel Gaussians, computed here directly."""
    rng = np.random.default_rng(2)
    real, generated = rng.random((300, 2, 2, 1)), rng.random((200, 2, 2, 1)) ** 2
    quality = sq.measure(_Identity(), real, generated)
    assert quality["frechet_distance"] == pytest.approx(sq.frechet_distance(real.reshape(300, 4), generated.reshape(200, 4)), rel=1e-5)
    assert quality["frechet_distance"] > 0.05
    assert sq.measure(_Identity(), real, real)["frechet_distance"] == pytest.approx(0.0, abs=1e-6)


def test_a_classifier_without_features_is_one_clear_error():
    with pytest.raises(zoo.ZooError, match="has no features"):
        sq.measure(lambda x: x, np.zeros((2, 2, 2, 1)), np.zeros((2, 2, 2, 1)))


@pytest.mark.mnist
@pytest.mark.slow
def test_fid_mnist_is_zero_for_the_same_digits_and_large_for_noise():
    """cnn-mnist features (the cards' FID-MNIST): the same set is 0, two halves of the test set are
    close, uniform noise is far (the measured numbers are on dcgan-mnist's card)."""
    from zoo import data

    test = data.load("mnist", "test")["image"].astype(np.float32) / 255.0
    a, b = test[:5000], test[5000:]
    noise = np.random.default_rng(0).random(a.shape).astype(np.float32)
    same = sq.measure("cnn-mnist", a, a)
    halves = sq.measure("cnn-mnist", a, b)
    to_noise = sq.measure("cnn-mnist", a, noise)
    assert same["frechet_distance"] == pytest.approx(0.0, abs=1e-3)
    assert to_noise["frechet_distance"] > 10 * halves["frechet_distance"]
    assert halves["class_entropy"] > 0.99 * np.log(10)  # test digits cover the 10 classes about evenly
    assert halves["confident_fraction"] > 0.95
    assert to_noise["class_entropy"] < 0.5  # noise looks like one class, if any
