"""The GPT's objective and evaluation: the shared next-character loss and validation nats per character."""

from __future__ import annotations

import functools

from zoo import text, training


def train(run: training.Run) -> training.TrainResult:
    """Minimise nats per character of random ``context + 1``-byte crops of the training windows."""
    return run.fit(training.Loss(functools.partial(text.next_char_loss, context=run.config.context)))


def evaluate(model, data) -> dict[str, float]:
    """Nats (and bits) per character over every target of ``data`` (the whole split), in context-sized chunks."""
    return text.evaluate_nats(model, data, model.cfg.context)
