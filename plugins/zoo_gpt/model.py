"""A decoder-only Transformer (GPT-2 layout), from a CPU-sized char model to GPT-2 small.

Tokens ``int (B, T)`` -> logits ``(B, T, vocab_size)`` (``zoo.text``'s convention):
token embedding (+ learned positions) -> ``layers`` pre-norm blocks
[x + attn(LN(x)), x + mlp(LN(x))] -> LN -> logits through the token embedding
(weight tying). Attention is causal, through ``jax.nn.dot_product_attention``,
asking for cuDNN's fused kernel on a GPU (``attention_implementation``: JAX itself
picks XLA's unfused one unless told); decoding with a cache: ``attend_cached``. Positions are
learned (GPT-2) or rotary (``zoo.rotary``: the query/key pairs are rotated by
position, so scores depend on relative positions).

Initialisation is GPT-2's: every weight N(0, 0.02), and the two projections that
write into the residual stream (attention output, MLP output) N(0, 0.02 / sqrt(2 *
layers)) so the residual's variance stays put with depth; LayerNorms 1 and 0. No
biases in the dense layers (nanoGPT measured them as slightly worse and slower).
The projections are marked as matrices by their input axes (``MATRIX_INPUTS``), so
``train.optimizer=muon`` orthogonalises their updates; the embeddings stay with AdamW.

Logical axes (``zoo.sharding``): ``embed`` is the model width (FSDP splits it),
``heads`` and ``mlp`` are what tensor parallelism splits (Megatron: column-split
q/k/v and MLP-in, row-split attention-out and MLP-out), ``vocab`` the embedding
rows. The embedding has ``padded_vocab`` rows, a multiple of ``vocab_multiple``,
so GPT-2's 50257 tokens (50304 rows) split evenly; logits past ``vocab_size`` are
dropped.

Shape names in comments: B batch, T query positions, S key positions, D width,
H heads, K head width, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.matrices import MATRIX_INPUTS
from zoo.rotary import check_head_width, rotate
from zoo.text import VOCAB_SIZE

INIT_STD = 0.02  # GPT-2's
Cache = tuple[jax.Array, jax.Array]
"""One layer's keys and values, each ``(B*H, K, S)``: positions minor, heads merged
with the batch. XLA:CPU's batched products read this layout where it lies, so the
cache is updated in place; ``(B, S, H, K)`` cost copies of the whole cache per layer
and token, a fifth of a decoding step (bench/kv_cache.py, char-4x256, batch 1: 2.1 ->
1.5-1.8 ms a token on a host with an 8 MB L3, 9-11x faster than recomputing each window
where it was 8x; what is left is reading the weights, at the speed of memory: 0.53 ms
a token and 14.7x where the last-level cache holds them)."""


@dataclasses.dataclass(frozen=True, slots=True)
class GPTConfig:
    vocab_size: int = VOCAB_SIZE  # bytes (zoo.text); gpt2-124m: GPT-2's 50257 BPE tokens
    context: int = 128  # longest sequence the model attends over (training crop, cache size)
    layers: int = 4
    width: int = 256
    heads: int = 4
    mlp_ratio: int = 4  # F = mlp_ratio * D, GPT-2's 4
    positions: Literal["learned", "rotary"] = "learned"
    dropout: float = 0.0  # on attention output, MLP output and embeddings, in training only
    vocab_multiple: int = 128  # embedding rows padded to this multiple (tensor shards, aligned matmuls)
    rope_base: float = 10000.0
    attention: Literal["auto", "xla", "cudnn"] = "auto"  # kernel of the full forward: attention_implementation

    def __post_init__(self):
        if min(self.vocab_size, self.context, self.layers, self.width, self.heads, self.mlp_ratio, self.vocab_multiple) < 1:
            raise ValueError("vocab_size, context, layers, width, heads, mlp_ratio and vocab_multiple must be positive")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.positions == "rotary":
            check_head_width(self.head_width)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.attention not in ("auto", "xla", "cudnn"):
            raise ValueError(f"attention must be auto, xla or cudnn; got {self.attention!r}")

    @property
    def head_width(self) -> int:
        return self.width // self.heads

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


def _param(
    rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float = INIT_STD, inputs: tuple[int, ...] | None = None
) -> nnx.Param:
    """N(0, std) weights; ``inputs``: the axes a layer contracts with its input (a matrix, for Muon)."""
    marks = {MATRIX_INPUTS: inputs} if inputs else {}
    return nnx.Param(std * jax.random.normal(rngs.params(), shape), out_sharding=axes, **marks)


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        width, epsilon=1e-5, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)),
    )  # fmt: skip


def attention_implementation(setting: str, q: jax.Array) -> str:
    """The ``implementation`` of ``jax.nn.dot_product_attention`` for queries ``q (B, T, H, K)``.

    ``"auto"`` is cuDNN's fused kernel where it applies (on a GPU, bfloat16 or float16
    queries, head width a multiple of 8 up to 128: what it supports) and XLA's
    otherwise: JAX 0.10 picks XLA's unless told, even on GPUs, and XLA's unfused
    attention made GPT-2 small train at 19% MFU on an H200 against 41-52% with cuDNN's
    (shared/NOTES-JAX.md). Decided while tracing, from static facts only.
    """
    if setting != "auto":
        return setting
    fused = (
        jax.default_backend() in ("gpu", "cuda")
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 128
    )
    return "cudnn" if fused else "xla"


def to_cache_layout(x: jax.Array) -> jax.Array:
    """Keys or values ``(B, T, H, K)`` -> ``(B*H, K, T)``, the cache's layout (``Cache``)."""
    b, t, h, k = x.shape
    return x.transpose(0, 2, 3, 1).reshape(b * h, k, t)


