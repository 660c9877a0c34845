"""The LSTM's objective and evaluation: the shared next-character loss and validation nats per character."""

from __future__ import annotations

import functools

from zoo import text, training


def train(run: training.Run) -> training.TrainResult:
    """Minimise nats per character of random ``context + 1``-byte crops (truncated backpropagation through time)."""
    return run.fit(training.Loss(functools.partial(text.next_char_loss, context=run.config.context)))


def evaluate(model, data) -> dict[str, float]:
    """Nats (and bits) per character over every target of ``data``, each chunk of ``context`` from a zero state."""
    return text.evaluate_nats(model, data, model.cfg.context)
