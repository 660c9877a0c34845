"""Sampling from the LSTM: the prompt through the layers once, then one character per step, states carried."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo import text


@functools.partial(jax.jit, static_argnames=("graphdef", "length", "temperature", "top_k", "top_p"))
def _generate(graphdef, state, prompt, key, *, length, temperature, top_k, top_p):
    model = nnx.merge(graphdef, state)
    pick = functools.partial(text.pick_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    logits, states = model.run(prompt, model.zero_states(prompt.shape[0]))
    first = pick(jax.random.fold_in(key, 0), logits[:, -1])

    def step(carry, i):
        token, states = carry
        logits, states = model.run(token[:, None], states)
        token = pick(jax.random.fold_in(key, i), logits[:, 0])
        return (token, states), token

    _, rest = jax.lax.scan(step, (first, states), jnp.arange(1, length))
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(
    model: Any, prompt: np.ndarray, length: int, key: jax.Array, *,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> np.ndarray:  # fmt: skip
    """``length`` new tokens ``int32 (B, length)`` after ``prompt int (B, P)``; token ``i`` drawn with ``fold_in(key, i)``."""
    graphdef, state = nnx.split(model)
    new = _generate(
        graphdef, state, jnp.asarray(prompt, jnp.int32), key, length=length,
        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
    )  # fmt: skip
    return np.asarray(new)


def sample(
    model: Any, key: jax.Array, n: int, *, prompt: str = "\n", length: int = 300,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> list[str]:  # fmt: skip
    """``n`` texts: the prompt and ``length`` characters after it (``zoo sample --prompt``)."""
    text.check_sampling(temperature, top_k, top_p, length)
    new = generate(model, text.prompt_tokens(prompt, n), length, key, temperature=temperature, top_k=top_k, top_p=top_p)
    return [prompt + text.decode(row) for row in new]
