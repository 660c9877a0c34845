"""BERT's pretraining examples, made inside jit from token windows with a key: sentence pairs, masks, the loss.

Input: token windows ``{"tokens": int32 (B, L), "length": int32 (B,)}`` (the
dataset's byte windows, tokenized once on the host: ``zoo_bert.tokenizer``).

Pairs (next-sentence prediction). Each row gives ``[CLS] A [SEP] B [SEP] [PAD]...``
in ``context`` positions. A is a span of the row's window; with probability 1/2 B
is the span right after it (label 1, a true continuation), otherwise a span of
another row of the batch (label 0: a random window of the corpus, since batches
are shuffled). A takes 25-75% of the text budget; A and B together take
``min(context - 3, tokens in the window)`` tokens, so a short window gives a short
pair, padded, for both labels alike (the length never tells the label).

Masks (masked LM, Devlin et al. 2019). Of the text tokens (never [CLS], [SEP],
[PAD]) 15% are chosen per row (``floor(0.15 n + u)``, ``u ~ U[0, 1)``: exactly 15%
in expectation, as an integer count); of those, 80% become [MASK], 10% a random
non-special token, 10% stay. The chosen positions are gathered (at most
``ceil(0.15 (context - 3))`` per row), so the vocabulary projection runs on them only.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from zoo.errors import UsageError
from zoo_bert.tokenizer import CLS, MASK, NUM_SPECIAL, PAD, SEP

MASK_RATE = 0.15
MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.8, 0.1  # the rest (10%) stay as they are
SPLIT_RANGE = (0.25, 0.75)  # A's share of a pair's text tokens


class Pairs(NamedTuple):
    """Sentence pairs, each array ``(B, T)`` with ``T = context`` except ``is_next (B,)``."""

    tokens: jax.Array  # int32: [CLS] A [SEP] B [SEP] [PAD]...
    segments: jax.Array  # int32: 0 for [CLS] A [SEP], 1 for B [SEP]
    valid: jax.Array  # bool: a real position (not padding)
    candidates: jax.Array  # bool: a text token of A or B (maskable)
    is_next: jax.Array  # int32 (B,): 1 if B continues A
    both: jax.Array  # bool (B,): A and B both hold a token (the NSP label means something)


class Masked(NamedTuple):
    """Masked-LM inputs and targets: ``tokens (B, T)``; the others ``(B, M)``."""

    tokens: jax.Array  # int32: the pairs with the chosen positions replaced
    positions: jax.Array  # int32: chosen positions (sorted by a random score; only the first ``count`` are real)
    targets: jax.Array  # int32: the original tokens there
    weights: jax.Array  # float32: 1 for the real predictions, 0 for filler slots


def max_predictions(context: int) -> int:
    """Slots per row for masked positions: ``ceil(0.15 * (context - 3))``, the most ``floor(0.15 n + u)`` gives."""
    return max(1, math.ceil(MASK_RATE * (context - 3)))


def _uniform_int(key: jax.Array, high: jax.Array) -> jax.Array:
    """Uniform integers in ``[0, high)`` per element of ``high`` (``high >= 1``)."""
    return jax.random.randint(key, high.shape, 0, jnp.iinfo(jnp.int32).max) % jnp.maximum(high, 1)


def make_pairs(tokens: jax.Array, length: jax.Array, key: jax.Array, context: int) -> Pairs:
    """Sentence pairs from token windows ``tokens int (B, L)`` with ``length (B,)`` real tokens each."""
    batch, width = tokens.shape
    if batch < 2:
        raise UsageError("next-sentence prediction draws random segments from other rows: use a batch of at least 2")
    k_label, k_split, k_start, k_partner, k_other = jax.random.split(key, 5)
    is_next = jax.random.bernoulli(k_label, 0.5, (batch,)).astype(jnp.int32)
    total = jnp.minimum(context - 3, length)  # text tokens of the pair
    share = jax.random.uniform(k_split, (batch,), minval=SPLIT_RANGE[0], maxval=SPLIT_RANGE[1])
    len_a = jnp.clip(jnp.round(share * total).astype(jnp.int32), jnp.minimum(total, 1), jnp.maximum(total - 1, 0))
    start_a = _uniform_int(k_start, length - total + 1)
    partner = (jnp.arange(batch) + 1 + _uniform_int(k_partner, jnp.full((batch,), batch - 1))) % batch  # never itself
    other_len_b = jnp.minimum(total - len_a, length[partner])
    other_start = _uniform_int(k_other, length[partner] - other_len_b + 1)
    source_b = jnp.where(is_next == 1, jnp.arange(batch), partner)
    start_b = jnp.where(is_next == 1, start_a + len_a, other_start)
    len_b = jnp.where(is_next == 1, total - len_a, other_len_b)

    p = jnp.arange(context)[None, :]  # (1, T)
    la, lb = len_a[:, None], len_b[:, None]
    in_a = (p >= 1) & (p <= la)
    in_b = (p >= la + 2) & (p < la + 2 + lb)
    a_tok = jnp.take_along_axis(tokens, jnp.clip(start_a[:, None] + p - 1, 0, width - 1), axis=1)
    b_tok = jnp.take_along_axis(tokens[source_b], jnp.clip(start_b[:, None] + p - la - 2, 0, width - 1), axis=1)
    seq = jnp.where(in_a, a_tok, jnp.where(in_b, b_tok, PAD))
    seq = jnp.where(p == 0, CLS, jnp.where((p == la + 1) | (p == la + 2 + lb), SEP, seq))
    return Pairs(
        tokens=seq.astype(jnp.int32),
        segments=((p >= la + 2) & (p <= la + 2 + lb)).astype(jnp.int32),
        valid=p <= la + 2 + lb,
        candidates=in_a | in_b,
        is_next=is_next,
        both=(len_a >= 1) & (len_b >= 1),
    )


def mask_tokens(tokens: jax.Array, candidates: jax.Array, key: jax.Array, vocab: int) -> Masked:
    """Choose 15% of the ``candidates`` of ``tokens (B, T)`` and replace them 80/10/10.

    ``vocab``: the tokenizer's size; random replacements are drawn from its non-special ids.
    """
    batch, length = tokens.shape
    slots = min(max_predictions(length), length)
    k_pick, k_count, k_kind, k_random = jax.random.split(key, 4)
    n = jnp.sum(candidates, axis=1)
    count = jnp.floor(MASK_RATE * n + jax.random.uniform(k_count, (batch,))).astype(jnp.int32)
    count = jnp.minimum(count, slots)
    scores = jnp.where(candidates, jax.random.uniform(k_pick, (batch, length)), -1.0)
    _, positions = jax.lax.top_k(scores, slots)  # (B, M): distinct positions, candidates first
    weights = jnp.arange(slots)[None, :] < count[:, None]
    targets = jnp.take_along_axis(tokens, positions, axis=1)
    kind = jax.random.uniform(k_kind, (batch, slots))
    random_tokens = jax.random.randint(k_random, (batch, slots), NUM_SPECIAL, max(vocab, NUM_SPECIAL + 1))
    random_or_kept = jnp.where(kind < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE, random_tokens, targets)
    replaced = jnp.where(kind < MASK_TOKEN_SHARE, MASK, random_or_kept)
    replaced = jnp.where(weights, replaced, targets)  # filler slots write back what was there
    rows = jnp.arange(batch)[:, None]
    return Masked(tokens.at[rows, positions].set(replaced), positions.astype(jnp.int32), targets, weights.astype(jnp.float32))


def pretraining_sums(model: Any, batch: dict, key: jax.Array, *, vocab: int, train: bool = False) -> dict[str, jax.Array]:
    """Summed MLM and NSP negative log-likelihoods, correct predictions and counts for one batch.

    ``batch``: ``{"tokens" (B, L), "length" (B,)}`` and optionally ``"weight" (B,)``
    (0 for rows that only pad a batch). Keys of the result: ``mlm_nll, mlm_correct,
    mlm_count, nsp_nll, nsp_correct, nsp_count`` (float32 scalars).
    """
    pair_key, mask_key, drop_key = jax.random.split(key, 3)
    pairs = make_pairs(batch["tokens"], batch["length"], pair_key, model.cfg.context)
    masked = mask_tokens(pairs.tokens, pairs.candidates, mask_key, vocab)
    mlm, nsp = model(masked.tokens, pairs.segments, pairs.valid, masked.positions, train=train, key=drop_key)
    row_weight = batch.get("weight", jnp.ones(pairs.is_next.shape, jnp.float32))
    mlm_weights = masked.weights * row_weight[:, None]
    mlm_log_probs = jax.nn.log_softmax(mlm.astype(jnp.float32), axis=-1)
    mlm_nll = -jnp.take_along_axis(mlm_log_probs, masked.targets[..., None], axis=-1)[..., 0]
    nsp_weights = pairs.both.astype(jnp.float32) * row_weight
    nsp_log_probs = jax.nn.log_softmax(nsp.astype(jnp.float32), axis=-1)
    nsp_nll = -jnp.take_along_axis(nsp_log_probs, pairs.is_next[:, None], axis=-1)[:, 0]
    return {
        "mlm_nll": jnp.sum(mlm_nll * mlm_weights),
        "mlm_correct": jnp.sum((jnp.argmax(mlm, -1) == masked.targets) * mlm_weights),
        "mlm_count": jnp.sum(mlm_weights),
        "nsp_nll": jnp.sum(nsp_nll * nsp_weights),
        "nsp_correct": jnp.sum((jnp.argmax(nsp, -1) == pairs.is_next) * nsp_weights),
        "nsp_count": jnp.sum(nsp_weights),
    }


def summarise(sums: dict[str, Any]) -> dict[str, Any]:
    """Means from ``pretraining_sums``: ``loss`` (MLM + NSP nats), ``mlm_loss``, ``nsp_loss``, both accuracies."""
    mlm_count, nsp_count = jnp.maximum(sums["mlm_count"], 1.0), jnp.maximum(sums["nsp_count"], 1.0)
    metrics = {
        "mlm_loss": sums["mlm_nll"] / mlm_count,
        "nsp_loss": sums["nsp_nll"] / nsp_count,
        "mlm_accuracy": sums["mlm_correct"] / mlm_count,
        "nsp_accuracy": sums["nsp_correct"] / nsp_count,
    }
    return {"loss": metrics["mlm_loss"] + metrics["nsp_loss"], **metrics}


def pretraining_loss(model: Any, batch: dict, key: jax.Array, *, vocab: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The shared loop's loss: masked-LM nats per predicted token + NSP nats per pair, and the metrics."""
    metrics = summarise(pretraining_sums(model, batch, key, vocab=vocab, train=True))
    return metrics["loss"], metrics
