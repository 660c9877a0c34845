"""Fill-mask: each ``[MASK]`` of a text gets the model's likeliest tokens, with probabilities.

A text may hold a ``[SEP]``: what follows it is segment B (as in pretraining's pairs).
The result is the contract's ranked form (plugin API 1.2): per input, one slot per
``[MASK]`` in order, each a list of ``{"label": token text, "index": token id,
"probability": p}``, best first. Probabilities are a softmax over the tokenizer's
ordinary tokens (the special tokens are never a fill).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo.errors import UsageError
from zoo_bert import tokenizer as bert_tokenizer
from zoo_bert.tokenizer import CLS, MASK, NUM_SPECIAL, PAD, SEP


def encode_text(tokenizer: Any, text: str, context: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``[CLS] text [SEP]`` as ``(int32 ids (n,), int32 segments (n,))``; one-line UsageError if it cannot be filled."""
    ids = [CLS, *tokenizer.encode(text, add_special_tokens=False).ids]
    if ids[-1] != SEP:
        ids.append(SEP)
    if MASK not in ids:
        raise UsageError(f"{where} has no [MASK] to fill; write [MASK] where a word is missing")
    if len(ids) > context:
        raise UsageError(f"{where} is {len(ids)} tokens with [CLS] and [SEP]; the model reads at most {context}")
    ids = np.asarray(ids, np.int32)
    first_sep = int(np.argmax(ids == SEP))
    segments = (np.arange(len(ids)) > first_sep).astype(np.int32)  # B starts after the first [SEP]
    return ids, segments


@functools.partial(jax.jit, static_argnums=(0, 5))
def _probabilities(graphdef: Any, state: Any, tokens: jax.Array, segments: jax.Array, valid: jax.Array, vocab: int):
    """Token probabilities ``(B, T, V)`` at every position, over the ordinary tokens ``[NUM_SPECIAL, vocab)``."""
    logits, _ = nnx.merge(graphdef, state)(tokens, segments, valid)
    ids = jnp.arange(logits.shape[-1])
    ordinary = (ids >= NUM_SPECIAL) & (ids < vocab)
    return jax.nn.softmax(jnp.where(ordinary, logits.astype(jnp.float32), -jnp.inf), axis=-1)


def predict(model: nnx.Module, inputs: Any, *, candidates: int = 10) -> list[list[list[dict[str, Any]]]]:
    """For each text of ``inputs`` (``list[str]``), each ``[MASK]``'s ``candidates`` likeliest tokens."""
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        raise UsageError("bert fills masks in texts: give a list of strings (or .txt files), not arrays")
    if candidates < 1:
        raise UsageError(f"candidates must be at least 1; got {candidates}")
    tokenizer = bert_tokenizer.load(model)
    context = model.cfg.context
    encoded = [encode_text(tokenizer, text, context, f"input {i + 1}") for i, text in enumerate(inputs)]
    tokens = np.full((len(inputs), context), PAD, np.int32)  # one shape for every call: one compilation
    segments = np.zeros_like(tokens)
    for row, (ids, segs) in enumerate(encoded):
        tokens[row, : len(ids)], segments[row, : len(ids)] = ids, segs
    valid = np.arange(context)[None, :] < np.array([len(ids) for ids, _ in encoded])[:, None]
    graphdef, state = nnx.split(model)
    vocab = tokenizer.get_vocab_size()
    probabilities = np.asarray(_probabilities(graphdef, state, tokens, segments, valid, vocab))
    results = []
    for row, (ids, _) in enumerate(encoded):
        slots = []
        for position in np.flatnonzero(ids == MASK):
            p = probabilities[row, position, NUM_SPECIAL:vocab]  # ranked among the ordinary tokens only
            best = np.argsort(-p, kind="stable")[:candidates]
            ids = [int(i) + NUM_SPECIAL for i in best]
            slots.append([{"label": tokenizer.decode([i]), "index": i, "probability": float(p[i - NUM_SPECIAL])} for i in ids])
        results.append(slots)
    return results
