"""Language-model toolkit for text plugins: the byte vocabulary, the next-character loss, evaluation, sampling.

Vocabulary. Characters are bytes: a text is its UTF-8 bytes, token ids 0..255.
For ASCII corpora (Shakespeare uses 84 characters) a byte is a character; every
prompt encodes, and a checkpoint needs no vocabulary file. The output layer has
256 rows instead of 84: 44k parameters more on a 3.2M-parameter char GPT.

Model convention. A language model maps tokens ``int (B, T)`` to logits
``(B, T, V)`` with ``model(tokens, train=False, key=None)``, where logits at
position ``t`` predict token ``t + 1``. Losses are in nats (natural log) per
predicted character.

Data. Training batches are windows of text with a valid ``length`` per window
(``zoo.data.shakespeare``'s layout: ``{"text": uint8 (B, W), "length": int32 (B,)}``);
each step trains on a random crop of ``context + 1`` bytes of each window.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo.errors import UsageError

VOCAB_SIZE = 256


def encode(text: str) -> np.ndarray:
    """A text as token ids: its UTF-8 bytes, ``uint8 (len,)``."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).copy()


def decode(ids: Any) -> str:
    """Token ids back to text; byte sequences that are not UTF-8 show as U+FFFD."""
    return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- training


def random_crops(text: jax.Array, length: jax.Array, key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """One crop of ``size`` bytes per window, at a uniform offset inside its valid part.

    Args:
      text: ``uint8 (B, W)`` windows; length: ``int (B,)`` valid bytes of each.
      size: bytes per crop (``context + 1``), at most ``W``.
    Returns:
      ``(int32 (B, size) tokens, bool (B, size - 1) valid targets)``: target ``t``
      (token ``t + 1``) is valid when it lies inside the window's ``length``.
    """
    batch, width = text.shape
    if size > width:
        raise UsageError(f"a crop of {size} bytes does not fit windows of {width}; lower the context")
    room = jnp.maximum(length - size, 0) + 1  # offsets 0 .. length - size (0 for short tails)
    offsets = jax.random.randint(key, (batch,), 0, jnp.iinfo(jnp.int32).max) % room
    positions = offsets[:, None] + jnp.arange(size)[None, :]
    tokens = jnp.take_along_axis(text, positions, axis=1).astype(jnp.int32)
    return tokens, positions[:, 1:] < length[:, None]


def next_token_nats(logits: jax.Array, tokens: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed negative log-likelihood (nats) of ``tokens[:, 1:]`` under ``logits (B, T, V)``, and the count.

    ``tokens``: ``(B, T + 1)``; ``valid``: ``bool (B, T)``. The log-softmax runs in float32
    whatever the model's compute dtype.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid)


def next_char_loss(model: Any, batch: Mapping[str, jax.Array], key: jax.Array, *, context: int):
    """The shared loop's loss: mean nats per character of a random crop of each window.

    Returns ``(loss, {"nats_per_char": loss})``.
    """
    crop_key, dropout_key = jax.random.split(key)
    tokens, valid = random_crops(batch["text"], batch["length"], crop_key, context + 1)
    logits = model(tokens[:, :-1], train=True, key=dropout_key)
    total, count = next_token_nats(logits, tokens, valid)
    loss = total / jnp.maximum(count, 1)
    return loss, {"nats_per_char": loss}


# --------------------------------------------------------------------------- evaluation


def evaluation_chunks(data: Mapping[str, np.ndarray], context: int) -> tuple[np.ndarray, np.ndarray]:
    """Every target of every window exactly once, as sequences of ``context + 1`` tokens.

    Window bytes ``[k * context, (k + 1) * context]`` form chunk ``k``: each target
    is predicted from the bytes before it in its chunk (0 to ``context - 1`` of
    them), the usual non-overlapping evaluation. Returns ``(int32 (M, context + 1)
    tokens, bool (M, context) valid)``.
    """
    text, length = np.asarray(data["text"]), np.asarray(data["length"])
    chunks = max(1, math.ceil((text.shape[1] - 1) / context))
    padded = np.zeros((len(text), chunks * context + 1), np.int32)
    padded[:, : text.shape[1]] = text
    starts = np.arange(chunks) * context
    positions = starts[:, None] + np.arange(context + 1)[None, :]  # (chunks, context + 1)
    tokens = padded[:, positions].reshape(-1, context + 1)
    valid = (positions[None, :, 1:] < length[:, None, None]).reshape(-1, context)
    keep = valid.any(axis=1)
    return tokens[keep], valid[keep]


@functools.partial(jax.jit, static_argnums=0)
def _batch_nats(graphdef: Any, state: Any, tokens: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed nats and target count of one batch of chunks (compiled once per model structure and shape)."""
    logits = nnx.merge(graphdef, state)(tokens[:, :-1])
    return next_token_nats(logits, tokens, valid)


def evaluate_nats(model: nnx.Module, data: Mapping[str, np.ndarray], context: int, batch_size: int = 64) -> dict[str, float]:
    """Validation nats (and bits) per character over every target in ``data``.

    Runs ``model`` jitted once on fixed-size batches of chunks (the last one padded
    with invalid rows).
    """
    tokens, valid = evaluation_chunks(data, context)
    graphdef, state = nnx.split(model)
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        t, v = tokens[start : start + batch_size], valid[start : start + batch_size]
        pad = batch_size - len(t)
        if pad:
            t, v = np.pad(t, ((0, pad), (0, 0))), np.pad(v, ((0, pad), (0, 0)))
        nats, n = _batch_nats(graphdef, state, t, v)
        total, count = total + float(nats), count + int(n)
    nats = total / max(count, 1)
    return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "characters": float(count)}


# --------------------------------------------------------------------------- sampling


def check_sampling(temperature: float, top_k: int, top_p: float, length: int) -> None:
    """Refuse impossible sampling options with one readable line."""
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise UsageError(f"temperature must be a finite number >= 0 (0 = greedy); got {temperature}")
    if top_k < 0:
        raise UsageError(f"top_k must be >= 0 (0 = no limit); got {top_k}")
    if not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1]; got {top_p}")
    if length < 1:
        raise UsageError(f"length must be at least 1 character; got {length}")


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits ``(..., V)`` with everything outside the top-k and the top-p nucleus set to -inf.

    ``top_k = 0`` and ``top_p = 1`` keep everything. The nucleus is the smallest set
    of most likely tokens whose probability reaches ``top_p`` (the top token always stays).
    """
    logits = logits.astype(jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
        cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def pick_tokens(key: jax.Array, logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Next tokens ``int32 (B,)`` from logits ``(B, V)``: greedy at temperature 0, else sampled."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


def prompt_tokens(prompt: str, n: int) -> np.ndarray:
    """The prompt as ``int32 (n, P)`` (an empty prompt starts from a newline)."""
    ids = encode(prompt or "\n").astype(np.int32)
    return np.tile(ids, (n, 1))
