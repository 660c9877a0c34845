"""The pure training step ``(state, batch, key) -> (state, metrics)`` for each kind of objective.

Each step uses ``fold_in(key, step)``: no RNG state to carry, and a resumed run
draws exactly what an uninterrupted one draws. A non-finite loss is recorded in
the state (the first such step), not repaired; non-finite weights (a NaN gradient
under a finite loss) are the loop's to find, at its sync points.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.attacks import perturb
from zoo.errors import UsageError, ZooError
from zoo.reporting import MetricSums
from zoo.training.objectives import CustomStep, Group, Groups, Loss, LossFn, Objective, objective_groups
from zoo.training.state import StepContext, TrainState, replace_at

StepFn = Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]
UpdateFn = Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict, jax.Array]]
"""``(state, batch, key) -> (state, metrics, finite)``: one step's updates, before the bookkeeping."""


def _split_loss(out: Any) -> tuple[jax.Array, dict]:
    loss, metrics = out if isinstance(out, tuple) else (out, {})
    return jnp.asarray(loss, jnp.float32), dict(metrics)


def _cast_floating(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _loss_of_group(ctx: StepContext, state: TrainState, g: int, loss_fn: LossFn) -> Callable:
    """``(params_g, rest, batch, key) -> (loss, (metrics, new_rest))``, differentiable in ``params_g``."""
    model_def = ctx.model_def
    compute_dtype = jnp.bfloat16 if ctx.config.precision == "bf16" else None

    def objective_of(params_g, rest, micro, micro_key):
        params, rest_seen = replace_at(state.params, g, params_g), rest
        if compute_dtype is not None:
            params, micro = _cast_floating(params, compute_dtype), _cast_floating(micro, compute_dtype)
            rest_seen = model_def.cast_frozen(rest, compute_dtype)
        model = model_def.merge(model_def.combine(params, rest_seen))
        loss, metrics = _split_loss(loss_fn(model, micro, micro_key))
        # The forward pass may update non-trained variables (BatchNorm statistics); never
        # frozen parameters, which would otherwise come back rounded through bf16.
        _, new_rest = model_def.partition(nnx.to_pure_dict(nnx.state(model)))
        new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, rest)
        return loss, ({"loss": loss} | metrics, model_def.keep_frozen(new_rest, rest))

    return objective_of


def _accumulated_gradients(grad_fn: Callable, params: Any, rest: Any, batch: Any, key: jax.Array, accum: int):
    """Mean gradients over ``accum`` micro-batches -> ``(grads, new_rest, mean metrics)``."""
    # Micro-batch i takes rows i, A+i, 2A+i, ...: every device keeps its own rows, so
    # nothing is gathered (splitting into contiguous blocks moved rows between devices).
    micro_batches = jax.tree.map(lambda x: x.reshape(-1, accum, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, xs):
        grads_sum, rest = carry
        i, micro = xs
        (_, (metrics, rest)), grads = grad_fn(params, rest, micro, jax.random.fold_in(key, i))
        return (jax.tree.map(jnp.add, grads_sum, grads), rest), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, rest), metrics = jax.lax.scan(accumulate, (zeros, rest), (jnp.arange(accum), micro_batches))
    return jax.tree.map(lambda x: x / accum, grads), rest, jax.tree.map(jnp.mean, metrics)


def group_update(ctx: StepContext, state: TrainState, g: int, loss_fn: LossFn, batch: Any, key: jax.Array):
    """Gradients of ``loss_fn`` w.r.t. group ``g`` (accumulated over micro-batches), then its update.

    Returns ``(state, metrics, finite)``.
    """
    grad_fn = jax.value_and_grad(_loss_of_group(ctx, state, g, loss_fn), has_aux=True)
    if ctx.config.grad_accum == 1:
        (_, (metrics, rest)), grads = grad_fn(state.params[g], state.rest, batch, key)
    else:
        grads, rest, metrics = _accumulated_gradients(grad_fn, state.params[g], state.rest, batch, key, ctx.config.grad_accum)
    # Judged on the loss alone, a scalar. A pass over the gradients every step (their
    # norm) cost 13% of the seed VAE's step on CPU, at batch 16 and at 128, even fused
    # (bench/loop_overhead.py); the loop checks the weights at its sync points instead.
    return ctx.apply_gradients(state.replace(rest=rest), g, grads), metrics, jnp.isfinite(metrics["loss"])


def _named(groups: tuple[Group, ...], g: int, metrics: dict) -> dict:
    return metrics if len(groups) == 1 else {f"{groups[g].name}/{k}": v for k, v in metrics.items()}


def _update_all(ctx: StepContext, groups: tuple[Group, ...], state: TrainState, batch: Any, key: jax.Array):
    """Every group in order, each seeing the others' newest parameters."""
    out: dict = {}
    total, finite = jnp.float32(0), jnp.bool_(True)
    for g, group in enumerate(groups):
        state, metrics, finite_g = group_update(ctx, state, g, group.loss, batch, jax.random.fold_in(key, g))
        total, finite = total + metrics["loss"], finite & finite_g
        out |= _named(groups, g, metrics)
    return state, out | {"loss": total}, finite


