"""The classifier toolkit against numpy: accuracy, per-class accuracy, confusion counts, robust accuracy, predict.

The model under test is a "lookup" classifier whose prediction is known by
construction: softmax regression whose weights copy pixel k of the first row into
logit k, so an image lit at pixel k is predicted as class k.
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from zoo import classify
from zoo.attacks import Attack
from zoo_mlp.model import MLP, MLPConfig

K = 10


def lookup_classifier() -> MLP:
    with nnx.use_eager_sharding(False):
        model = MLP(MLPConfig(hidden=()), nnx.Rngs(0))
    kernel = np.zeros((28 * 28, K), np.float32)
    kernel[np.arange(K), np.arange(K)] = 10.0  # pixel (0, k) -> logit k
    model.layers[0].kernel[...] = kernel
    model.layers[0].bias[...] = np.zeros(K, np.float32)
    return model


def lit_images(pixels: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28, 1), image i lit (255) at row 0, column pixels[i]."""
    images = np.zeros((len(pixels), 28, 28, 1), np.uint8)
    images[np.arange(len(pixels)), 0, pixels, 0] = 255
    return images


@pytest.fixture
def labelled():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, 300).astype(np.int32)
    predicted = np.where(rng.random(300) < 0.7, labels, rng.integers(0, K, 300))  # ~70% right
    return {"image": lit_images(predicted), "label": labels}, predicted


def test_metrics_match_numpy(labelled):
    data, predicted = labelled
    metrics = classify.evaluate(lookup_classifier(), data, robust_examples=0)
    labels = data["label"]
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    for c in range(K):
        assert metrics[f"accuracy/{c}"] == pytest.approx(np.mean(predicted[labels == c] == c))
    expected = np.zeros((K, K), int)
    for t, p in zip(labels, predicted):
        expected[t, p] += 1
    np.testing.assert_array_equal(classify.confusion_matrix(metrics), expected)
    assert "robust_accuracy" not in metrics


def test_loss_is_the_mean_cross_entropy(labelled):
    data, predicted = labelled
    logits = np.zeros((len(predicted), K))
    logits[np.arange(len(predicted)), predicted] = 10.0  # what the lookup model outputs
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -log_p[np.arange(len(predicted)), data["label"]].mean()
    assert classify.evaluate(lookup_classifier(), data, robust_examples=0)["loss"] == pytest.approx(expected, rel=1e-5)


def test_absent_classes_get_no_accuracy():
    data = {"image": lit_images(np.array([1, 1, 2])), "label": np.array([1, 1, 2], np.int32)}
    metrics = classify.evaluate(lookup_classifier(), data, robust_examples=0)
    assert {k for k in metrics if k.startswith("accuracy/")} == {"accuracy/1", "accuracy/2"}


def test_robust_accuracy_bounds(labelled):
    """eps 0 cannot move an input: robust = clean. eps 1 spans the whole range: the attacker lights
    another class's pixel and darkens the true one, so nothing survives."""
    data, predicted = labelled
    model = lookup_classifier()
    still = classify.evaluate(model, data, attack=Attack("pgd", 0.0, steps=2))
    assert still["robust_accuracy"] == pytest.approx(still["accuracy"])
    broken = classify.evaluate(model, data, attack=Attack("pgd", 1.0, steps=3))
    assert broken["robust_accuracy"] == 0.0


def test_default_protocol_attacks_only_the_first_examples(labelled, monkeypatch):
    data, _ = labelled
    seen = []
    real = classify._attacked
    monkeypatch.setattr(classify, "_attacked", lambda model, x, y, attack: seen.append((len(x), attack)) or real(model, x, y, attack))
    classify.evaluate(lookup_classifier(), data, robust_examples=50)
    assert seen == [(50, classify.CARD_ATTACK)]


def test_predict_gives_probabilities_of_the_lit_class():
    images = lit_images(np.array([3, 7]))
    for given in (images, images.astype(np.float32) / 255.0):  # uint8 pixels or floats in [0, 1]
        p = classify.predict(lookup_classifier(), given)
        assert p.shape == (2, K)
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
        assert list(p.argmax(-1)) == [3, 7]


def test_confusion_matrix_absent_is_none():
    assert classify.confusion_matrix({"accuracy": 1.0}) is None
