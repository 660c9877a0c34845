"""A BERT-style Transformer encoder with the masked-LM and next-sentence heads, and its tokenizer inside.

Tokens ``int (B, T)``, segment ids ``int (B, T)`` and a validity mask ``bool (B, T)``
-> hidden states ``(B, T, D)``: token + segment (+ learned position) embeddings ->
LayerNorm -> ``layers`` blocks -> LayerNorm. Attention is bidirectional through
``jax.nn.dot_product_attention`` (GPUs get a fused kernel), with padded keys masked
out, so what sits at a padded position never reaches a real one.

Positions are BERT's learned table (the config's default, so checkpoints saved
before the option existed load as they were, and ``bert-base`` keeps BERT's exact
shape) or rotary, which the CPU-sized variants use (``zoo.rotary``: queries and
keys rotated by position, so scores depend on relative positions only, as in
RoFormer and ModernBERT). Measured on Shakespeare (``tiny``, batch 32, AdamW
2e-3): with a learned table the masked LM sat at the unigram plateau (5.83 nats per
masked token after 800 steps, 5.81 after 2,000, predictions the same whatever the
context: attention starts uniform, and attending to neighbours needs a position
table that has first grown smooth); rotary, 4.64 after 800 steps and falling, since
a local attention pattern is then a function of the query and key weights alone.

Pre-norm blocks ``[x + attn(LN(x)), x + mlp(LN(x))]`` and a final LayerNorm, rather
than the original BERT's post-norm: pre-norm keeps the residual stream an identity
path, so it trains at the larger learning rates and short warm-ups a CPU-budget run
needs (Xiong et al., 2020, "On Layer Normalization in the Transformer Architecture");
the zoo's GPT is pre-norm for the same reason. BERT's embedding LayerNorm stays:
without it the residual stream starts at the embeddings' 0.02 scale, Adam moves the
dense biases by about the learning rate a step, and a tiny test model's attention
output (dominated by its biases, the same at every position) swamped the token
signal and stalled at unigram predictions; with it, the stream starts at unit
scale. The dense layers keep BERT's biases, so ``bert-base`` has BERT-base's
parameter count plus the final LayerNorm (1,536).

Heads (Devlin et al., 2019), for pretraining (``num_classes = 0``): masked LM = dense + GELU + LayerNorm, then the tied
token embedding plus a per-token bias; only the masked positions go through it
(about 15% of them: the vocabulary projection is the costliest matmul otherwise).
Next-sentence prediction = the pooler (dense + tanh on the ``[CLS]`` state) and a
two-way classifier (0: B is a random segment, 1: B continues A). For fine-tuning
(``num_classes = K``, the ``bert-classifier`` plugin) a K-way ``classifier`` on the
pooler takes their place: ``--init-from`` a pretrained model restores the encoder and
the pooler, and re-initialises ``classifier`` (the plugin declares it replaceable).

Initialisation is GPT-2's (N(0, 0.02), residual-writing projections scaled by
``1 / sqrt(2 * layers)``), which suits pre-norm; BERT used a truncated N(0, 0.02).

The tokenizer travels in the model as a non-trained variable (``TokenizerStore``):
a checkpoint is then self-contained, its bytes sealed by the checkpoint's MANIFEST
and counted in ``params_digest``; no core change was needed (Orbax saves every
variable of the model, as it does BatchNorm statistics).

Logical axes (``zoo.sharding``): ``embed`` the width (FSDP), ``heads``/``mlp``
tensor-parallel (Megatron: column-split q/k/v and MLP-in, row-split attention-out
and MLP-out), ``vocab`` the embedding rows. Shape names: B batch, T positions,
D width, H heads, K head width, F MLP width, V vocabulary, M predicted positions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.rotary import check_head_width, rotate

INIT_STD = 0.02
NSP_CLASSES = 2  # 0: random segment, 1: true continuation


@dataclasses.dataclass(frozen=True, slots=True)
class BertConfig:
    vocab_size: int = 4096  # embedding rows; the byte-level BPE trained for it has at most this many tokens
    context: int = 128  # [CLS] A [SEP] B [SEP]: 125 text tokens, about 420 characters of Shakespeare
    layers: int = 4
    width: int = 256
    heads: int = 4
    mlp_ratio: int = 4  # F = mlp_ratio * D, BERT's 4
    segments: int = 2  # token-type ids: A and B
    positions: Literal["learned", "rotary"] = "learned"  # BERT's; the zoo's variants are rotary (module docstring)
    rope_base: float = 10000.0  # rotary: the slowest pair turns once in 2 pi * base positions
    dropout: float = 0.0  # BERT's 0.1 regularises long runs; a CPU-budget run underfits, so off by default
    tokenizer_capacity: int = 1 << 18  # bytes reserved for the tokenizer's JSON (4096 tokens take about 104 kB)
    num_classes: int = 0  # 0: the pretraining heads (masked LM + NSP); K >= 2: a K-way classifier instead

    def __post_init__(self):
        if min(self.vocab_size, self.context, self.layers, self.width, self.heads, self.mlp_ratio, self.segments) < 1:
            raise ValueError("vocab_size, context, layers, width, heads, mlp_ratio and segments must be positive")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be learned or rotary; got {self.positions!r}")
        if self.positions == "rotary":
            check_head_width(self.head_width)
        if self.context < 5:
            raise ValueError(f"context {self.context} cannot hold [CLS] A [SEP] B [SEP] with a token in each segment")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")
        if self.tokenizer_capacity < 1:
            raise ValueError("tokenizer_capacity must be positive")
        if self.num_classes < 0 or self.num_classes == 1:
            raise ValueError(f"num_classes must be 0 (pretraining heads) or at least 2; got {self.num_classes}")

    @property
    def head_width(self) -> int:
        return self.width // self.heads


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float = INIT_STD) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape), out_sharding=axes)


def _zeros(shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape), out_sharding=axes)


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        width, epsilon=1e-5, rngs=rngs,
        scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)),
    )  # fmt: skip


class TokenizerBytes(nnx.Variable):
    """Bytes of the tokenizer: not an ``nnx.Param``, so no optimizer touches them."""


class TokenizerStore(nnx.Module):
    """The tokenizer's serialised JSON in a fixed-capacity ``uint8 (capacity,)`` buffer and its ``length``.

    Zero length means none yet (a freshly built model); ``zoo_bert.tokenizer`` fills and reads it.
    """

    def __init__(self, capacity: int):
        self.data = TokenizerBytes(jnp.zeros((capacity,), jnp.uint8))
        self.length = TokenizerBytes(jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention over the valid keys."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        d, h, k = cfg.width, cfg.heads, cfg.head_width
        self.rope_base = cfg.rope_base if cfg.positions == "rotary" else None
        self.query, self.key, self.value = (_param(rngs, (d, h, k), ("embed", "heads", "kv")) for _ in range(3))
        self.query_bias, self.key_bias, self.value_bias = (_zeros((h, k), ("heads", "kv")) for _ in range(3))
        self.out = _param(rngs, (h, k, d), ("heads", "kv", "embed"), INIT_STD / math.sqrt(2 * cfg.layers))
        self.out_bias = _zeros((d,), ("embed",))

    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        """``x (B, T, D)``, ``valid bool (B, T)`` -> ``(B, T, D)``; invalid keys get no weight."""
        q = jnp.einsum("btd,dhk->bthk", x, self.query[...]) + self.query_bias[...]
        k = jnp.einsum("btd,dhk->bthk", x, self.key[...]) + self.key_bias[...]
        v = jnp.einsum("btd,dhk->bthk", x, self.value[...]) + self.value_bias[...]
        if self.rope_base is not None:
            positions = jnp.arange(x.shape[1])
            q, k = rotate(q, positions, self.rope_base), rotate(k, positions, self.rope_base)
        attended = jax.nn.dot_product_attention(q, k, v, mask=valid[:, None, None, :])  # mask (B, 1, 1, S)
        return jnp.einsum("bthk,hkd->btd", attended, self.out[...]) + self.out_bias[...]


class MLP(nnx.Module):
    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        f = cfg.mlp_ratio * cfg.width
        self.up = _param(rngs, (cfg.width, f), ("embed", "mlp"))
        self.up_bias = _zeros((f,), ("mlp",))
        self.down = _param(rngs, (f, cfg.width), ("mlp", "embed"), INIT_STD / math.sqrt(2 * cfg.layers))
        self.down_bias = _zeros((cfg.width,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(x @ self.up[...] + self.up_bias[...], approximate=False) @ self.down[...] + self.down_bias[...]


class Block(nnx.Module):
    """Pre-norm block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.attention_norm = _layer_norm(cfg.width, rngs)
        self.attention = Attention(cfg, rngs)
        self.mlp_norm = _layer_norm(cfg.width, rngs)
        self.mlp = MLP(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x: jax.Array, valid: jax.Array, drop: nnx.Rngs | None = None) -> jax.Array:
        x = x + self._drop(self.attention(self.attention_norm(x), valid), drop)
        return x + self._drop(self.mlp(self.mlp_norm(x)), drop)

    def _drop(self, x: jax.Array, drop: nnx.Rngs | None) -> jax.Array:
        return x if drop is None else self.dropout(x, deterministic=False, rngs=drop)


