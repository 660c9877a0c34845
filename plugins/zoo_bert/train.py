"""BERT pretraining on the shared loop (masked LM + next-sentence prediction), and its evaluation.

``train(run)``:

1. trains the byte-level BPE tokenizer on the training split (or takes the one of
   the ``--init-from`` model, whose embeddings are indexed by its ids);
2. tokenizes the training windows once, on the host. Subword tokenization (merge
   rules applied word by word) has no efficient form inside jit, and the token
   stream never changes during a run; what does change every step (which spans
   pair up, which tokens are masked) is drawn inside the jitted loss from the step
   key (``zoo_bert.pretraining``). The loop's data is then the dataset's windows as
   tokens, one row per window, shuffled and resumed like any dataset;
3. has the model built with the tokenizer written into it (``TokenizerStore``), so
   every checkpoint carries it;
4. runs ``run.fit`` with the pretraining loss.

``evaluate(model, data)`` tokenizes ``data``'s windows with the model's own
tokenizer and measures both objectives with a fixed key, so ``zoo verify``
re-measures exactly the card's numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo import training
from zoo.errors import UsageError
from zoo_bert import pretraining, tokenizer as bert_tokenizer
from zoo_bert.model import build

EVAL_SEED = 20240917  # the fixed key of evaluation: the same pairs and masks on every call
EVAL_PASSES = 4  # passes over the split, each with its own pairs and masks (NSP is one label per window and pass)
EVAL_BATCH = 64


def train(run: training.Run) -> training.TrainResult:
    """Pretrain with masked LM + NSP on the run's dataset; the tokenizer goes into the model."""
    if run.config.num_classes:
        raise UsageError("bert pretrains (num_classes=0); a classifier is the bert-classifier plugin's")
    windows = run.data("train")
    tokenizer = run_tokenizer(run, windows)
    run = with_tokenizer(run, tokenizer, bert_tokenizer.tokenize_windows(tokenizer, windows))
    return run.fit(training.Loss(functools.partial(pretraining.pretraining_loss, vocab=tokenizer.get_vocab_size())))


def run_tokenizer(run: training.Run, texts: Mapping[str, np.ndarray]):
    """The ``--init-from`` model's tokenizer (its embeddings are indexed by its ids); else one trained on ``texts``.

    ``texts``: byte windows ``{"text": uint8 (N, W), "length": (N,)}``.
    """
    if run.init_from:
        from zoo import pretrained

        tokenizer = bert_tokenizer.load(pretrained.load(run.init_from).model)
    else:
        tokenizer = bert_tokenizer.train(bert_tokenizer.window_texts(texts), run.config.vocab_size)
    if (vocab := tokenizer.get_vocab_size()) > run.config.vocab_size:
        raise UsageError(f"the tokenizer has {vocab} tokens; the model's vocab_size is {run.config.vocab_size}")
    return tokenizer


def with_tokenizer(run: training.Run, tokenizer, train_data: Mapping[str, np.ndarray]) -> training.Run:
    """``run`` building its model with ``tokenizer`` inside (so every checkpoint carries it), training on ``train_data``.

    The loop builds the model through the plugin's ``build``; ``Plugin.build`` may be a
    callable, so this run's plugin is the same plugin with a build that stores the tokenizer.
    """

    def build_with_tokenizer(config, rngs: nnx.Rngs):
        model = build(config, rngs)
        bert_tokenizer.store(model, tokenizer)
        return model

    return dataclasses.replace(run, plugin=dataclasses.replace(run.plugin, build=build_with_tokenizer), train_data=train_data)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _batch_sums(graphdef: Any, state: Any, batch: dict, key: jax.Array, vocab: int) -> dict:
    return pretraining.pretraining_sums(nnx.merge(graphdef, state), batch, key, vocab=vocab)


def evaluate(model: nnx.Module, data: Mapping[str, np.ndarray]) -> dict[str, float]:
    """MLM and NSP accuracy and nats on every window of ``data``, ``EVAL_PASSES`` times, with a fixed key.

    Batches are fixed-size; the last is filled with the first windows at weight 0
    (they still serve as the random segments of NSP negatives).
    """
    tokenizer = bert_tokenizer.load(model)
    tokens = bert_tokenizer.tokenize_windows(tokenizer, data)
    n = len(tokens["length"])
    size = max(2, min(EVAL_BATCH, n))
    graphdef, state = nnx.split(model)
    totals: dict[str, float] = {}
    key = jax.random.key(EVAL_SEED)
    for start in range(0, n * EVAL_PASSES, size):
        rows = np.arange(start, start + size)
        batch = {
            "tokens": tokens["tokens"][rows % n],
            "length": tokens["length"][rows % n],
            "weight": (rows < n * EVAL_PASSES).astype(np.float32),
        }
        sums = _batch_sums(graphdef, state, batch, jax.random.fold_in(key, start), tokenizer.get_vocab_size())
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    metrics = {k: float(v) for k, v in pretraining.summarise({k: jnp.float32(v) for k, v in totals.items()}).items()}
    return metrics | {"masked_tokens": totals["mlm_count"], "pairs": totals["nsp_count"]}
