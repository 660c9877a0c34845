"""The VAE loss computed along (B, H*W*C) rows (for speed) is bitwise the loss over (B, H, W, C) images.

The reference is the direct form: one Bernoulli draw over the images' own shape
and sums over axes (1, 2, 3); values and gradients must agree bit for bit, so
the speed-up changes no trained weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import zoo
from zoo_vae.train import binarize, negative_elbo


def image_axes_loss(model, batch, key):
    """The loss written over (B, 28, 28, 1) images, as the plugin first had it."""
    binarize_key, z_key = jax.random.split(key)
    x = jax.random.bernoulli(binarize_key, batch["image"].astype(jnp.float32) / 255.0).astype(jnp.float32)
    logits, mean, logvar = model(x, z_key)
    recon = optax.sigmoid_binary_cross_entropy(logits, x).sum(axis=(1, 2, 3))
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
    return jnp.mean(recon + kl), {"recon": jnp.mean(recon), "kl": jnp.mean(kl)}


def test_binarize_draws_the_bits_bernoulli_draws_on_the_image_shape():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8))
    key = jax.random.key(3)
    expected = jax.random.bernoulli(key, images.astype(jnp.float32) / 255.0).astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(binarize(images, key)), np.asarray(expected))


def test_loss_and_gradients_are_bitwise_those_over_image_axes():
    graphdef, params = nnx.split(zoo.build("vae", "dense-20", seed=0))
    images = np.random.default_rng(1).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    batch = {"image": jnp.asarray(images)}

    def value_and_grads(loss):
        fn = jax.jit(jax.value_and_grad(lambda p, k: loss(nnx.merge(graphdef, p), batch, k), has_aux=True))
        return fn(params, jax.random.key(7))

    (loss, metrics), grads = value_and_grads(negative_elbo)
    (loss_ref, metrics_ref), grads_ref = value_and_grads(image_axes_loss)
    assert float(loss) == float(loss_ref) and float(metrics["recon"]) == float(metrics_ref["recon"])
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