def _update_alternating(ctx: StepContext, groups: tuple[Group, ...], state: TrainState, batch: Any, key: jax.Array):
    """Only group ``step % len(groups)``."""

    # lax.switch needs one output structure: each branch reports its own
    # metrics and NaN for the other groups' (the logger averages with nanmean).
    def branch(g):
        def run(state):
            new_state, metrics, finite = group_update(ctx, state, g, groups[g].loss, batch, jax.random.fold_in(key, g))
            return new_state, _named(groups, g, metrics) | {"loss": metrics["loss"]}, finite

        return run

    shapes = [jax.eval_shape(branch(g), state)[1] for g in range(len(groups))]

    def padded(g):
        def run(state):
            new_state, metrics, finite = branch(g)(state)
            blank = {k: jnp.full(v.shape, jnp.nan, v.dtype) for s in shapes for k, v in s.items()}
            return new_state, blank | metrics, finite

        return run

    return jax.lax.switch(state.step % len(groups), [padded(g) for g in range(len(groups))], state)


def _update_custom(ctx: StepContext, fn: Callable, state: TrainState, batch: Any, key: jax.Array):
    new_state, metrics = fn(ctx, state, batch, key)
    if "loss" not in metrics:  # the non-finite guard and the logs read it
        raise ZooError(f"the training step must report a 'loss' metric; it reported {sorted(metrics)}")
    return new_state, metrics, jnp.isfinite(metrics["loss"])  # the weights: as for a Loss, at the loop's sync points


def _updates_for(ctx: StepContext, objective: Objective) -> UpdateFn:
    if isinstance(objective, CustomStep):
        update = functools.partial(_update_custom, ctx, objective.fn)
    elif isinstance(objective, Groups) and objective.alternate:
        update = functools.partial(_update_alternating, ctx, objective_groups(objective))
    else:
        update = functools.partial(_update_all, ctx, objective_groups(objective))
    return _adversarial(ctx, objective, update) if ctx.config.adversarial else update


ATTACK_STREAM = 0x41  # folded into a step's key for the attack's random start; the loss keeps the step's own key


def _adversarial(ctx: StepContext, objective: Objective, update: UpdateFn) -> UpdateFn:
    """``update`` fed adversarial inputs (Madry et al., 2018): only the batch's declared inputs change.

    The attack raises the plugin's own loss on the current model. Its forward passes
    run on models merged afresh from the state, so whatever they would write (BatchNorm
    statistics) is dropped; the loss then sees the attacked batch with the step's own
    key, so with eps 0 a step equals the clean step (to float rounding: tests/zoo/test_adversarial_training.py).
    """
    if not isinstance(objective, Loss) or objective.inputs is None:
        raise UsageError("train.adversarial needs a loss declaring its attackable inputs: zoo.training.Loss(fn, inputs=...)")
    attack, inputs, model_def = ctx.config.adversarial_attack, objective.inputs, ctx.model_def

    def adversarial_update(state: TrainState, batch: Any, key: jax.Array):
        clean = batch[inputs.key]

        def loss_of(x: jax.Array) -> jax.Array:  # summed over examples, as perturb wants
            model = model_def.merge(model_def.combine(state.params, state.rest))
            return clean.shape[0] * _split_loss(objective.fn(model, batch | {inputs.key: x}, key))[0]

        attacked = perturb(attack, loss_of, clean, jax.random.fold_in(key, ATTACK_STREAM), (inputs.low, inputs.high))
        return update(state, batch | {inputs.key: attacked}, key)

    return adversarial_update


def make_train_step(ctx: StepContext, objective: Objective) -> StepFn:
    """The pure step ``(state, batch, key) -> (state, metrics)`` for ``objective``."""
    update, cfg, model_def = _updates_for(ctx, objective), ctx.config, ctx.model_def

    def train_step(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict]:
        """One step. ``key`` is the run's key; this step's is ``fold_in(key, state.step)``."""
        key = jax.random.fold_in(key, state.step)
        new_state, metrics, finite = update(state, batch, key)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        if cfg.ema_decay is not None:
            trained = model_def.combine(new_state.params, {})
            new_state = new_state.replace(
                ema=jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, new_state.ema, trained)
            )
        # A non-finite loss is recorded, not repaired: the loop reads the
        # record at its next sync, stops, and never checkpoints a state from that step on.
        # (Selecting the old state instead cost 3-4% of a small model's step on CPU.)
        bad = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step)
        return new_state.replace(step=state.step + 1, nonfinite_step=bad), metrics

    return train_step


def fuse_steps(step: StepFn, steps_per_call: int) -> StepFn:
    """``steps_per_call`` steps in one ``lax.scan`` over batches stacked on a leading axis."""
    if steps_per_call == 1:
        return step
    return lambda state, batches, key: jax.lax.scan(lambda s, b: step(s, b, key), state, batches)


def loop_call(step: StepFn, steps_per_call: int, gather: Callable[[Any, Any], Any]) -> Callable[..., tuple[TrainState, MetricSums]]:
    """What the loop jits: ``(state, sums, rows, inputs, key) -> (state, sums)``.

    ``gather(rows, inputs)`` makes the call's batch (``steps_per_call`` of them stacked
    when above 1) inside the call: batches fed from the host come as ``inputs``;
    data kept on the devices comes as ``rows``, indexed by ``inputs``. Each step's
    metrics are added to ``sums`` (``zoo.reporting.MetricSums``), so nothing a step
    reports leaves the device until the loop fetches the sums at a log point.
    """

    def call(state: TrainState, sums: MetricSums, rows: Any, inputs: Any, key: jax.Array):
        def one(carry: tuple[TrainState, MetricSums], batch: Any):
            state, metrics = step(carry[0], batch, key)
            return (state, carry[1].add(metrics)), None

        batches = gather(rows, inputs)
        if steps_per_call == 1:
            return one((state, sums), batches)[0]
        return jax.lax.scan(one, (state, sums), batches)[0]

    return call
