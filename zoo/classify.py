"""The classifier toolkit: the loss, ``evaluate`` and ``predict`` every image classifier shares.

A classifier plugin's model follows one convention::

    logits = model(images, train=False, key=None)   # images float (B, H, W, C) in [0, 1] -> (B, K)
    features = model.features(images)               # (B, F): what the logits layer reads, inference mode

where ``model(x)`` is the final (logits) layer applied to ``model.features(x)``, so
the two cannot drift apart (FID-style feature statistics use ``features``).
``train=True`` switches on what only training does (dropout, drawn from ``key``;
batch statistics in BatchNorm); the default is the deterministic inference mode.
Batches are ``{"image": uint8 (B, H, W, C), "label": int (B,)}`` as ``zoo.data``
gives them. With that, a plugin's ``train``, ``evaluate`` and ``predict`` are
one-liners over this module, and adversarial attacks (``zoo.attacks``) and
adversarial training work for every classifier alike.

``evaluate`` returns flat float metrics (the plugin contract): ``accuracy``,
``loss``, ``accuracy/<k>`` per class present, ``confusion/<true>/<predicted>``
counts, and ``robust_accuracy`` under an attack. ``confusion_matrix`` turns the
flat counts back into a matrix for printing and plotting.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zoo.attacks import Attack, perturb
from zoo.training.objectives import AttackableInput

IMAGE_KEY, LABEL_KEY = "image", "label"
PIXEL_RANGE = (0.0, 255.0)
"""The valid range of the ``image`` key as batches carry it (uint8 pixels)."""
PIXELS = AttackableInput(IMAGE_KEY, *PIXEL_RANGE)
"""What adversarial training perturbs: ``training.Loss(cross_entropy, inputs=PIXELS)``."""

EVAL_BATCH = 500
ATTACK_SEED = 0  # the random starts of an evaluation's attack are fixed: verify reproduces them

CARD_ATTACK = Attack("pgd", eps=0.1, steps=40)
CARD_ROBUST_EXAMPLES = 1000
"""The robustness every classifier card reports: PGD-40 at eps 0.1 (step 0.00625,
random start) on the first 1000 test images. The subset is a tenth of the cost:
40 gradient passes over all 10k test images are as many as ~7 training epochs."""


def to_unit(images: jax.Array) -> jax.Array:
    """Pixels in [0, 255] (uint8, or float from an attack) -> float32 in [0, 1]."""
    return jnp.asarray(images).astype(jnp.float32) / PIXEL_RANGE[1]


def cross_entropy(model: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict]:
    """The training loss: mean softmax cross-entropy of a batch, and its accuracy.

    batch: {"image": (B, H, W, C) pixels in [0, 255], "label": int (B,)}.
    """
    logits = model(to_unit(batch[IMAGE_KEY]), train=True, key=key).astype(jnp.float32)
    labels = batch[LABEL_KEY]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def summed_cross_entropy(model: Any, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Inference-mode cross-entropy summed over the batch: what attacks on a trained model raise.

    images: float (B, H, W, C) in [0, 1]; labels: int (B,).
    """
    logits = model(images).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()


@nnx.jit(static_argnums=4)
def adversarial_images(model: Any, images: jax.Array, labels: jax.Array, key: jax.Array, attack: Attack) -> jax.Array:
    """Adversarial versions of ``images`` (float (B, H, W, C) in [0, 1]) against ``labels``."""
    return perturb(attack, lambda x: summed_cross_entropy(model, x, labels), images, key, bounds=(0.0, 1.0))


@nnx.jit
def _logits(model: Any, images: jax.Array) -> jax.Array:
    return model(images).astype(jnp.float32)


def _batched_logits(model: Any, images: np.ndarray) -> np.ndarray:
    """Logits (N, K) of images (N, H, W, C) in [0, 1], ``EVAL_BATCH`` at a time."""
    batches = [images[i : i + EVAL_BATCH] for i in range(0, len(images), EVAL_BATCH)]
    return np.concatenate([np.asarray(_logits(model, jnp.asarray(batch))) for batch in batches])


def _attacked(model: Any, images: np.ndarray, labels: np.ndarray, attack: Attack) -> np.ndarray:
    """Adversarial images for a whole split, in batches, each batch with its own fixed key."""
    out = []
    for start in range(0, len(images), EVAL_BATCH):
        key = jax.random.fold_in(jax.random.key(ATTACK_SEED), start)
        x, y = jnp.asarray(images[start : start + EVAL_BATCH]), jnp.asarray(labels[start : start + EVAL_BATCH])
        out.append(np.asarray(adversarial_images(model, x, y, key, attack)))
    return np.concatenate(out) if out else images


