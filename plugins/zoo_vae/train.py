"""The VAE objective (negative ELBO) and its evaluation, over the shared loop.

Pixels are binarised afresh every step (dynamic binarisation, as in Burda et al.
2016), so the Bernoulli likelihood is a proper one and the ELBO, in nats, is
comparable with published MNIST results. The test set is binarised once with a
fixed key, so ``evaluate`` is deterministic and ``zoo verify`` can reproduce it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zoo import sample_quality, training
from zoo_vae.model import VAE, sample

EVAL_BATCH = 1000
EVAL_SEED = 0


def elbo_terms(model: VAE, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-image reconstruction -log p(x|z) and KL(q(z|x) || p(z)), both (B,), in nats.

    x: binary images (B, H, W, C).
    """
    logits, mean, logvar = model(x, key)
    # Summed along (B, H*W*C) rows: the same sums, bitwise, as over axes (1, 2, 3), and XLA:CPU
    # ran the dense-20 step about 8% faster at batch 128 than reducing (B, 28, 28, 1) images.
    rows = (x.shape[0], -1)
    recon = optax.sigmoid_binary_cross_entropy(logits.reshape(rows).astype(jnp.float32), x.reshape(rows).astype(jnp.float32)).sum(axis=-1)
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
    return recon, kl


def binarize(images: jax.Array, key: jax.Array) -> jax.Array:
    """uint8 (B, H, W, C) -> {0, 1} float32, pixel on with probability value / 255.

    Drawn over (B, H*W*C) rows (the same bits: threefry counts elements in row-major
    order), so the draw and the loss's sum share one layout.
    """
    rows = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    return jax.random.bernoulli(key, rows).astype(jnp.float32).reshape(images.shape)


def negative_elbo(model: VAE, batch: Mapping[str, jax.Array], key: jax.Array):
    """The loss: mean negative ELBO of a batch {"image": uint8 (B, 28, 28, 1)}."""
    binarize_key, z_key = jax.random.split(key)
    recon, kl = elbo_terms(model, binarize(batch["image"], binarize_key), z_key)
    return jnp.mean(recon + kl), {"recon": jnp.mean(recon), "kl": jnp.mean(kl)}


def train(run: training.Run) -> training.TrainResult:
    return run.fit(training.Loss(negative_elbo))


@nnx.jit
def _eval_sums(model: VAE, images: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    binarize_key, z_key = jax.random.split(key)
    recon, kl = elbo_terms(model, binarize(images, binarize_key), z_key)
    return recon.sum(), kl.sum()


def evaluate(model: VAE, data: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Test-set negative ELBO, reconstruction term and KL, in nats per image.

    data: {"image": uint8 (N, 28, 28, 1)}; N need not divide the batch.
    """
    images = data["image"]
    recon = kl = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        key = jax.random.fold_in(jax.random.key(EVAL_SEED), start)
        r, k = _eval_sums(model, jnp.asarray(images[start : start + EVAL_BATCH]), key)
        recon, kl = recon + float(r), kl + float(k)
    n = len(images)
    return {"neg_elbo": (recon + kl) / n, "recon": recon / n, "kl": kl / n} | sample_quality_metrics(model, data)


QUALITY_CLASSIFIER = "cnn-mnist"
"""Whose features FID-MNIST uses: our residual MNIST classifier (not Inception); the GAN uses the same."""


def sample_quality_metrics(model: VAE, data: Mapping[str, np.ndarray]) -> dict[str, float]:
    """FID-MNIST, confident fraction and class entropy of ``len(data["image"])`` prior samples (see zoo.sample_quality)."""
    quality = sample_quality.measure_sampler(QUALITY_CLASSIFIER, data["image"], lambda key, n: sample(model, key, n), seed=EVAL_SEED)
    return {"fid_mnist": quality.pop("frechet_distance"), **quality}