def attend_cached(q: jax.Array, cache: Cache, positions: jax.Array) -> jax.Array:
    """Queries ``q (B, T, H, K)`` at ``positions (T,)`` attending to a cache that holds their own keys.

    Each query sees the cached positions up to its own (causal). Returns ``(B, T, H, K)``:
    ``jax.nn.dot_product_attention``'s arithmetic (scale, softmax), written as batched
    products over the cache's own layout. Through ``dot_product_attention`` the cache
    had to be viewed as ``(B, S, H, K)``; with more than one text XLA then copied the
    whole cache per layer and token (batch 2: 3.3 against 2.5 ms a token).
    """
    b, t, h, k = q.shape
    keys, values = (c.astype(q.dtype) for c in cache)
    queries = q.transpose(0, 2, 1, 3).reshape(b * h, t, k)
    scores = jnp.einsum("ntk,nks->nts", queries, keys) / math.sqrt(k)
    visible = jnp.arange(keys.shape[-1])[None, :] <= positions[:, None]  # (T, S)
    weights = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf).astype(jnp.float32), axis=-1).astype(q.dtype)
    attended = jnp.einsum("nts,nks->ntk", weights, values)
    return attended.reshape(b, h, t, k).transpose(0, 2, 1, 3)


class Attention(nnx.Module):
    """Multi-head causal self-attention; with a cache, the keys and values of earlier positions too."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        d, h, k = cfg.width, cfg.heads, cfg.head_width
        self.cfg = cfg
        self.query = _param(rngs, (d, h, k), ("embed", "heads", "kv"), inputs=(0,))
        self.key = _param(rngs, (d, h, k), ("embed", "heads", "kv"), inputs=(0,))
        self.value = _param(rngs, (d, h, k), ("embed", "heads", "kv"), inputs=(0,))
        self.out = _param(rngs, (h, k, d), ("heads", "kv", "embed"), INIT_STD / math.sqrt(2 * cfg.layers), inputs=(0, 1))

    def project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x (B, T, D)`` -> queries, keys, values ``(B, T, H, K)`` (keys and queries rotated if rotary)."""
        q = jnp.einsum("btd,dhk->bthk", x, self.query[...])
        k = jnp.einsum("btd,dhk->bthk", x, self.key[...])
        v = jnp.einsum("btd,dhk->bthk", x, self.value[...])
        if self.cfg.positions == "rotary":
            q, k = rotate(q, positions, self.cfg.rope_base), rotate(k, positions, self.cfg.rope_base)
        return q, k, v

    def combine(self, attended: jax.Array) -> jax.Array:
        """``(B, T, H, K)`` -> ``(B, T, D)``."""
        return jnp.einsum("bthk,hkd->btd", attended, self.out[...])

    def __call__(self, x: jax.Array, positions: jax.Array, cache: Cache | None = None) -> tuple[jax.Array, Cache | None]:
        """Causal attention of ``x (B, T, D)`` at ``positions (T,)`` -> ``((B, T, D), cache)``.

        Without a cache, within ``x``. With one (``Cache``: keys and values of the
        positions before ``positions[0]``), ``x``'s keys and values are written at
        ``positions`` and each query attends to every cached position up to its own.
        """
        q, k, v = self.project(x, positions)
        if cache is None:
            implementation = attention_implementation(self.cfg.attention, q)
            return self.combine(jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)), None
        cache = tuple(
            jax.lax.dynamic_update_slice_in_dim(old, to_cache_layout(new).astype(old.dtype), positions[0], axis=2)
            for old, new in zip(cache, (k, v))
        )
        return self.combine(attend_cached(q, cache, positions)), cache


class MLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        f = cfg.mlp_ratio * cfg.width
        self.up = _param(rngs, (cfg.width, f), ("embed", "mlp"), inputs=(0,))
        self.down = _param(rngs, (f, cfg.width), ("mlp", "embed"), INIT_STD / math.sqrt(2 * cfg.layers), inputs=(0,))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, T, D)`` -> ``(B, T, D)``, GPT-2's tanh GELU between the two layers."""
        # On one token axis: XLA:CPU ran this block's matmuls and their gradients 1.75x
        # slower on (B, T, D) than on (B*T, D): a sixth of the char GPT's whole step.
        tokens = x.reshape(-1, x.shape[-1])
        return (jax.nn.gelu(tokens @ self.up[...], approximate=True) @ self.down[...]).reshape(x.shape)


class Block(nnx.Module):
    """Pre-norm block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.attention_norm = _layer_norm(cfg.width, rngs)
        self.attention = Attention(cfg, rngs)
        self.mlp_norm = _layer_norm(cfg.width, rngs)
        self.mlp = MLP(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(
        self, x: jax.Array, positions: jax.Array, drop: nnx.Rngs | None = None, cache: Cache | None = None
    ) -> tuple[jax.Array, Cache | None]:
        attended, cache = self.attention(self.attention_norm(x), positions, cache)
        x = x + self._drop(attended, drop)
        return x + self._drop(self.mlp(self.mlp_norm(x)), drop), cache

    def _drop(self, x: jax.Array, drop: nnx.Rngs | None) -> jax.Array:
        return x if drop is None else self.dropout(x, deterministic=False, rngs=drop)


class GPT(nnx.Module):
    """Tokens ``int (B, T)``, ``T <= context`` -> logits ``(B, T, vocab_size)``."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tokens = _param(rngs, (cfg.padded_vocab, cfg.width), ("vocab", "embed"))
        self.positions = _param(rngs, (cfg.context, cfg.width), (None, "embed")) if cfg.positions == "learned" else None
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.final_norm = _layer_norm(cfg.width, rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """``(B, T)`` tokens at ``positions (T,)`` -> ``(B, T, D)``."""
        x = self.tokens[...][tokens]
        if self.positions is not None:
            x = x + self.positions[...][positions]
        return x

    def logits(self, x: jax.Array) -> jax.Array:
        """Final norm, then the tied output layer: ``(B, T, D)`` -> ``(B, T, vocab_size)``."""
        logits = self.final_norm(x) @ self.tokens[...].T
        return logits[..., : self.cfg.vocab_size]

    def __call__(self, tokens: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        if tokens.shape[1] > self.cfg.context:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the model's context of {self.cfg.context}")
        drop = nnx.Rngs(dropout=key) if train and self.cfg.dropout > 0 and key is not None else None
        positions = jnp.arange(tokens.shape[1])
        x = self.embed(tokens, positions)
        if drop is not None:
            x = self.dropout(x, deterministic=False, rngs=drop)
        for block in self.blocks:
            x, _ = block(x, positions, drop)
        return self.logits(x)

    def empty_cache(self, batch: int, dtype: jnp.dtype = jnp.float32) -> list[Cache]:
        """Zero keys and values ``(B*H, K, context)`` for every layer."""
        shape = (batch * self.cfg.heads, self.cfg.head_width, self.cfg.context)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

    def extend(self, tokens: jax.Array, cache: list[Cache], start: jax.Array) -> tuple[jax.Array, list[Cache]]:
        """Run ``tokens (B, T)`` at positions ``start .. start + T - 1`` against ``cache``.

        Returns the logits ``(B, T, vocab_size)`` and the cache with these positions'
        keys and values written in: what ``__call__`` gives for the same positions of
        the whole sequence, computing only the new ones (KV-cache decoding).
        """
        positions = start + jnp.arange(tokens.shape[1])
        x = self.embed(tokens, positions)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, positions, None, layer_cache)
            new_cache.append(layer_cache)
        return self.logits(x), new_cache


def build(config: GPTConfig, rngs: nnx.Rngs) -> GPT:
    return GPT(config, rngs)
