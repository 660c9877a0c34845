"""A stacked LSTM character language model (Hochreiter & Schmidhuber, 1997, with the forget gate of Gers et al., 2000).

Tokens ``int (B, T)`` -> logits ``(B, T, vocab_size)`` (``zoo.text``'s convention):
embedding -> ``layers`` LSTM layers (dropout between them in training) -> dense.
Each layer runs the seed's equations over time with ``jax.lax.scan``::

    i = sigmoid(W_i x + U_i h + b_i)        input gate
    f = sigmoid(W_f x + U_f h + b_f)        forget gate, b_f initialised to 1
    g = tanh(W_g x + U_g h + b_g)           candidate cell
    o = sigmoid(W_o x + U_o h + b_o)        output gate
    c' = f * c + i * g                      cell update
    h' = o * tanh(c')

The forget bias of 1 keeps the cell's memory open early in training (Jozefowicz et
al., 2015). The input projections ``W x`` of all time steps are one matmul before
the scan; only ``U h`` runs step by step. Weights are stored ``(in, 4, H)`` with
the gates in the order i, f, g, o, so tensor parallelism splits the hidden units
(``mlp``) and every shard keeps all four gates of its units.

Shape names: B batch, T time, E embedding, H hidden units, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.text import VOCAB_SIZE

State = tuple[jax.Array, jax.Array]
"""One layer's ``(h, c)``, each ``(B, H)``."""


@dataclasses.dataclass(frozen=True, slots=True)
class LSTMConfig:
    vocab_size: int = VOCAB_SIZE  # bytes (zoo.text)
    embed: int = 64  # a byte needs few dimensions; the recurrent matmul dominates the cost
    hidden: int = 512
    layers: int = 2
    context: int = 128  # training crop: steps of backpropagation through time
    dropout: float = 0.0  # between layers, in training only

    def __post_init__(self):
        if min(self.vocab_size, self.embed, self.hidden, self.layers, self.context) < 1:
            raise ValueError("vocab_size, embed, hidden, layers and context must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}")


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, axes: tuple[str | None, ...]) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), shape) / math.sqrt(fan_in), out_sharding=axes)


class LSTMLayer(nnx.Module):
    """One layer over a sequence: ``(B, T, In)`` and a state -> ``(B, T, H)`` and the final state."""

    def __init__(self, n_in: int, hidden: int, rngs: nnx.Rngs):
        self.input_kernel = _normal(rngs, (n_in, 4, hidden), n_in, ("embed", None, "mlp"))  # W, gates i f g o
        self.recurrent_kernel = _normal(rngs, (hidden, 4, hidden), hidden, (None, None, "mlp"))  # U
        self.bias = nnx.Param(jnp.zeros((4, hidden)).at[1].set(1.0), out_sharding=(None, "mlp"))  # b_f = 1

    def zero_state(self, batch: int) -> State:
        hidden = self.recurrent_kernel.shape[0]
        return jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden))

    def __call__(self, x: jax.Array, state: State) -> tuple[jax.Array, State]:
        inputs = jnp.einsum("bti,igh->tbgh", x, self.input_kernel[...]) + self.bias[...]  # (T, B, 4, H)
        recurrent = self.recurrent_kernel[...]

        def step(carry: State, x_t: jax.Array) -> tuple[State, jax.Array]:
            h, c = carry
            z = x_t + jnp.einsum("bj,jgh->bgh", h, recurrent)
            i, f, g, o = jax.nn.sigmoid(z[:, 0]), jax.nn.sigmoid(z[:, 1]), jnp.tanh(z[:, 2]), jax.nn.sigmoid(z[:, 3])
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), h

        h0, c0 = (s.astype(inputs.dtype) for s in state)
        final, hs = jax.lax.scan(step, (h0, c0), inputs)
        return hs.swapaxes(0, 1), final


class LSTM(nnx.Module):
    """Tokens ``int (B, T)`` -> logits ``(B, T, vocab_size)``; ``run`` also carries the states."""

    def __init__(self, cfg: LSTMConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.embed)), out_sharding=("vocab", "embed"))
        widths = (cfg.embed,) + (cfg.hidden,) * cfg.layers
        self.layers = nnx.List([LSTMLayer(a, cfg.hidden, rngs) for a in widths[:-1]])
        self.output = nnx.Linear(
            cfg.hidden, cfg.vocab_size, rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "vocab")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("vocab",)),
        )  # fmt: skip
        self.dropout = nnx.Dropout(cfg.dropout)

    def zero_states(self, batch: int) -> list[State]:
        return [layer.zero_state(batch) for layer in self.layers]

    def run(self, tokens: jax.Array, states: list[State], drop: nnx.Rngs | None = None) -> tuple[jax.Array, list[State]]:
        """``tokens (B, T)`` from ``states`` -> logits ``(B, T, V)`` and the states after the last token."""
        x = self.embedding[...][tokens]
        finals = []
        for index, (layer, state) in enumerate(zip(self.layers, states)):
            if drop is not None and index > 0:
                x = self.dropout(x, deterministic=False, rngs=drop)
            x, final = layer(x, state)
            finals.append(final)
        if drop is not None:
            x = self.dropout(x, deterministic=False, rngs=drop)
        return self.output(x), finals

    def __call__(self, tokens: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        drop = nnx.Rngs(dropout=key) if train and self.cfg.dropout > 0 and key is not None else None
        return self.run(tokens, self.zero_states(tokens.shape[0]), drop)[0]


def build(config: LSTMConfig, rngs: nnx.Rngs) -> LSTM:
    return LSTM(config, rngs)
