"""Vision Transformer (Dosovitskiy et al., 2021) for small images.

Shapes: images ``x`` are ``(B, H, W, C)`` floats in [0, 1]; the image is cut
into ``P x P`` patches, giving ``N = (H/P) * (W/P)`` patch tokens plus one class
token, ``T = N + 1``; every token is ``D = width`` wide; logits are ``(B, classes)``.

Parameters name logical axes (``zoo.sharding.RULES``): ``embed`` for the model
width, ``heads`` and ``mlp`` for what tensor parallelism splits (each shard owns
whole heads and a slice of the MLP), ``kv`` for the per-head width.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

Init = nnx.initializers
# MNIST's pixel mean and standard deviation: inputs are standardised inside the model,
# so callers pass plain [0, 1] images (what `sample` returns and `predict` takes).
PIXEL_MEAN, PIXEL_STD = 0.1307, 0.3081


@dataclasses.dataclass(frozen=True, slots=True)
class ViTConfig:
    image_shape: tuple[int, ...] = (28, 28, 1)
    num_classes: int = 10
    patch: int = 7  # 28/7 = 4x4 = 16 tokens; patch 4 (49 tokens) cost 4.3x more per step here
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2

    def __post_init__(self):
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) of positive sizes; got {self.image_shape}")
        if self.patch < 1 or any(s % self.patch for s in self.image_shape[:2]):
            raise ValueError(f"patch {self.patch} must divide the image's height and width {self.image_shape[:2]}")
        if min(self.width, self.depth, self.heads, self.mlp_ratio, self.num_classes) < 1:
            raise ValueError("width, depth, heads, mlp_ratio and num_classes must be positive")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_shape[0] // self.patch) * (self.image_shape[1] // self.patch)


def _kernel(axes: tuple[str | None, ...]) -> nnx.Initializer:
    return nnx.with_partitioning(Init.xavier_uniform(), axes)


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        width,
        scale_init=nnx.with_partitioning(Init.ones, ("embed",)),
        bias_init=nnx.with_partitioning(Init.zeros, ("embed",)),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention: (B, T, D) -> (B, T, D), through ``jax.nn.dot_product_attention``."""

    def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
        head_dim = width // heads

        def project_in():  # (D) -> (heads, head_dim); the kernel is (D, heads, head_dim)
            return nnx.LinearGeneral(width, (heads, head_dim), kernel_init=_kernel(("embed", "heads", "kv")),
                                     bias_init=nnx.with_partitioning(Init.zeros, ("heads", "kv")), rngs=rngs)

        self.query, self.key, self.value = project_in(), project_in(), project_in()
        self.out = nnx.LinearGeneral((heads, head_dim), width, axis=(-2, -1), kernel_init=_kernel(("heads", "kv", "embed")),
                                     bias_init=nnx.with_partitioning(Init.zeros, ("embed",)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, heads, head_dim) each
        return self.out(jax.nn.dot_product_attention(q, k, v))  # (B, T, D)


class MLP(nnx.Module):
    """(B, T, D) -> D * mlp_ratio, GELU -> (B, T, D)."""

    def __init__(self, width: int, hidden: int, rngs: nnx.Rngs):
        self.up = nnx.Linear(width, hidden, kernel_init=_kernel(("embed", "mlp")),
                             bias_init=nnx.with_partitioning(Init.zeros, ("mlp",)), rngs=rngs)
        self.down = nnx.Linear(hidden, width, kernel_init=_kernel(("mlp", "embed")),
                               bias_init=nnx.with_partitioning(Init.zeros, ("embed",)), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(nnx.gelu(self.up(x)))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        self.attention_norm = _layer_norm(cfg.width, rngs)
        self.attention = Attention(cfg.width, cfg.heads, rngs)
        self.mlp_norm = _layer_norm(cfg.width, rngs)
        self.mlp = MLP(cfg.width, cfg.width * cfg.mlp_ratio, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class ViT(nnx.Module):
    """Patches -> linear embedding, class token prepended, learned positions -> blocks -> norm -> head."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        self.config = cfg
        patch_pixels = cfg.patch * cfg.patch * cfg.image_shape[-1]
        self.embed = nnx.Linear(patch_pixels, cfg.width, kernel_init=_kernel((None, "embed")),
                                bias_init=nnx.with_partitioning(Init.zeros, ("embed",)), rngs=rngs)
        self.class_token = nnx.Param(nnx.with_partitioning(Init.zeros, (None, None, "embed"))(rngs.params(), (1, 1, cfg.width)))
        positions = nnx.with_partitioning(Init.normal(0.02), (None, None, "embed"))
        self.positions = nnx.Param(positions(rngs.params(), (1, cfg.num_patches + 1, cfg.width)))
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.depth)])
        self.norm = _layer_norm(cfg.width, rngs)
        # A zero head starts every class at equal probability (as in big_vision's ViT).
        self.head = nnx.Linear(cfg.width, cfg.num_classes, kernel_init=nnx.with_partitioning(Init.zeros, ("embed", None)),
                               bias_init=Init.zeros, rngs=rngs)

    def patches(self, x: jax.Array) -> jax.Array:
        """(B, H, W, C) -> (B, N, P*P*C), patches in row-major order."""
        b, h, w, c = x.shape
        p = self.config.patch
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def features(self, x: jax.Array) -> jax.Array:
        """images (B, H, W, C) in [0, 1] -> the normalised class-token output (B, D): the head's input."""
        x = (x - PIXEL_MEAN) / PIXEL_STD
        tokens = self.embed(self.patches(x))  # (B, N, D)
        cls = jnp.broadcast_to(self.class_token[...].astype(tokens.dtype), (x.shape[0], 1, tokens.shape[-1]))
        x = jnp.concatenate([cls, tokens], axis=1) + self.positions[...].astype(tokens.dtype)  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])

    def __call__(self, x: jax.Array, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """images (B, H, W, C) in [0, 1] -> logits (B, classes).

        ``train`` and ``key`` follow ``zoo.classify``'s convention; this ViT has no
        dropout, so training and inference compute the same function.
        """
        del train, key
        return self.head(self.features(x))


def build(config: ViTConfig, rngs: nnx.Rngs) -> ViT:
    return ViT(config, rngs)