class Dense(nnx.Module):
    """``x @ kernel + bias`` of a head (kept whole: heads are small next to the blocks)."""

    def __init__(self, width_in: int, width_out: int, rngs: nnx.Rngs):
        self.kernel = _param(rngs, (width_in, width_out), ("embed", None))
        self.bias = _zeros((width_out,), (None,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


class Bert(nnx.Module):
    """``(tokens, segments, valid)`` each ``(B, T)``, ``T <= context`` -> masked-LM and NSP logits."""

    def __init__(self, cfg: BertConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tokens = _param(rngs, (cfg.vocab_size, cfg.width), ("vocab", "embed"))
        self.positions = _param(rngs, (cfg.context, cfg.width), (None, "embed")) if cfg.positions == "learned" else None
        self.segments = _param(rngs, (cfg.segments, cfg.width), (None, "embed"))
        self.embedding_norm = _layer_norm(cfg.width, rngs)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.final_norm = _layer_norm(cfg.width, rngs)
        self.dropout = nnx.Dropout(cfg.dropout)
        # (the order of creation is the order of the random draws: kept as pretrained models had it)
        if not cfg.num_classes:
            self.mlm_transform = Dense(cfg.width, cfg.width, rngs)
            self.mlm_norm = _layer_norm(cfg.width, rngs)
            self.mlm_bias = _zeros((cfg.vocab_size,), ("vocab",))
        self.pooler = Dense(cfg.width, cfg.width, rngs)
        if cfg.num_classes:  # fine-tuning: the task head takes the pretraining heads' place
            self.classifier = Dense(cfg.width, cfg.num_classes, rngs)
        else:
            self.nsp = Dense(cfg.width, NSP_CLASSES, rngs)
        self.tokenizer = TokenizerStore(cfg.tokenizer_capacity)

    def encode(
        self, tokens: jax.Array, segments: jax.Array, valid: jax.Array, *, train: bool = False, key: jax.Array | None = None
    ) -> jax.Array:
        """Hidden states ``(B, T, D)`` after the final LayerNorm; ``valid bool (B, T)`` marks real positions."""
        if tokens.shape[1] > self.cfg.context:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the model's context of {self.cfg.context}")
        drop = nnx.Rngs(dropout=key) if train and self.cfg.dropout > 0 and key is not None else None
        x = self.tokens[...][tokens] + self.segments[...][segments]
        if self.positions is not None:
            x = x + self.positions[...][: tokens.shape[1]]
        x = self.embedding_norm(x)  # the residual stream starts at unit scale (see the module docstring)
        if drop is not None:
            x = self.dropout(x, deterministic=False, rngs=drop)
        for block in self.blocks:
            x = block(x, valid, drop)
        return self.final_norm(x)

    def mlm_logits(self, hidden: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Masked-LM logits: ``(B, T, D)`` at ``positions int (B, M)`` -> ``(B, M, V)`` (every position if None)."""
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)  # (B, M, D)
        x = self.mlm_norm(jax.nn.gelu(self.mlm_transform(hidden), approximate=False))
        return x @ self.tokens[...].T + self.mlm_bias[...]

    def pooled(self, hidden: jax.Array) -> jax.Array:
        """The pooler's ``(B, D)``: dense + tanh on the ``[CLS]`` state (position 0) of ``(B, T, D)``."""
        return jnp.tanh(self.pooler(hidden[:, 0]))

    def nsp_logits(self, hidden: jax.Array) -> jax.Array:
        """Next-sentence logits ``(B, 2)`` from the hidden states ``(B, T, D)``."""
        return self.nsp(self.pooled(hidden))

    def classify(
        self, tokens: jax.Array, segments: jax.Array, valid: jax.Array, *, train: bool = False, key: jax.Array | None = None
    ) -> jax.Array:
        """Class logits ``(B, num_classes)`` of a model built with ``num_classes``, as BERT fine-tunes:
        the pooled ``[CLS]`` state, dropout when training, and the ``classifier`` head."""
        pooled = self.pooled(self.encode(tokens, segments, valid, train=train, key=key))
        if train and self.cfg.dropout > 0 and key is not None:
            pooled = self.dropout(pooled, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.fold_in(key, 1)))
        return self.classifier(pooled)

    def __call__(
        self,
        tokens: jax.Array,
        segments: jax.Array,
        valid: jax.Array,
        positions: jax.Array | None = None,
        *,
        train: bool = False,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``(mlm logits (B, M, V) at positions (B, M), or (B, T, V) without, nsp logits (B, 2))``."""
        hidden = self.encode(tokens, segments, valid, train=train, key=key)
        return self.mlm_logits(hidden, positions), self.nsp_logits(hidden)


def build(config: BertConfig, rngs: nnx.Rngs) -> Bert:
    return Bert(config, rngs)
