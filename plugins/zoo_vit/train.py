"""The ViT's objective, evaluation and prediction: the shared classifier toolkit (``zoo.classify``)."""

from __future__ import annotations

from zoo import classify, training


def train(run: training.Run) -> training.TrainResult:
    return run.fit(training.Loss(classify.cross_entropy))


evaluate = classify.evaluate
predict = classify.predict
