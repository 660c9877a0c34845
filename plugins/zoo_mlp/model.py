"""Multilayer perceptrons: the deep neural network trained by backpropagation.

Images ``(B, H, W, C)`` in [0, 1] are flattened and pass through ReLU hidden
layers (optionally with dropout) to class logits ``(B, num_classes)``. The model
follows ``zoo.classify``'s convention: ``model(x, train=False, key=None)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

Init = nnx.initializers


@dataclasses.dataclass(frozen=True, slots=True)
class MLPConfig:
    hidden: tuple[int, ...] = (1024, 1024)  # widths of the hidden layers; () is logistic regression
    dropout: float = 0.0  # on each hidden layer's output, in training only
    num_classes: int = 10
    image_shape: tuple[int, ...] = (28, 28, 1)

    def __post_init__(self):
        if any(w < 1 for w in self.hidden) or self.num_classes < 2:
            raise ValueError(f"hidden widths must be positive and num_classes >= 2; got {self.hidden}, {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sizes; got {self.image_shape}")


class MLP(nnx.Module):
    """(B, H, W, C) -> flatten -> [dense -> relu -> dropout] * len(hidden) -> dense -> logits (B, K)."""

    def __init__(self, cfg: MLPConfig, rngs: nnx.Rngs):
        widths = (math.prod(cfg.image_shape), *cfg.hidden, cfg.num_classes)
        # Megatron-style alternation: a layer split by columns feeds one split by rows,
        # so consecutive layers under tensor parallelism need no gather in between.
        axes = [("embed", "mlp") if i % 2 == 0 else ("mlp", "embed") for i in range(len(widths) - 1)]
        axes[-1] = (axes[-1][0], "classes")  # ten logits are not worth splitting
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, kernel_init=nnx.with_partitioning(Init.lecun_normal(), ax), rngs=rngs)
                for a, b, ax in zip(widths[:-1], widths[1:], axes)
            ]
        )
        self.dropout = nnx.Dropout(cfg.dropout)

    def features(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """(B, H, W, C) -> the last hidden layer's activations (B, hidden[-1]), or the pixels if none."""
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers[:-1]):
            h = nnx.relu(layer(h))
            if train and self.dropout.rate > 0:
                h = self.dropout(h, deterministic=False, rngs=jax.random.fold_in(key, i))
        return h

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        return self.layers[-1](self.features(x, train=train, key=key))


def build(config: MLPConfig, rngs: nnx.Rngs) -> MLP:
    return MLP(config, rngs)
