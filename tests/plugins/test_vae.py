"""The VAE plugin: shapes, the ELBO's terms, sampling modes, and learning on real MNIST."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo_vae import model as vae_model
from zoo_vae import train as vae_train


@pytest.mark.parametrize("variant,latent", [("dense-20", 20), ("conv-16", 16)])
def test_shapes(variant, latent):
    model = zoo.build("vae", variant)
    x = jnp.zeros((3, 28, 28, 1))
    logits, mean, logvar = model(x, jax.random.key(0))
    assert logits.shape == (3, 28, 28, 1)
    assert mean.shape == logvar.shape == (3, latent)


def test_dense_20_is_the_seed_architecture():
    """784 -> 128 -> 2x20 | 20 -> 128 -> 784, nothing else."""
    model = zoo.build("vae", "dense-20")
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert shapes == {
        "encoder/hidden/kernel": (784, 128), "encoder/hidden/bias": (128,),
        "encoder/stats/kernel": (128, 40), "encoder/stats/bias": (40,),
        "decoder/hidden/kernel": (20, 128), "decoder/hidden/bias": (128,),
        "decoder/logits/kernel": (128, 784), "decoder/logits/bias": (784,),
    }


def test_kl_matches_closed_form_and_recon_is_bce():
    model = zoo.build("vae", "dense-20", seed=1)
    x = (np.random.default_rng(0).random((4, 28, 28, 1)) > 0.5).astype(np.float32)
    recon, kl = vae_train.elbo_terms(model, jnp.asarray(x), jax.random.key(0))
    mean, logvar = model.encoder(jnp.asarray(x))
    expected_kl = 0.5 * np.sum(np.exp(logvar) + np.asarray(mean) ** 2 - 1 - logvar, axis=-1)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-5)
    assert recon.shape == (4,) and np.all(recon > 0)
    # -log p(x|z) of a Bernoulli over 784 pixels is at least 0 and, for an untrained
    # decoder near p=0.5, close to 784 * log 2.
    assert np.all(np.abs(np.asarray(recon) / 784 - np.log(2)) < 0.5)


def test_sample_modes_on_tiny_model(monkeypatch, tiny_mnist):
    model = zoo.build("vae", "dense-20")
    monkeypatch.setattr("zoo.data.load", lambda name, split="train": tiny_mnist)
    prior = vae_model.sample(model, jax.random.key(0), 5)
    assert prior.shape == (5, 28, 28, 1) and 0 <= prior.min() and prior.max() <= 1
    pairs = vae_model.sample(model, jax.random.key(0), 3, mode="reconstruct")
    np.testing.assert_allclose(pairs[:, :, :28], tiny_mnist["image"][:3] / 255.0, atol=1e-6)
    assert pairs.shape == (3, 28, 56, 1)
    path = vae_model.sample(model, jax.random.key(0), 7, mode="interpolate")
    assert path.shape == (7, 28, 28, 1)
    with pytest.raises(zoo.UsageError):
        vae_model.sample(model, jax.random.key(0), 2, mode="nope")


def test_evaluate_is_deterministic(tiny_mnist):
    model = zoo.build("vae", "dense-20")
    a, b = vae_train.evaluate(model, tiny_mnist), vae_train.evaluate(model, tiny_mnist)
    assert a == b
    assert a["neg_elbo"] == pytest.approx(a["recon"] + a["kl"], rel=1e-6)


@pytest.mark.mnist
def test_learns_real_mnist(tmp_path):
    """300 steps on real MNIST take the test negative ELBO from ~540 nats to below 160."""
    untrained = zoo.build("vae", "dense-20")
    test = zoo.data.load("mnist", "test")
    small_test = {"image": test["image"][:2000]}
    before = vae_train.evaluate(untrained, small_test)["neg_elbo"]
    zoo.train("vae", steps=300, batch_size=128, workdir=tmp_path, progress=False)
    after = zoo.load(tmp_path).evaluate(small_test)["neg_elbo"]
    assert before > 400
    assert after < 160


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"image_shape": (28, 28)}, "image_shape must be (H, W, C)"),
        ({"kind": "conv", "channels": ()}, "at least one positive channel width"),
        ({"kind": "conv", "image_shape": (30, 30, 1)}, "divisible by 4"),
        ({"latent_dim": 0}, "latent_dim and hidden must be positive"),
    ],
)
def test_config_is_checked_before_any_build(overrides, needle):
    with pytest.raises(zoo.UsageError, match=re.escape(needle)):
        zoo.build("vae", "dense-20", **overrides)
