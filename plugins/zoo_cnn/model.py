"""Convolutional classifiers: a LeNet-style network and a small residual network with BatchNorm.

Images ``(B, H, W, C)`` in [0, 1] -> class logits ``(B, num_classes)``, following
``zoo.classify``'s convention ``model(x, train=False, key=None)``:

- ``lenet``: [5x5 conv -> relu -> 2x2 max-pool] per width, then a hidden dense
  layer with dropout (LeCun et al., 1998, with ReLU and max-pooling).
- ``resnet``: a 3x3 conv-BN-relu stem and a 2x2 max-pool (ResNet's stem, which
  keeps the blocks at 14x14 and below: a quarter of the cost), then one stage per
  width of basic blocks (He et al., 2016): conv-BN-relu-conv-BN plus the
  shortcut, relu; every stage after the first halves H and W; global average
  pooling; dense.

BatchNorm normalises with the batch's statistics when ``train=True`` and updates
its running averages (non-trained variables the shared loop carries); in
inference it uses the running averages, so a prediction never depends on the
other images of its batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

Init = nnx.initializers
BN_MOMENTUM = 0.9  # running averages settle within a few hundred steps, not thousands


@dataclasses.dataclass(frozen=True, slots=True)
class CNNConfig:
    kind: Literal["lenet", "resnet"] = "lenet"
    channels: tuple[int, ...] = (32, 64)  # lenet: conv widths; resnet: stage widths
    dense: int = 512  # lenet: hidden dense width
    blocks: int = 1  # resnet: residual blocks per stage
    dropout: float = 0.0  # lenet: on the hidden dense layer, in training only
    num_classes: int = 10
    image_shape: tuple[int, ...] = (28, 28, 1)

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be one or more positive widths; got {self.channels}")
        if self.dense < 1 or self.blocks < 1 or self.num_classes < 2:
            raise ValueError("dense and blocks must be positive, num_classes at least 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sizes; got {self.image_shape}")
        halvings = len(self.channels)  # lenet: one pool per conv; resnet: the stem's pool, then a stride per stage
        if min(self.image_shape[:2]) < 2**halvings:
            raise ValueError(f"{self.kind} halves H and W {halvings} times: image_shape {self.image_shape} is too small")


def _conv(n_in: int, n_out: int, size: int, rngs: nnx.Rngs, stride: int = 1, bias: bool = True) -> nnx.Conv:
    init = nnx.with_partitioning(Init.he_normal(), (None, None, "conv", "conv"))
    return nnx.Conv(n_in, n_out, (size, size), strides=stride, padding="SAME", use_bias=bias, kernel_init=init, rngs=rngs)


def _dense(n_in: int, n_out: int, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=nnx.with_partitioning(Init.lecun_normal(), axes), rngs=rngs)


def _max_pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class LeNet(nnx.Module):
    """(B, H, W, C) -> [conv5x5 -> relu -> pool] per width -> dense -> relu -> dropout -> logits (B, K)."""

    def __init__(self, cfg: CNNConfig, rngs: nnx.Rngs):
        widths = (cfg.image_shape[-1], *cfg.channels)
        self.convs = nnx.List([_conv(a, b, 5, rngs) for a, b in zip(widths[:-1], widths[1:])])
        h, w = (math.ceil(s / 2 ** len(cfg.channels)) for s in cfg.image_shape[:2])
        self.hidden = _dense(h * w * cfg.channels[-1], cfg.dense, ("embed", "mlp"), rngs)
        self.logits = _dense(cfg.dense, cfg.num_classes, ("mlp", "classes"), rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def features(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """(B, H, W, C) -> the hidden dense layer's activations (B, dense): what the logits layer reads."""
        for conv in self.convs:
            x = _max_pool(nnx.relu(conv(x)))
        h = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        if train and self.dropout.rate > 0:
            h = self.dropout(h, deterministic=False, rngs=key)
        return h

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        return self.logits(self.features(x, train=train, key=key))


class ResidualBlock(nnx.Module):
    """conv3x3 -> BN -> relu -> conv3x3 -> BN, plus the shortcut (1x1 conv + BN when the shape changes), relu."""

    def __init__(self, n_in: int, n_out: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = _conv(n_in, n_out, 3, rngs, stride, bias=False)  # BN's shift makes a bias redundant
        self.norm1 = nnx.BatchNorm(n_out, momentum=BN_MOMENTUM, rngs=rngs)
        self.conv2 = _conv(n_out, n_out, 3, rngs, bias=False)
        self.norm2 = nnx.BatchNorm(n_out, momentum=BN_MOMENTUM, rngs=rngs)
        reshaped = stride != 1 or n_in != n_out
        self.project = _conv(n_in, n_out, 1, rngs, stride, bias=False) if reshaped else None
        self.project_norm = nnx.BatchNorm(n_out, momentum=BN_MOMENTUM, rngs=rngs) if reshaped else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        frozen = not train
        h = nnx.relu(self.norm1(self.conv1(x), use_running_average=frozen))
        h = self.norm2(self.conv2(h), use_running_average=frozen)
        shortcut = x if self.project is None else self.project_norm(self.project(x), use_running_average=frozen)
        return nnx.relu(h + shortcut)


class ResNet(nnx.Module):
    """(B, H, W, C) -> stem conv3x3-BN-relu -> pool -> stages of residual blocks -> global mean pool -> logits (B, K)."""

    def __init__(self, cfg: CNNConfig, rngs: nnx.Rngs):
        self.stem = _conv(cfg.image_shape[-1], cfg.channels[0], 3, rngs, bias=False)
        self.stem_norm = nnx.BatchNorm(cfg.channels[0], momentum=BN_MOMENTUM, rngs=rngs)
        blocks, width = [], cfg.channels[0]
        for stage, out in enumerate(cfg.channels):
            for b in range(cfg.blocks):
                blocks.append(ResidualBlock(width, out, 2 if stage > 0 and b == 0 else 1, rngs))
                width = out
        self.blocks = nnx.List(blocks)
        self.logits = _dense(width, cfg.num_classes, ("embed", "classes"), rngs)

    def features(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """(B, H, W, C) -> globally pooled activations of the last stage (B, channels[-1])."""
        del key  # nothing random: BatchNorm is the only train/inference difference
        x = _max_pool(nnx.relu(self.stem_norm(self.stem(x), use_running_average=not train)))
        for block in self.blocks:
            x = block(x, train)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        return self.logits(self.features(x, train=train, key=key))


def build(config: CNNConfig, rngs: nnx.Rngs) -> LeNet | ResNet:
    return (LeNet if config.kind == "lenet" else ResNet)(config, rngs)
