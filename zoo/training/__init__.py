"""The one training loop every plugin runs on.

A plugin's ``train(run)`` calls ``run.fit(objective)``; the loop owns jit,
sharding, data, randomness, logging, evaluation and checkpoints::

    def negative_elbo(model, batch, key):          # (loss, metrics)
        ...
    def train(run):
        return run.fit(zoo.training.Loss(negative_elbo))

Design:

- Functional core. The model is split once into a ``graphdef`` and pure nested
  dicts of arrays; one pure step ``(state, batch) -> (state, metrics)`` is jitted
  once with explicit in/out shardings and a donated state. ``nnx.jit`` per step
  would cost about 3 ms of Python per call on CPU, the step time of a small model.
- The step is ``(state, batch, key) -> (state, metrics)`` with ``key`` the run's
  key (from its seed); each step uses ``fold_in(key, step)``: no RNG state to
  carry, and a resumed run draws exactly what an uninterrupted one draws.
- Parameters are created already sharded: abstract init -> shardings from the
  logical-axis rules (``zoo.sharding``) -> jitted init with those out_shardings.
- ``steps_per_call`` > 1 fuses several steps into one call with ``lax.scan``:
  bitwise the same results, less per-call overhead at small batches.
- A non-finite loss is recorded in the state (the first such step); the loop
  notices at its next sync point (a log point or a save), where it also checks
  that the weights are finite (a NaN gradient under a finite loss), stops, and
  never checkpoints a non-finite state.

- ``train.freeze`` moves frozen parameters out of the trained groups into the
  state's ``rest``: no gradient, no optimizer state, bitwise unchanged (``freeze``).

Modules: ``config`` (TrainConfig, make_optimizer), ``freeze`` (train.freeze), ``objectives`` (Loss, Group,
Groups, CustomStep), ``model_def`` (ModelDef), ``state`` (TrainState,
StepContext), ``step`` (make_train_step, fuse_steps), ``loop`` (Loop, fit,
TrainResult, Interrupted, NonFiniteLoss), ``run`` (Run and run.json).
"""

from zoo.training.config import TrainConfig, make_optimizer
from zoo.stopping import Interrupted
from zoo.training.loop import Loop, NonFiniteLoss, TrainResult, fit
from zoo.training.model_def import ModelDef
from zoo.training.objectives import AttackableInput, CustomStep, Group, Groups, Loss, LossFn, Objective, objective_groups
from zoo.training.run import RESUMABLE_CHANGES, RUN_FILE, Run
from zoo.training.state import StepContext, TrainState, weights_for_use
from zoo.training.step import fuse_steps, make_train_step

__all__ = [
    "RESUMABLE_CHANGES",
    "RUN_FILE",
    "AttackableInput",
    "CustomStep",
    "Group",
    "Groups",
    "Interrupted",
    "Loop",
    "Loss",
    "LossFn",
    "ModelDef",
    "NonFiniteLoss",
    "Objective",
    "Run",
    "StepContext",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "fit",
    "fuse_steps",
    "make_optimizer",
    "make_train_step",
    "objective_groups",
    "weights_for_use",
]
