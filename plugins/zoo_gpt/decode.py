"""Text generation with a KV cache, and the same generation by full recomputation (its reference).

A model attends over at most ``context`` positions, and a sample may be longer.
Generation therefore runs in rounds: a round starts from the last ``keep``
tokens (``context // 2``; the prompt in the first round), computes their keys and
values in one pass (prefill), then adds one token per step until the cache is
full. Every token is drawn from at least ``keep`` tokens of context, each window
computed exactly as in training (a window starts fresh).

``generate(..., cached=False)`` draws the same tokens by running the whole
window through the model for every new token: what decoding costs without a
cache, and the reference the cached path must match (tests/plugins/test_gpt.py,
bench/kv_cache.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo import text


def _round_cached(model: Any, window: jax.Array, key: jax.Array, steps: int, pick: Any) -> jax.Array:
    """``steps`` new tokens ``(B, steps)`` after ``window (B, c)``, with a KV cache."""
    c = window.shape[1]
    logits, cache = model.extend(window, model.empty_cache(window.shape[0], model.tokens[...].dtype), jnp.int32(0))
    first = pick(jax.random.fold_in(key, 0), logits[:, -1])

    def step(carry, i):
        token, cache = carry
        logits, cache = model.extend(token[:, None], cache, c + i - 1)
        token = pick(jax.random.fold_in(key, i), logits[:, 0])
        return (token, cache), token

    _, rest = jax.lax.scan(step, (first, cache), jnp.arange(1, steps))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def _round_recomputed(model: Any, window: jax.Array, key: jax.Array, steps: int, pick: Any) -> jax.Array:
    """The same tokens as ``_round_cached``, running the whole window through the model for each one."""
    batch, c = window.shape
    buffer = jnp.zeros((batch, model.cfg.context), jnp.int32).at[:, :c].set(window)

    def step(buffer, i):
        position = c + i - 1  # the last filled position: its logits predict the next token
        logits = jax.lax.dynamic_index_in_dim(model(buffer), position, axis=1, keepdims=False)
        token = pick(jax.random.fold_in(key, i), logits)
        slot = jnp.minimum(position + 1, model.cfg.context - 1)  # the last step's token is never read back
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], slot, axis=1)
        return buffer, token

    _, tokens = jax.lax.scan(step, buffer, jnp.arange(steps))
    return tokens.T


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "cached", "temperature", "top_k", "top_p"))
def _round(graphdef, state, window, key, *, steps, cached, temperature, top_k, top_p):
    model = nnx.merge(graphdef, state)
    pick = functools.partial(text.pick_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    return (_round_cached if cached else _round_recomputed)(model, window, key, steps, pick)


def generate(
    model: Any, prompt: np.ndarray, length: int, key: jax.Array, *,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cached: bool = True,
) -> np.ndarray:  # fmt: skip
    """``length`` new tokens ``int32 (B, length)`` after ``prompt int (B, P)``.

    Rounds as the module docstring says; round ``r`` draws with ``fold_in(key, r)``,
    so the cached and recomputed paths see the same random numbers.
    """
    context = model.cfg.context
    keep = max(1, context // 2)
    graphdef, state = nnx.split(model)
    tokens = np.asarray(prompt, np.int32)
    window = tokens[:, -keep:] if tokens.shape[1] >= context else tokens
    produced: list[np.ndarray] = []
    done, r = 0, 0
    while done < length:
        # A round always runs until its cache is full (the last one's surplus is dropped):
        # two shapes to compile per batch size, the prompt's round and the steady one.
        steps = context - window.shape[1] + 1
        new = _round(
            graphdef, state, jnp.asarray(window), jax.random.fold_in(key, r), steps=steps, cached=cached,
            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
        )  # fmt: skip
        new = np.asarray(new)
        produced.append(new)
        done, r = done + steps, r + 1
        window = np.concatenate([window, new], axis=1)[:, -keep:]
    return np.concatenate(produced, axis=1)[:, :length]


def sample(
    model: Any, key: jax.Array, n: int, *, prompt: str = "\n", length: int = 300,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> list[str]:  # fmt: skip
    """``n`` texts: the prompt and ``length`` characters after it (``zoo sample --prompt``)."""
    text.check_sampling(temperature, top_k, top_p, length)
    start = text.prompt_tokens(prompt, n)
    new = generate(model, start, length, key, temperature=temperature, top_k=top_k, top_p=top_p)
    return [prompt + text.decode(row) for row in new]
