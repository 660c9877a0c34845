"""The DCGAN's objective: two parameter groups with non-saturating losses, over the shared loop.

Every step updates the discriminator, then the generator against the freshly
updated discriminator (``Groups`` with ``alternate=False``), each with its own
optimizer state. Each group's loss gets its own key, so they draw independent z.
Real images are mapped from uint8 to [-1, 1], the generator's range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo import sample_quality, training
from zoo_gan.model import DCGAN, sample


def to_signed(images: jax.Array) -> jax.Array:
    """uint8 pixels (B, H, W, C) -> float32 in [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def discriminator_loss(model: DCGAN, batch: Mapping[str, jax.Array], key: jax.Array):
    """-log D(x) - log(1 - D(G(z))), averaged; also D's mean probability on real and fake."""
    real = model.discriminator(to_signed(batch["image"])).astype(jnp.float32)
    fake = model.discriminator(model.generate(key, real.shape[0], train=True)).astype(jnp.float32)
    loss = jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
    return loss, {"p_real": jnp.mean(jax.nn.sigmoid(real)), "p_fake": jnp.mean(jax.nn.sigmoid(fake))}


def generator_loss(model: DCGAN, batch: Mapping[str, jax.Array], key: jax.Array):
    """Non-saturating: -log D(G(z)), averaged (Goodfellow et al., 2014: strong gradients early on)."""
    n = batch["image"].shape[0]
    fake = model.discriminator(model.generate(key, n, train=True)).astype(jnp.float32)
    return jnp.mean(jax.nn.softplus(-fake))


OBJECTIVE = training.Groups((
    training.Group("disc", discriminator_loss, params=nnx.All(nnx.Param, nnx.PathContains("discriminator"))),
    training.Group("gen", generator_loss, params=nnx.All(nnx.Param, nnx.PathContains("generator"))),
))


def train(run: training.Run) -> training.TrainResult:
    return run.fit(OBJECTIVE)


QUALITY_CLASSIFIER = "cnn-mnist"
"""Whose features FID-MNIST uses (the residual CNN's pooled last stage, 99.3% accurate): our own MNIST
classifier, not Inception; the VAE plugin uses the same, so the cards compare on one scale."""
EVAL_SEED = 0


def evaluate(model: DCGAN, data: Mapping[str, np.ndarray], *, classifier: Any = QUALITY_CLASSIFIER) -> dict[str, float]:
    """Sample quality of ``len(data["image"])`` samples (fixed seed) against ``data``'s images.

    Returns ``fid_mnist`` (Frechet distance in the classifier's feature space), ``confident_fraction``
    (share of samples classified with probability > 0.9) and ``class_entropy`` (nats, of the
    predicted-class histogram); see ``zoo.sample_quality``.
    """
    quality = sample_quality.measure_sampler(classifier, data["image"], lambda key, n: sample(model, key, n), seed=EVAL_SEED)
    return {"fid_mnist": quality.pop("frechet_distance"), **quality}
