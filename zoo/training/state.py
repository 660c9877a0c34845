"""``TrainState`` (everything a step changes), its shardings, and ``StepContext`` for custom steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from zoo import sharding
from zoo.training.config import TrainConfig
from zoo.training.model_def import ModelDef


@struct.dataclass
class TrainState:
    """Everything a step changes. A pytree of arrays only; checkpointed whole."""

    step: jax.Array  # int32 scalar: steps done
    params: tuple[dict, ...]  # one pure dict per group
    rest: dict  # non-trained variables (batch statistics, frozen parameters)
    opt: tuple[Any, ...]  # one optax state per group
    ema: dict | None  # EMA of all trained parameters (flat union), if enabled
    nonfinite_step: jax.Array  # int32: first step whose loss was not finite, -1 if none


def replace_at(items: tuple, i: int, value: Any) -> tuple:
    """``items`` with entry ``i`` replaced."""
    return items[:i] + (value,) + items[i + 1 :]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a ``CustomStep`` needs from the loop."""

    model_def: ModelDef
    optimizers: tuple[optax.GradientTransformation, ...]
    config: TrainConfig

    def model(self, state: TrainState, params: Sequence[Mapping] | None = None) -> nnx.Module:
        return self.model_def.merge(self.model_def.combine(params or state.params, state.rest))

    def apply_gradients(self, state: TrainState, group: int, grads: Mapping) -> TrainState:
        updates, opt = self.optimizers[group].update(grads, state.opt[group], state.params[group])
        params = optax.apply_updates(state.params[group], updates)
        return state.replace(params=replace_at(state.params, group, params), opt=replace_at(state.opt, group, opt))

    def init_state(self, variables: Mapping) -> TrainState:
        """A fresh state at step 0 from all variables (jit it with ``state_shardings``)."""
        params, rest = self.model_def.partition(variables)
        return TrainState(
            step=jnp.int32(0),
            params=params,
            rest=rest,
            opt=tuple(tx.init(p) for tx, p in zip(self.optimizers, params)),
            ema=self.model_def.combine(params, {}) if self.config.ema_decay is not None else None,
            nonfinite_step=jnp.int32(-1),
        )

    def state_shardings(self, mesh: jax.sharding.Mesh) -> TrainState:
        """Where each part of the state lives: optimizer moments like their parameters, scalars replicated."""
        replicated = sharding.replicated(mesh)
        model_def = self.model_def
        group_shardings, rest_shardings = model_def.partition(model_def.shardings)
        group_abstract, _ = model_def.partition(model_def.abstract)
        # Partitioned optimizers (Muon: AdamW for some parameters) hold a MaskedNode where a
        # parameter is another partition's: it holds no array and keeps its place.
        masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
        opt_shardings = tuple(
            optax.tree_map_params(
                tx, lambda p, s: p if masked(p) else s, jax.eval_shape(tx.init, p), sh,
                transform_non_params=lambda _: replicated, is_leaf=masked,
            )  # fmt: skip
            for tx, p, sh in zip(self.optimizers, group_abstract, group_shardings)
        )
        return TrainState(
            step=replicated,
            params=group_shardings,
            rest=rest_shardings,
            opt=opt_shardings,
            ema=model_def.combine(group_shardings, {}) if self.config.ema_decay is not None else None,
            nonfinite_step=replicated,
        )


def weights_for_use(model_def: ModelDef, state: TrainState) -> dict:
    """The variables to evaluate and ship: the EMA of the parameters when the run keeps one."""
    trained = [state.ema] if state.ema is not None else state.params
    return model_def.combine(trained, state.rest)


def train_item(state: TrainState) -> dict[str, Any]:
    """The non-model part of a TrainState, as the checkpoint's ``train`` item."""
    return {"step": state.step, "opt": state.opt, "ema": state.ema, "nonfinite_step": state.nonfinite_step}
