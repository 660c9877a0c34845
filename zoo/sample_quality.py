"""How good are generated images? Measured with a trained classifier, generically.

Three numbers, each comparing generated images with real ones through a
classifier (a pretrained name such as a plugin passes, or a loaded model):

- ``frechet_distance``: the Frechet distance between Gaussians fitted to the
  classifier's features of the real and of the generated images (the recipe of
  Heusel et al.'s FID, 2017, in our own classifier's feature space instead of
  Inception's: numbers are comparable only under the same classifier);
- ``confident_fraction``: the fraction of generated images the classifier labels
  with probability above 0.9 (do they look like some class at all?);
- ``class_entropy``: the entropy, in nats, of the histogram of predicted classes
  (mode coverage: log K when every class is generated equally, 0 for one class).

The classifier follows ``zoo.classify``'s convention and exposes its features:
``model.features(images) -> (B, F)``, the input of its final layer, in inference
mode, for images ``(B, H, W, C)`` in [0, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo.errors import ZooError

CONFIDENCE = 0.9
BATCH = 500


def gaussian_frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mean_a, cov_a) and N(mean_b, cov_b).

    ``|mean_a - mean_b|^2 + tr(A) + tr(B) - 2 tr((A^1/2 B A^1/2)^1/2)``; means (F,), covariances (F, F).
    The cross term goes through the symmetric matrix ``A^1/2 B A^1/2`` and ``eigh``, so
    it stays real and needs no general matrix square root.
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross
    return float(max(distance, 0.0))  # rounding can leave -1e-12 for identical sets


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (F, F)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F) and (M, F)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ZooError(f"need two feature sets (N, F) with a shared F and N >= 2; got {a.shape} and {b.shape}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def confident_fraction(probabilities: np.ndarray, threshold: float = CONFIDENCE) -> float:
    """Fraction of rows (N, K) whose largest class probability exceeds ``threshold``."""
    return float(np.mean(np.max(probabilities, axis=-1) > threshold))


def class_entropy(probabilities: np.ndarray) -> float:
    """Entropy in nats of the histogram of predicted classes (argmax of each row of (N, K))."""
    counts = np.bincount(np.argmax(probabilities, axis=-1), minlength=probabilities.shape[-1])
    shares = counts[counts > 0] / counts.sum()
    return float(-np.sum(shares * np.log(shares)))


@functools.lru_cache(maxsize=4)
def _pretrained(name: str) -> Any:
    from zoo import api

    return api.load(name).model


def _classifier(classifier: Any) -> Any:
    """A pretrained name, a loaded model (``.model``) or a module -> the module; it must have ``features``."""
    name = classifier if isinstance(classifier, str) else type(classifier).__name__
    model = _pretrained(classifier) if isinstance(classifier, str) else getattr(classifier, "model", classifier)
    if not callable(getattr(model, "features", None)):
        raise ZooError(f"classifier {name!r} has no features(images) method (its penultimate layer); sample quality needs one")
    return model


@nnx.jit
def _features_and_probabilities(model: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.features(images), jax.nn.softmax(model(images).astype(jnp.float32), axis=-1)


def classify(classifier: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W, C) in [0, 1] -> features (N, F) and class probabilities (N, K), in batches."""
    model = _classifier(classifier)
    parts = [_features_and_probabilities(model, jnp.asarray(images[i : i + BATCH], jnp.float32)) for i in range(0, len(images), BATCH)]
    return np.concatenate([np.asarray(f) for f, _ in parts]), np.concatenate([np.asarray(p) for _, p in parts])


def measure(classifier: Any, real: np.ndarray, generated: np.ndarray) -> dict[str, float]:
    """``frechet_distance``, ``confident_fraction`` and ``class_entropy`` of ``generated`` against ``real``.

    Args:
      classifier: a pretrained classifier's name (``"cnn-mnist"``), a loaded model or an nnx module.
      real, generated: images (N, H, W, C) and (M, H, W, C), floats in [0, 1].
    """
    real_features, _ = classify(classifier, real)
    features, probabilities = classify(classifier, generated)
    return {
        "frechet_distance": frechet_distance(real_features, features),
        "confident_fraction": confident_fraction(probabilities),
        "class_entropy": class_entropy(probabilities),
    }


def measure_sampler(
    classifier: Any, real: np.ndarray, sample: Callable[[jax.Array, int], np.ndarray], *, seed: int = 0
) -> dict[str, float]:
    """``measure`` on ``len(real)`` images from ``sample(key, n)``, drawn with a fixed ``seed`` (so verify reproduces it).

    real: uint8 pixels or floats in [0, 1], (N, H, W, C).
    """
    real = np.asarray(real)
    real = real.astype(np.float32) / 255.0 if real.dtype == np.uint8 else real.astype(np.float32)
    return measure(classifier, real, np.asarray(sample(jax.random.key(seed), len(real)), np.float32))
