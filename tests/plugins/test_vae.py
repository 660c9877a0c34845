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
    """Shapes only: traced abstractly (nnx.eval_shape), no weights made and no convolution run."""
    from zoo.config import make_config

    plugin = zoo.registry.get_plugin("vae")
    config = make_config(plugin, variant, {})
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: vae_model.build(config, nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m(x, jax.random.key(0)), model, jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32))
    logits, mean, logvar = out
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


def _binary_images(n: int) -> jnp.ndarray:
    return jnp.asarray((np.random.default_rng(0).random((n, 28, 28, 1)) > 0.5).astype(np.float32))


def test_kl_matches_a_monte_carlo_estimate():
    """KL(q(z|x) || N(0, I)) against E_q[log q(z) - log p(z)] from 200k samples of q, in numpy."""
    model = zoo.build("vae", "dense-20", seed=1)
    x = _binary_images(4)
    _, kl = vae_train.elbo_terms(model, x, jax.random.key(0))
    mean, logvar = (np.asarray(t, np.float64) for t in model.encoder(x))
    eps = np.random.default_rng(1).standard_normal((200_000, *mean.shape))
    z = mean + np.exp(logvar / 2) * eps
    log_q = -0.5 * np.sum(eps**2 + logvar + np.log(2 * np.pi), axis=-1)  # (S, 4)
    log_p = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=-1)
    samples = log_q - log_p
    standard_error = samples.std(axis=0) / np.sqrt(len(samples))
    np.testing.assert_array_less(np.abs(np.asarray(kl) - samples.mean(axis=0)), 5 * standard_error + 1e-6)


@pytest.mark.parametrize("mean_value,expected", [(0.0, 0.0), (1.0, 10.0)])
def test_kl_at_known_points(mean_value, expected):
    """q = N(m, I) on 20 latents has KL = 20 * m^2 / 2: zero at the prior, 10 nats at m = 1."""
    model = zoo.build("vae", "dense-20", seed=1)
    stats = model.encoder.stats
    stats.kernel[...] = jnp.zeros_like(stats.kernel[...])  # (mean, logvar) = the bias, whatever x is
    stats.bias[...] = jnp.concatenate([jnp.full(20, mean_value), jnp.zeros(20)])
    _, kl = vae_train.elbo_terms(model, _binary_images(3), jax.random.key(0))
    np.testing.assert_allclose(kl, np.full(3, expected), atol=1e-6)


def test_recon_is_the_bernoulli_negative_log_likelihood():
    model = zoo.build("vae", "dense-20", seed=1)
    x = _binary_images(4)
    recon, _ = vae_train.elbo_terms(model, x, jax.random.key(0))
    logits, _, _ = model(x, jax.random.key(0))  # the same key: the same z, the same logits
    p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    expected = -np.sum(np.asarray(x) * np.log(p) + (1 - np.asarray(x)) * np.log1p(-p), axis=(1, 2, 3))
    np.testing.assert_allclose(recon, expected, rtol=1e-5)


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
    assert a == b and set(a) >= {"neg_elbo", "recon", "kl"}


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
