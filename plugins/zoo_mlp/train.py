"""The MLP's objective, evaluation and prediction: the shared classifier toolkit, unchanged.

The loss declares its pixels attackable, so ``--set train.adversarial=pgd`` trains on PGD examples.
"""

from __future__ import annotations

from zoo import classify, training


def train(run: training.Run) -> training.TrainResult:
    return run.fit(training.Loss(classify.cross_entropy, inputs=classify.PIXELS))


evaluate = classify.evaluate
predict = classify.predict