def evaluate(
    model: Any,
    data: Mapping[str, np.ndarray],
    *,
    attack: Attack | None = None,
    robust_examples: int | None = CARD_ROBUST_EXAMPLES,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Accuracy, per-class accuracy, confusion counts and robust accuracy of a classifier.

    Args:
      model: a classifier following this module's convention.
      data: {"image": uint8 (N, H, W, C), "label": int (N,)}.
      attack: the attack ``robust_accuracy`` measures; None: ``CARD_ATTACK`` on the
        first ``robust_examples`` images (the cards' protocol). An attack given
        explicitly runs on every example.
      robust_examples: with the default attack, how many examples it runs on; 0 skips it.
      num_classes: size of the confusion matrix; default: the model's output width.

    Returns:
      {"accuracy", "loss", "accuracy/<k>" for each class present, "confusion/<t>/<p>",
      "robust_accuracy"}, all floats; accuracies are fractions in [0, 1].
    """
    images, labels = np.asarray(to_unit(data[IMAGE_KEY])), np.asarray(data[LABEL_KEY]).astype(np.int32)
    metrics = label_metrics(_batched_logits(model, images), labels, num_classes)
    if attack is None and robust_examples:
        attack, images, labels = CARD_ATTACK, images[:robust_examples], labels[:robust_examples]
    if attack is not None:
        adversarial = _attacked(model, images, labels, attack)
        metrics["robust_accuracy"] = float(np.mean(_batched_logits(model, adversarial).argmax(-1) == labels))
    return metrics


def label_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> dict[str, float]:
    """``accuracy``, ``loss``, ``accuracy/<k>`` and ``confusion/<t>/<p>`` of logits ``(N, K)`` against int labels ``(N,)``.

    For any classifier, of images or not; ``num_classes`` sizes the confusion matrix (default K).
    """
    labels = np.asarray(labels).astype(np.int32)
    k = num_classes or logits.shape[-1]
    predicted = logits.argmax(-1)
    loss = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits, jnp.float32), jnp.asarray(labels)).mean()
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    metrics = {"accuracy": float(np.mean(predicted == labels)), "loss": float(loss)}
    for c in range(k):
        if confusion[c].sum():  # a class with no examples has no accuracy
            metrics[f"accuracy/{c}"] = float(confusion[c, c] / confusion[c].sum())
    return metrics | {f"confusion/{t}/{p}": float(confusion[t, p]) for t in range(k) for p in range(k)}


CONFUSION_KEY = re.compile(r"^confusion/(\d+)/(\d+)$")


def confusion_matrix(metrics: Mapping[str, float]) -> np.ndarray | None:
    """The (K, K) int matrix (rows: true class, columns: predicted) in ``evaluate``'s metrics, or None."""
    cells = {tuple(map(int, m.groups())): v for key, v in metrics.items() if (m := CONFUSION_KEY.match(key))}
    if not cells:
        return None
    k = 1 + max(max(cell) for cell in cells)
    matrix = np.zeros((k, k), np.int64)
    for (t, p), v in cells.items():
        matrix[t, p] = int(v)
    return matrix


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) of images (N, H, W, C): uint8 pixels or floats in [0, 1]."""
    images = np.asarray(images)
    unit = to_unit(images) if images.dtype == np.uint8 else jnp.asarray(images, jnp.float32)
    return np.asarray(jax.nn.softmax(_logits(model, unit), axis=-1))


def attack_images(model: Any, images: np.ndarray, attack: Attack, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Adversarial versions of images whose labels are unknown: each is attacked away from the
    class the model predicts for it (the usual untargeted attack without ground truth).

    images: float (N, H, W, C) in [0, 1]. Returns (adversarial images like ``images``, the attacked labels (N,)).
    """
    images = np.asarray(images, np.float32)
    logits = np.asarray(_logits(model, jnp.asarray(images)))
    if logits.ndim != 2 or len(logits) != len(images):
        raise ValueError(f"the model maps {images.shape} images to {logits.shape}, not to logits (N, K)")
    labels = logits.argmax(-1).astype(np.int32)
    key = jax.random.key(seed)
    return np.asarray(adversarial_images(model, jnp.asarray(images), jnp.asarray(labels), key, attack)), labels


def triptychs(images: np.ndarray, adversarial: np.ndarray, eps: float) -> np.ndarray:
    """Rows of (original, adversarial, perturbation) for a grid with 3 columns: (3N, H, W, C) in [0, 1].

    The perturbation is shown at mid grey for 0, white for +eps and black for -eps.
    """
    images = np.asarray(images, np.float32)
    scale = 2 * eps if eps > 0 else 1.0
    perturbation = np.clip(0.5 + (adversarial - images) / scale, 0.0, 1.0)
    return np.stack([images, adversarial, perturbation], axis=1).reshape(-1, *images.shape[1:])


def confusion_png(matrix: np.ndarray, path: Any, classes: tuple[str, ...] = (), cell: int = 36) -> None:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a PNG with counts in the cells.

    Each row is shaded by its own fractions (dark = many), so a class with few examples
    is as readable as a large one.
    """
    from PIL import Image, ImageDraw

    from zoo.download import atomic_write_bytes

    k = len(matrix)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    margin = 8 + 6 * max(len(n) for n in names)
    canvas = Image.new("L", (margin + k * cell + 4, 20 + margin + k * cell + 4), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 2), "rows: true class, columns: predicted", fill=0)
    top = 20 + margin
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for i in range(k):
        draw.text((2, top + i * cell + cell // 3), names[i], fill=0)
        draw.text((margin + i * cell + 2, top - 14), names[i][: cell // 6], fill=0)
        for j in range(k):
            shade = int(255 * (1 - fractions[i, j]))
            box = (margin + j * cell, top + i * cell, margin + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=shade, outline=200)
            draw.text((box[0] + 3, box[1] + cell // 3), str(int(matrix[i, j])), fill=255 if shade < 128 else 0)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def format_confusion(matrix: np.ndarray, classes: tuple[str, ...] = ()) -> str:
    """A confusion matrix as a text table: one row per true class, one column per predicted class."""
    k = len(matrix)
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    width = max(len(str(int(matrix.max(initial=0)))), 3)
    label = max(len(n) for n in names)
    header = " " * label + " | " + " ".join(f"{i:>{width}}" for i in range(k)) + "   (columns: predicted class index)"
    rows = [f"{names[i]:>{label}} | " + " ".join(f"{int(v):>{width}}" for v in matrix[i]) for i in range(k)]
    return "\n".join([header, "-" * len(header), *rows])
