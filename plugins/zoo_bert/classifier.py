"""BERT fine-tuned as a text classifier (the ``bert-classifier`` plugin): train, evaluate, predict.

A model built with ``num_classes = K`` reads ``[CLS] text [SEP]`` and classifies from
the pooled ``[CLS]`` state (``Bert.classify``). Texts longer than the context are cut
to their first ``context - 2`` tokens (a 256-character passage of Shakespeare is about
75 tokens, well inside 128). The data are labelled byte texts::

    {"text": uint8 (N, W), "length": int32 (N,), "label": int32 (N,)}

as ``shakespeare-genre`` gives them. ``--init-from`` a pretrained ``bert`` model
restores its encoder, pooler and tokenizer and starts a fresh ``classifier``; without
it, the same architecture trains from scratch with a tokenizer of its own (the
comparison the card of a fine-tuned model reports).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from zoo import classify, training
from zoo.errors import UsageError
from zoo_bert import tokenizer as bert_tokenizer
from zoo_bert.tokenizer import CLS, PAD, SEP
from zoo_bert.train import run_tokenizer, with_tokenizer

EVAL_BATCH = 256


def encode_texts(tokenizer: Any, texts: Sequence[str], context: int) -> dict[str, np.ndarray]:
    """``[CLS] text [SEP]`` of each text, cut to ``context``: ``{"tokens": int32 (N, context), "length": int32 (N,)}``.

    The texts are taken literally (``zoo_bert.tokenizer.encode_literally``).
    """
    encoded = bert_tokenizer.encode_literally(tokenizer, texts)
    tokens = np.full((len(encoded), context), PAD, np.int32)  # one width for every batch: one compilation
    lengths = np.zeros(len(encoded), np.int32)
    for row, ids in enumerate(encoded):
        ids = [CLS, *ids[: context - 2], SEP]
        tokens[row, : len(ids)], lengths[row] = ids, len(ids)
    return {"tokens": tokens, "length": lengths}


def _inputs(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(tokens, segments, valid)`` of a token batch: one segment, the first ``length`` positions valid."""
    tokens = batch["tokens"]
    valid = jnp.arange(tokens.shape[1])[None, :] < batch["length"][:, None]
    return tokens, jnp.zeros_like(tokens), valid


def classification_loss(model: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy of ``{"tokens" (B, T), "length" (B,), "label" (B,)}``, and the accuracy."""
    logits = model.classify(*_inputs(batch), train=True, key=key).astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


def train(run: training.Run) -> training.TrainResult:
    """Fine-tune (``--init-from``) or train from scratch on the run's labelled texts."""
    from zoo import data

    texts = run.data("train")
    if "label" not in texts:
        raise UsageError(f"bert-classifier needs labelled texts (such as shakespeare-genre); {run.dataset!r} has no labels")
    classes = data.get(run.dataset).classes
    if classes and len(classes) != run.config.num_classes:
        raise UsageError(
            f"{run.dataset} has {len(classes)} classes; the model has num_classes={run.config.num_classes} "
            f"(--set num_classes={len(classes)})"
        )
    tokenizer = run_tokenizer(run, texts)
    tokens = encode_texts(tokenizer, bert_tokenizer.window_texts(texts), run.config.context)
    return with_tokenizer(run, tokenizer, tokens | {"label": np.asarray(texts["label"], np.int32)}).fit(
        training.Loss(classification_loss)
    )


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef: Any, state: Any, batch: dict) -> jax.Array:
    return nnx.merge(graphdef, state).classify(*_inputs(batch)).astype(jnp.float32)


def logits_of(model: nnx.Module, texts: Sequence[str]) -> np.ndarray:
    """Class logits ``(N, K)`` of texts, ``EVAL_BATCH`` at a time (the last batch padded to the same shape)."""
    tokens = encode_texts(bert_tokenizer.load(model), texts, model.cfg.context)
    graphdef, state = nnx.split(model)
    n, size = len(texts), min(EVAL_BATCH, max(1, len(texts)))
    out = []
    for start in range(0, n, size):
        rows = np.arange(start, start + size) % n  # wrap around to fill the last batch; cut below
        out.append(np.asarray(_logits(graphdef, state, {k: v[rows] for k, v in tokens.items()})))
    return np.concatenate(out)[:n] if out else np.zeros((0, model.cfg.num_classes), np.float32)


def evaluate(model: nnx.Module, data: Mapping[str, np.ndarray]) -> dict[str, float]:
    """``accuracy``, ``loss``, ``accuracy/<k>`` per class and ``confusion/<t>/<p>`` on every text of ``data``."""
    logits = logits_of(model, bert_tokenizer.window_texts(data))
    return classify.label_metrics(logits, data["label"], model.cfg.num_classes)


def predict(model: nnx.Module, inputs: Any) -> np.ndarray:
    """Class probabilities ``(N, K)`` of a list of texts."""
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        raise UsageError("bert-classifier classifies texts: give a list of strings (or .txt files), not arrays")
    return np.asarray(jax.nn.softmax(jnp.asarray(logits_of(model, inputs)), axis=-1))
