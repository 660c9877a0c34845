"""DCGAN (Radford et al., 2016) for small grey images: a generator and a discriminator in one module.

Shapes: latents ``z`` are ``(B, latent_dim)``; images inside the GAN are ``(B, H, W, C)``
in [-1, 1] (the generator ends in tanh, as in DCGAN); ``sample`` returns them in [0, 1].

- Generator: dense to ``(H/4, W/4, C0)`` -> BN -> ReLU -> transposed conv (stride 2)
  to ``C1`` -> BN -> ReLU -> transposed conv (stride 2) to the image channels -> tanh.
- Discriminator: strided convs with LeakyReLU(0.2), no normalisation (so real and fake
  batches never mix statistics), then one logit per image.

Weights start from N(0, 0.02) as in the DCGAN paper.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Init = nnx.initializers
WEIGHT_INIT = Init.normal(0.02)
LEAK = 0.2
BN_MOMENTUM = 0.9  # running averages that follow the generator within tens of steps


@dataclasses.dataclass(frozen=True, slots=True)
class GANConfig:
    image_shape: tuple[int, ...] = (28, 28, 1)
    latent_dim: int = 64
    generator_channels: tuple[int, int] = (64, 32)  # widths at H/4 and H/2
    discriminator_channels: tuple[int, int] = (32, 64)  # widths at H/2 and H/4
    kernel: int = 4  # DCGAN's 4x4 kernels: stride 2 covers every input pixel evenly

    def __post_init__(self):
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sizes; got {self.image_shape}")
        if any(s % 4 for s in self.image_shape[:2]):
            raise ValueError(f"the DCGAN halves H and W twice: they must be divisible by 4; got {self.image_shape}")
        widths = (*self.generator_channels, *self.discriminator_channels)
        if len(self.generator_channels) != 2 or len(self.discriminator_channels) != 2 or min(widths) < 1:
            raise ValueError("generator_channels and discriminator_channels must be two positive widths each")
        if self.latent_dim < 1 or self.kernel < 1:
            raise ValueError("latent_dim and kernel must be positive")


def _conv(n_in: int, n_out: int, cfg: GANConfig, rngs: nnx.Rngs, transpose: bool = False) -> nnx.Module:
    layer = nnx.ConvTranspose if transpose else nnx.Conv
    init = nnx.with_partitioning(WEIGHT_INIT, (None, None, "conv", "conv"))
    return layer(n_in, n_out, (cfg.kernel, cfg.kernel), strides=(2, 2), padding="SAME", kernel_init=init, rngs=rngs)


def _batch_norm(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, momentum=BN_MOMENTUM, scale_init=lambda k, s, d=jnp.float32: 1.0 + WEIGHT_INIT(k, s, d), rngs=rngs)


class Generator(nnx.Module):
    """z (B, latent) -> images (B, H, W, C) in [-1, 1]."""

    def __init__(self, cfg: GANConfig, rngs: nnx.Rngs):
        h, w, c = cfg.image_shape
        wide, narrow = cfg.generator_channels
        self.grid = (h // 4, w // 4, wide)
        self.project = nnx.Linear(cfg.latent_dim, int(np.prod(self.grid)), use_bias=False,
                                  kernel_init=nnx.with_partitioning(WEIGHT_INIT, ("latent", "embed")), rngs=rngs)
        self.project_norm = _batch_norm(wide, rngs)
        self.up1 = _conv(wide, narrow, cfg, rngs, transpose=True)
        self.up1_norm = _batch_norm(narrow, rngs)
        self.up2 = _conv(narrow, c, cfg, rngs, transpose=True)

    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        """``train``: normalise with the batch's statistics and update the running averages."""
        frozen = not train
        x = self.project(z).reshape(z.shape[0], *self.grid)
        x = nnx.relu(self.project_norm(x, use_running_average=frozen))  # (B, H/4, W/4, C0)
        x = nnx.relu(self.up1_norm(self.up1(x), use_running_average=frozen))  # (B, H/2, W/2, C1)
        return jnp.tanh(self.up2(x))  # (B, H, W, C)


class Discriminator(nnx.Module):
    """images (B, H, W, C) in [-1, 1] -> logits (B,) of "real"."""

    def __init__(self, cfg: GANConfig, rngs: nnx.Rngs):
        h, w, c = cfg.image_shape
        narrow, wide = cfg.discriminator_channels
        self.down1 = _conv(c, narrow, cfg, rngs)
        self.down2 = _conv(narrow, wide, cfg, rngs)
        self.logit = nnx.Linear((h // 4) * (w // 4) * wide, 1,
                                kernel_init=nnx.with_partitioning(WEIGHT_INIT, ("embed", None)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.leaky_relu(self.down1(x), LEAK)  # (B, H/2, W/2, C0)
        x = nnx.leaky_relu(self.down2(x), LEAK)  # (B, H/4, W/4, C1)
        return self.logit(x.reshape(x.shape[0], -1))[:, 0]


class DCGAN(nnx.Module):
    """The pair; the shared loop trains ``generator`` and ``discriminator`` as two parameter groups."""

    def __init__(self, cfg: GANConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.generator = Generator(cfg, rngs)
        self.discriminator = Discriminator(cfg, rngs)

    def generate(self, key: jax.Array, n: int, train: bool = False) -> jax.Array:
        """``n`` images (n, H, W, C) in [-1, 1] from z ~ N(0, I) drawn with ``key``."""
        return self.generator(jax.random.normal(key, (n, self.config.latent_dim)), train=train)


def build(config: GANConfig, rngs: nnx.Rngs) -> DCGAN:
    return DCGAN(config, rngs)


@nnx.jit(static_argnums=2)
def _generate(model: DCGAN, key: jax.Array, n: int) -> jax.Array:
    return (model.generate(key, n) + 1.0) / 2.0


def sample(model: DCGAN, key: jax.Array, n: int) -> np.ndarray:
    """``n`` images (n, H, W, C) in [0, 1]; BatchNorm uses its running averages."""
    return np.clip(np.asarray(_generate(model, key, n)), 0.0, 1.0)
