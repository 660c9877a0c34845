"""VAE networks: dense (the seed's) and convolutional, one interface.

Shapes: images ``x`` are ``(B, 28, 28, 1)`` floats in [0, 1]; latents ``z`` are
``(B, latent_dim)``; decoders return Bernoulli logits ``(B, 28, 28, 1)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Init = nnx.initializers


@dataclasses.dataclass(frozen=True, slots=True)
class VAEConfig:
    kind: Literal["dense", "conv"] = "dense"
    image_shape: tuple[int, ...] = (28, 28, 1)
    hidden: int = 128  # dense: width of the one hidden layer on each side
    latent_dim: int = 20
    channels: tuple[int, ...] = (32, 64)  # conv: encoder widths, each conv halves H and W

    def __post_init__(self):
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sizes; got {self.image_shape}")
        if self.latent_dim < 1 or self.hidden < 1:
            raise ValueError("latent_dim and hidden must be positive")
        if self.kind == "conv":
            if not self.channels or min(self.channels) < 1:
                raise ValueError(f"conv VAE needs at least one positive channel width; got {self.channels}")
            if any(s % 2 ** len(self.channels) for s in self.image_shape[:2]):
                raise ValueError(f"conv VAE needs H and W divisible by {2 ** len(self.channels)}")


def _dense(n_in: int, n_out: int, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=nnx.with_partitioning(Init.lecun_normal(), axes), rngs=rngs)


class DenseEncoder(nnx.Module):
    """(B, H, W, C) -> mean, logvar (B, latent)."""

    def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
        pixels = math.prod(cfg.image_shape)
        self.hidden = _dense(pixels, cfg.hidden, ("embed", "mlp"), rngs)
        self.stats = _dense(cfg.hidden, 2 * cfg.latent_dim, ("mlp", "latent"), rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        mean, logvar = jnp.split(self.stats(h), 2, axis=-1)
        return mean, logvar


class DenseDecoder(nnx.Module):
    """(B, latent) -> logits (B, H, W, C)."""

    def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
        self.image_shape = cfg.image_shape
        self.hidden = _dense(cfg.latent_dim, cfg.hidden, ("latent", "mlp"), rngs)
        self.logits = _dense(cfg.hidden, math.prod(cfg.image_shape), ("mlp", "embed"), rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.logits(nnx.relu(self.hidden(z))).reshape(z.shape[0], *self.image_shape)


def _conv(n_in: int, n_out: int, rngs: nnx.Rngs, transpose: bool = False) -> nnx.Module:
    layer = nnx.ConvTranspose if transpose else nnx.Conv
    init = nnx.with_partitioning(Init.lecun_normal(), (None, None, "conv", "conv"))
    return layer(n_in, n_out, kernel_size=(3, 3), strides=(2, 2), padding="SAME", kernel_init=init, rngs=rngs)


class ConvEncoder(nnx.Module):
    """(B, H, W, C) -> stride-2 convs -> flatten -> mean, logvar (B, latent)."""

    def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
        widths = (cfg.image_shape[-1], *cfg.channels)
        self.convs = nnx.List([_conv(a, b, rngs) for a, b in zip(widths[:-1], widths[1:])])
        h, w = (s // 2 ** len(cfg.channels) for s in cfg.image_shape[:2])
        self.stats = _dense(h * w * cfg.channels[-1], 2 * cfg.latent_dim, ("embed", "latent"), rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for conv in self.convs:
            x = nnx.relu(conv(x))
        mean, logvar = jnp.split(self.stats(x.reshape(x.shape[0], -1)), 2, axis=-1)
        return mean, logvar


class ConvDecoder(nnx.Module):
    """(B, latent) -> dense to (h, w, C_last) -> stride-2 transposed convs -> logits (B, H, W, C)."""

    def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
        self.grid = (*(s // 2 ** len(cfg.channels) for s in cfg.image_shape[:2]), cfg.channels[-1])
        self.project = _dense(cfg.latent_dim, math.prod(self.grid), ("latent", "embed"), rngs)
        widths = (*reversed(cfg.channels), cfg.image_shape[-1])
        self.deconvs = nnx.List([_conv(a, b, rngs, transpose=True) for a, b in zip(widths[:-1], widths[1:])])

    def __call__(self, z: jax.Array) -> jax.Array:
        x = nnx.relu(self.project(z)).reshape(z.shape[0], *self.grid)
        for i, deconv in enumerate(self.deconvs):
            x = deconv(x)
            if i < len(self.deconvs) - 1:  # the last layer gives logits
                x = nnx.relu(x)
        return x


class VAE(nnx.Module):
    """Encoder q(z|x) = N(mean, exp(logvar)), prior N(0, I), decoder p(x|z) = Bernoulli(sigmoid(logits))."""

    def __init__(self, cfg: VAEConfig, rngs: nnx.Rngs):
        self.config = cfg
        dense = cfg.kind == "dense"
        self.encoder = (DenseEncoder if dense else ConvEncoder)(cfg, rngs)
        self.decoder = (DenseDecoder if dense else ConvDecoder)(cfg, rngs)

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (B, H, W, C) -> logits (B, H, W, C), mean and logvar (B, latent); z reparameterised."""
        mean, logvar = self.encoder(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decoder(z), mean, logvar


def build(config: VAEConfig, rngs: nnx.Rngs) -> VAE:
    return VAE(config, rngs)


# --------------------------------------------------------------------------- sampling


@nnx.jit(static_argnums=2)
def _decode_prior(model: VAE, key: jax.Array, n: int) -> jax.Array:
    z = jax.random.normal(key, (n, model.config.latent_dim))
    return nnx.sigmoid(model.decoder(z))


@nnx.jit
def _reconstruct(model: VAE, x: jax.Array) -> jax.Array:
    mean, _ = model.encoder(x)
    return nnx.sigmoid(model.decoder(mean))


@nnx.jit(static_argnums=3)
def _interpolate(model: VAE, a: jax.Array, b: jax.Array, steps: int) -> jax.Array:
    (za, _), (zb, _) = model.encoder(a[None]), model.encoder(b[None])
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    return nnx.sigmoid(model.decoder((1 - t) * za + t * zb))


def _test_images(indices: np.ndarray) -> np.ndarray:
    from zoo import data

    images = data.load("mnist", "test")["image"]
    return images[indices % len(images)].astype(np.float32) / 255.0


def reconstruct(model: VAE, images: np.ndarray) -> np.ndarray:
    """images (B, H, W, C) in [0, 1] -> decoded posterior means, same shape."""
    return np.asarray(_reconstruct(model, jnp.asarray(images, jnp.float32)))


def interpolate(model: VAE, a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Two images (H, W, C) -> ``steps`` decodings along the line between their latent means."""
    return np.asarray(_interpolate(model, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), steps))


def sample(model: VAE, key: jax.Array, n: int, *, mode: str = "prior", index: int = 0) -> np.ndarray:
    """``n`` images (n, H, W, C) in [0, 1] (Bernoulli means).

    Modes:
      prior: decode z ~ N(0, I).
      reconstruct: test images ``index ..`` side by side with their reconstructions (n, H, 2W, C).
      interpolate: ``n`` steps between test images ``index`` and ``index + 1``.
    """
    if mode == "prior":
        return np.asarray(_decode_prior(model, key, n))
    if mode == "reconstruct":
        originals = _test_images(np.arange(index, index + n))
        return np.concatenate([originals, reconstruct(model, originals)], axis=2)
    if mode == "interpolate":
        a, b = _test_images(np.array([index, index + 1]))
        return interpolate(model, a, b, n)
    from zoo.errors import UsageError

    raise UsageError(f"vae sample mode must be prior, reconstruct or interpolate; got {mode!r}")
