"""What a plugin asks the loop to minimise: one loss, several parameter groups, or a step of its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

LossFn = Callable[..., Any]
"""``(model, batch, key) -> loss`` or ``(loss, {name: scalar})``; loss a scalar."""


@dataclasses.dataclass(frozen=True)
class AttackableInput:
    """Which batch key holds the inputs adversarial training perturbs, and their valid range.

    ``Loss(fn, inputs=AttackableInput("image", 0.0, 255.0))`` lets ``train.adversarial``
    replace ``batch["image"]`` by adversarial inputs (float, in [low, high]) before
    ``fn`` sees the batch; ``fn`` must accept float inputs in that range.
    """

    key: str
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class Loss:
    """Minimise one loss over every ``nnx.Param`` with one optimizer.

    ``inputs`` declares the batch's attackable inputs, for adversarial training.
    """

    fn: LossFn
    inputs: AttackableInput | None = None


@dataclasses.dataclass(frozen=True)
class Group:
    """One part of the parameters, its own loss and its own optimizer state.

    Attributes:
      name: prefixes its metrics (``"disc/loss"``).
      loss: the loss this group minimises.
      params: an nnx filter choosing its parameters (``nnx.PathContains("discriminator")``).
      learning_rate: overrides the run's peak learning rate for this group.
    """

    name: str
    loss: LossFn
    params: Any = nnx.Param
    learning_rate: float | None = None


@dataclasses.dataclass(frozen=True)
class Groups:
    """Several groups (a GAN's generator and discriminator, say).

    With ``alternate=False`` every step updates each group in order, each seeing
    the others' newest parameters; with ``alternate=True`` step ``s`` updates only
    group ``s % len(groups)``.
    """

    groups: tuple[Group, ...]
    alternate: bool = False


@dataclasses.dataclass(frozen=True)
class CustomStep:
    """A full step of the plugin's own: ``fn(ctx, state, batch, key) -> (state, metrics)``.

    ``ctx`` is a ``StepContext`` (merge a model, apply gradients); the loop still
    owns jit, shardings, donation, data, checkpoints and the non-finite guard.
    ``groups`` declares the parameter groups (their filters) the step updates.
    """

    fn: Callable[..., Any]
    groups: tuple[Group, ...] = (Group("all", loss=None),)


Objective = Loss | Groups | CustomStep


def objective_groups(objective: Objective) -> tuple[Group, ...]:
    """The parameter groups an objective trains (a plain ``Loss`` is one group over every Param)."""
    return (Group("all", objective.fn),) if isinstance(objective, Loss) else tuple(objective.groups)
