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
- A non-finite loss or gradient is recorded in the state (the first such step);
  the loop notices at its next sync point, stops, and never checkpoints past it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct, traverse_util

from zoo import checkpoint, sharding
from zoo.config import config_to_dict
from zoo.data.loader import ArrayLoader, Prefetcher
from zoo.download import atomic_write_bytes
from zoo.errors import UsageError, ZooError
from zoo.plugin import Plugin
from zoo.reporting import Reporter

# =========================================================================== configuration


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train, separate from what to train (the model config).

    Set from the CLI with ``--steps``, ``--batch-size``, ``--seed``,
    ``--checkpoint-every`` and ``--set train.FIELD=VALUE``.
    """

    steps: int = 1000
    batch_size: int = 128
    seed: int = 0
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # adamw's decoupled decay; 0 makes it Adam
    b1: float = 0.9  # Adam's beta1, or SGD's momentum
    b2: float = 0.999
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0  # linear warmup from 0, then the schedule
    final_lr_fraction: float = 0.0  # cosine ends at learning_rate * this
    grad_clip: float | None = None  # clip the global gradient norm to this
    grad_accum: int = 1  # micro-batches per batch: the same mean gradient for less memory (a stochastic
    # loss draws its randomness per micro-batch, so it differs by sampling, not in expectation)
    ema_decay: float | None = None  # keep an exponential moving average of the parameters
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: compute in bf16, fp32 master weights
    steps_per_call: int = 1  # steps fused into one jitted call (lax.scan)
    checkpoint_every: int | None = None  # None: only at the end (and on Ctrl-C)
    keep: int = 3  # newest checkpoints kept (plus the best by the plugin's metric)
    eval_every: int | None = None  # run the plugin's evaluate every N steps
    log_every: int = 100

    def __post_init__(self):
        positive = ("steps", "batch_size", "grad_accum", "steps_per_call", "log_every", "keep")
        for name in positive:  # keep >= 1: the checkpoint just saved is always kept
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise UsageError(f"learning_rate must be positive; got {self.learning_rate}")
        if self.batch_size % self.grad_accum:
            raise UsageError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")
        k = self.steps_per_call
        for name in ("steps", "checkpoint_every", "eval_every"):
            value = getattr(self, name)
            if value is not None and (value < 1 or value % k):
                raise UsageError(f"{name} ({value}) must be a positive multiple of steps_per_call ({k})")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UsageError(f"ema_decay must be in (0, 1); got {self.ema_decay}")


def make_optimizer(cfg: TrainConfig, learning_rate: float | None = None) -> optax.GradientTransformation:
    """The optax transformation ``cfg`` describes: clip -> optimizer with the schedule."""
    peak = learning_rate if learning_rate is not None else cfg.learning_rate
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, peak, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1), peak * cfg.final_lr_fraction
        )
    elif cfg.warmup_steps:
        lr = optax.join_schedules([optax.linear_schedule(0.0, peak, cfg.warmup_steps), optax.constant_schedule(peak)], [cfg.warmup_steps])
    else:
        lr = peak
    if cfg.optimizer == "adamw" and cfg.weight_decay:
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.optimizer in ("adam", "adamw"):  # adamw without decay is Adam, minus a pass adding 0 * params
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    else:
        opt = optax.sgd(lr, momentum=cfg.b1 or None)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt


# =========================================================================== objectives

LossFn = Callable[..., Any]
"""``(model, batch, key) -> loss`` or ``(loss, {name: scalar})``; loss a scalar."""


@dataclasses.dataclass(frozen=True)
class Loss:
    """Minimise one loss over every ``nnx.Param`` with one optimizer."""

    fn: LossFn


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


# =========================================================================== model and state


def _flat(tree: Mapping) -> dict[tuple, Any]:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _unflat(flat: Mapping[tuple, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat)) if flat else {}


def _cast_floating(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A model as a static ``graphdef`` plus where each variable lives.

    Variables travel as pure nested dicts (``nnx.to_pure_dict``); ``groups[i]`` is
    the set of variable paths group ``i`` trains; every other variable (batch
    statistics, frozen parameters) is "rest".
    """

    graphdef: Any
    abstract: dict  # pure dict of ShapeDtypeStruct
    shardings: dict  # pure dict of NamedSharding
    groups: tuple[frozenset, ...]

    @classmethod
    def create(cls, build: Callable[[], nnx.Module], mesh: jax.sharding.Mesh, filters: Sequence[Any]) -> ModelDef:
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(build)
        graphdef, state = nnx.split(model)
        claimed: set[tuple] = set()
        groups = []
        for f in filters:
            _, chosen, _ = nnx.split(model, f, ...)
            paths = frozenset(_flat(nnx.to_pure_dict(chosen))) - claimed
            claimed |= paths
            groups.append(paths)
        return cls(graphdef, nnx.to_pure_dict(state), sharding.state_shardings(state, mesh), tuple(groups))

    def partition(self, variables: Mapping) -> tuple[tuple[dict, ...], dict]:
        """All variables -> (one dict per group, the rest)."""
        flat = _flat(variables)
        parts = tuple(_unflat({p: flat[p] for p in paths}) for paths in self.groups)
        claimed = frozenset().union(*self.groups)
        return parts, _unflat({p: v for p, v in flat.items() if p not in claimed})

    def combine(self, params: Sequence[Mapping], rest: Mapping) -> dict:
        flat = _flat(rest)
        for part in params:
            flat.update(_flat(part))
        return _unflat(flat)

    @property
    def targets(self) -> dict:
        """Restore targets for every variable: shapes, dtypes and the shardings wanted now."""
        return sharding.abstract(self.abstract, self.shardings)

    def merge(self, variables: Mapping) -> nnx.Module:
        return nnx.merge(self.graphdef, dict(variables))

    def init(self, build: Callable[[], nnx.Module]) -> dict:
        """Run ``build`` on the devices, each variable created in its sharding."""

        def create():
            with nnx.use_eager_sharding(False):
                return nnx.to_pure_dict(nnx.state(build()))

        return jax.jit(create, out_shardings=self.shardings)()


@struct.dataclass
class TrainState:
    """Everything a step changes. A pytree of arrays only; checkpointed whole."""

    step: jax.Array  # int32 scalar: steps done
    params: tuple[dict, ...]  # one pure dict per group
    rest: dict  # non-trained variables (batch statistics, frozen parameters)
    opt: tuple[Any, ...]  # one optax state per group
    ema: dict | None  # EMA of all trained parameters (flat union), if enabled
    nonfinite_step: jax.Array  # int32: first step whose loss was not finite, -1 if none


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
        return state.replace(
            params=_replace(state.params, group, params), opt=_replace(state.opt, group, opt)
        )


def _replace(items: tuple, i: int, value: Any) -> tuple:
    return items[:i] + (value,) + items[i + 1 :]


# =========================================================================== the step


def _split_loss(out: Any) -> tuple[jax.Array, dict]:
    loss, metrics = out if isinstance(out, tuple) else (out, {})
    return jnp.asarray(loss, jnp.float32), dict(metrics)


def objective_groups(objective: Objective) -> tuple[Group, ...]:
    """The parameter groups an objective trains (a plain ``Loss`` is one group over every Param)."""
    return (Group("all", objective.fn),) if isinstance(objective, Loss) else tuple(objective.groups)


def make_train_step(ctx: StepContext, objective: Objective) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]:
    """The pure step ``(state, batch, key) -> (state, metrics)`` for ``objective``."""
    cfg, model_def = ctx.config, ctx.model_def
    compute_dtype = jnp.bfloat16 if cfg.precision == "bf16" else None

    def group_update(state: TrainState, g: int, loss_fn: LossFn, batch: Any, key: jax.Array):
        """Gradients of ``loss_fn`` w.r.t. group ``g`` (accumulated over micro-batches), then its update."""

        def objective_of(params_g, rest, micro, micro_key):
            params = _replace(state.params, g, params_g)
            if compute_dtype is not None:
                params, micro = _cast_floating(params, compute_dtype), _cast_floating(micro, compute_dtype)
            model = model_def.merge(model_def.combine(params, rest))
            loss, metrics = _split_loss(loss_fn(model, micro, micro_key))
            # The forward pass may update non-trained variables (BatchNorm statistics).
            _, new_rest = model_def.partition(nnx.to_pure_dict(nnx.state(model)))
            new_rest = jax.tree.map(lambda new, old: new.astype(old.dtype), new_rest, rest)
            return loss, ({"loss": loss} | metrics, new_rest)

        grad_fn = jax.value_and_grad(objective_of, has_aux=True)
        if cfg.grad_accum == 1:
            (_, (metrics, rest)), grads = grad_fn(state.params[g], state.rest, batch, key)
        else:
            # Micro-batch i takes rows i, A+i, 2A+i, ...: every device keeps its own rows, so
            # nothing is gathered (splitting into contiguous blocks moved rows between devices).
            micro_batches = jax.tree.map(lambda x: x.reshape(-1, cfg.grad_accum, *x.shape[1:]).swapaxes(0, 1), batch)

            def accumulate(carry, xs):
                grads_sum, rest = carry
                i, micro = xs
                (_, (metrics, rest)), grads = grad_fn(state.params[g], rest, micro, jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, grads_sum, grads), rest), metrics

            zeros = jax.tree.map(jnp.zeros_like, state.params[g])
            (grads, rest), metrics = jax.lax.scan(accumulate, (zeros, state.rest), (jnp.arange(cfg.grad_accum), micro_batches))
            grads = jax.tree.map(lambda x: x / cfg.grad_accum, grads)
            metrics = jax.tree.map(jnp.mean, metrics)
        # Judged on the loss and the gradients (already materialised), not on the new
        # parameters, which would take one more pass over the state.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.tree.norm(grads))
        return ctx.apply_gradients(state.replace(rest=rest), g, grads), metrics, finite

    groups = objective_groups(objective)

    def named(g: int, metrics: dict) -> dict:
        return metrics if len(groups) == 1 else {f"{groups[g].name}/{k}": v for k, v in metrics.items()}

    def update_all(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict, jax.Array]:
        out: dict = {}
        total, finite = jnp.float32(0), jnp.bool_(True)
        for g, group in enumerate(groups):
            state, metrics, finite_g = group_update(state, g, group.loss, batch, jax.random.fold_in(key, g))
            total, finite = total + metrics["loss"], finite & finite_g
            out |= named(g, metrics)
        return state, out | {"loss": total}, finite

    def update_alternating(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict, jax.Array]:
        # lax.switch needs one output structure: each branch reports its own
        # metrics and NaN for the other groups' (the logger averages with nanmean).
        def branch(g):
            def run(state):
                new_state, metrics, finite = group_update(state, g, groups[g].loss, batch, jax.random.fold_in(key, g))
                return new_state, named(g, metrics) | {"loss": metrics["loss"]}, finite

            return run

        shapes = [jax.eval_shape(branch(g), state)[1] for g in range(len(groups))]

        def padded(g):
            def run(state):
                new_state, metrics, finite = branch(g)(state)
                blank = {k: jnp.full(v.shape, jnp.nan, v.dtype) for s in shapes for k, v in s.items()}
                return new_state, blank | metrics, finite

            return run

        return jax.lax.switch(state.step % len(groups), [padded(g) for g in range(len(groups))], state)

    def update_custom(state: TrainState, batch: Any, key: jax.Array) -> tuple[TrainState, dict, jax.Array]:
        new_state, metrics = objective.fn(ctx, state, batch, key)
        if "loss" not in metrics:  # the non-finite guard and the logs read it
            raise ZooError(f"the training step must report a 'loss' metric; it reported {sorted(metrics)}")
        # The loop cannot see a custom step's gradients: judge the new parameters.
        finite = jnp.isfinite(metrics["loss"]) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_state.params)])
        )
        return new_state, metrics, finite

    if isinstance(objective, CustomStep):
        update = update_custom
    elif isinstance(objective, Groups) and objective.alternate:
        update = update_alternating
    else:
        update = update_all

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
        # A non-finite loss or gradient is recorded, not repaired: the loop reads the
        # record at its next sync, stops, and never checkpoints a state from that step on.
        # (Selecting the old state instead cost 3-4% of a small model's step on CPU.)
        bad = jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step)
        return new_state.replace(step=state.step + 1, nonfinite_step=bad), metrics

    return train_step


def fuse_steps(step: Callable, steps_per_call: int) -> Callable:
    """``steps_per_call`` steps in one ``lax.scan`` over batches stacked on a leading axis."""
    if steps_per_call == 1:
        return step
    return lambda state, batches, key: jax.lax.scan(lambda s, b: step(s, b, key), state, batches)


# =========================================================================== runs


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``zoo train --json`` prints (``step``, ``loss``, ``params_digest``, ``workdir``) and more."""

    step: int
    loss: float
    params_digest: str
    workdir: str
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"metrics": dict(self.metrics)}


class Interrupted(ZooError):
    """Ctrl-C: a checkpoint was saved; the same command resumes."""

    exit_code = 130


class NonFiniteLoss(ZooError):
    """The loss became NaN or infinite; nothing after the last good checkpoint was kept."""


RUN_FILE = "run.json"


@dataclasses.dataclass
class Run:
    """One training run, as the core hands it to a plugin's ``train``.

    Attributes:
      plugin, variant, config: what to train (config: the plugin's dataclass).
      train: how to train.
      dataset: the ``zoo.data`` dataset name.
      workdir: run folder (``run.json``, ``checkpoints/``, ``metrics.jsonl``, ``tb/``).
      mesh_shape: ``{"data": 4, "tensor": 2}``; empty = every device on ``data``.
      init_from: a pretrained model name to start from.
      train_data, eval_data: arrays overriding ``zoo.data.load(dataset, split)``.
      progress: show progress (stderr); logs and checkpoints are written regardless.
    """

    plugin: Plugin
    variant: str
    config: Any
    train: TrainConfig
    dataset: str
    workdir: Path
    mesh_shape: Mapping[str, int] = dataclasses.field(default_factory=dict)
    init_from: str | None = None
    train_data: Mapping[str, np.ndarray] | None = None
    eval_data: Mapping[str, np.ndarray] | None = None
    progress: bool = True

    def data(self, split: str = "train") -> Mapping[str, np.ndarray]:
        """The split's arrays: the overrides if given, else the cached dataset."""
        given = self.train_data if split == "train" else self.eval_data
        if given is not None:
            return given
        from zoo import data

        return data.load(self.dataset, split)

    def build(self) -> nnx.Module:
        return self.plugin.resolve("build")(self.config, nnx.Rngs(self.train.seed))

    def description(self) -> dict[str, Any]:
        """What identifies this run in ``run.json``; a resume must match it."""
        return {
            "plugin": self.plugin.name,
            "variant": self.variant,
            "config": config_to_dict(self.config),
            "dataset": self.dataset,
            "train": config_to_dict(self.train),
        }

    def fit(self, objective: Objective, *, loader: ArrayLoader | None = None) -> TrainResult:
        """Train with ``objective`` until ``train.steps``; resumes from the workdir's last checkpoint."""
        return fit(self, objective, loader=loader)


RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep", "eval_every", "log_every", "steps_per_call"})
"""Training fields a resumed run may change: they leave the maths of each step as it was
(``steps_per_call`` fuses steps bitwise-identically, so it may change where it divides the
resumed step; ``steps`` extends the run)."""


def _check_resumable(run: Run) -> None:
    """Refuse to resume a workdir that belongs to a different run."""
    path = run.workdir / RUN_FILE
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise ZooError(f"{path} is not valid JSON; move the workdir aside or remove it") from None
    now = run.description()
    for description in (saved, now):
        for field in RESUMABLE_CHANGES:
            description.get("train", {}).pop(field, None)
    differences = []
    for key in now:
        if key == "train" or key == "config":
            for field in sorted(set(now[key]) | set(saved.get(key, {}))):
                if now[key].get(field) != saved.get(key, {}).get(field):
                    differences.append(f"{key}.{field}: workdir {saved.get(key, {}).get(field)!r}, now {now[key].get(field)!r}")
        elif now[key] != saved.get(key):
            differences.append(f"{key}: workdir {saved.get(key)!r}, now {now[key]!r}")
    if differences:
        raise UsageError(
            f"{run.workdir} holds a different run ({'; '.join(differences)}); use another --workdir to start afresh"
        )


def _write_run_file(run: Run) -> None:
    if jax.process_index() == 0:
        atomic_write_bytes(run.workdir / RUN_FILE, (json.dumps(run.description(), indent=2) + "\n").encode())


@contextlib.contextmanager
def _sigint_flag():
    """Turn the first Ctrl-C into a flag the loop checks between calls (main thread only)."""
    flag = {"set": False}

    def handler(signum, frame):
        if flag["set"]:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        flag["set"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(run: Run, objective: Objective, *, loader: ArrayLoader | None = None) -> TrainResult:
    """Run the shared loop. See the module docstring; ``Run.fit`` is the usual entry."""
    cfg = run.train
    started = time.perf_counter()
    mesh = sharding.make_mesh(run.mesh_shape)
    sharding.check_batch_size(cfg.batch_size // cfg.grad_accum, mesh, "micro-batch size" if cfg.grad_accum > 1 else "batch size")
    _check_resumable(run)
    groups = objective_groups(objective)

    # ------------------------------------------------------------------ model, optimizers, state
    model_def = ModelDef.create(run.build, mesh, [g.params for g in groups])
    if not any(model_def.groups):
        raise ZooError(f"plugin {run.plugin.name!r}: the objective's parameter filters select no parameters")
    optimizers = tuple(make_optimizer(cfg, g.learning_rate) for g in groups)
    ctx = StepContext(model_def, optimizers, cfg)
    replicated = sharding.replicated(mesh)

    group_shardings, rest_shardings = model_def.partition(model_def.shardings)
    group_abstract, _ = model_def.partition(model_def.abstract)
    opt_shardings = tuple(
        optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, p), sh, transform_non_params=lambda _: replicated)
        for tx, p, sh in zip(optimizers, group_abstract, group_shardings)
    )
    state_shardings = TrainState(
        step=replicated,
        params=group_shardings,
        rest=rest_shardings,
        opt=opt_shardings,
        ema=model_def.combine(group_shardings, {}) if cfg.ema_decay is not None else None,
        nonfinite_step=replicated,
    )

    def init_state(variables: dict) -> TrainState:
        params, rest = model_def.partition(variables)
        return TrainState(
            step=jnp.int32(0),
            params=params,
            rest=rest,
            opt=tuple(tx.init(p) for tx, p in zip(optimizers, params)),
            ema=model_def.combine(params, {}) if cfg.ema_decay is not None else None,
            nonfinite_step=jnp.int32(-1),
        )

    store = checkpoint.StepDirectory(run.workdir / "checkpoints")
    resumed_from = store.latest()
    arrays = run.data("train")
    if loader is None:
        loader = ArrayLoader(
            arrays, cfg.batch_size, cfg.seed, steps_per_call=cfg.steps_per_call,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
    abstract_state = sharding.abstract(jax.eval_shape(init_state, model_def.abstract), state_shardings)
    if resumed_from is not None:
        restored = checkpoint.restore(
            store.path(resumed_from), {"model": model_def.targets, "train": _train_item(abstract_state)}, verified=True
        )
        params, rest = model_def.partition(restored["model"])
        state = TrainState(params=params, rest=rest, **restored["train"])
        loader.set_state(checkpoint.read_meta(store.path(resumed_from))["data"])
    else:
        variables = model_def.init(run.build)
        if run.init_from:
            variables = _init_from(run, model_def, variables)
        state = jax.jit(init_state, out_shardings=state_shardings)(variables)
        _write_run_file(run)

    # ------------------------------------------------------------------ the compiled step
    k = cfg.steps_per_call
    step = int(state.step)
    if step % k:
        raise UsageError(
            f"{run.workdir} resumes at step {step}, which steps_per_call={k} does not divide; "
            f"resume with steps_per_call dividing {step}"
        )
    # Made by a jitted call so that, with several processes, every process holds its part.
    run_key = jax.jit(lambda: jax.random.key(cfg.seed), out_shardings=replicated)()
    batch_sharding = sharding.batch_sharding(mesh, leading=1 if k > 1 else 0)
    step_fn = jax.jit(
        fuse_steps(make_train_step(ctx, objective), k),
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    evaluate = run.plugin.resolve("evaluate") if run.plugin.evaluate and cfg.eval_every else None
    eval_data = run.data("test") if evaluate else None

    # ------------------------------------------------------------------ the loop
    reporter = Reporter(run.workdir, cfg.steps, step, cfg.log_every, enabled=run.progress)
    last_eval: dict[str, float] = {}
    last_eval_step = None
    last_metrics: dict[str, float] = {}
    data_state = loader.state()
    saved_step = resumed_from

    def check_finite() -> None:
        bad = int(state.nonfinite_step)
        if bad >= 0:
            where = f"step {saved_step} in {store.path(saved_step)}" if saved_step is not None else "none was saved"
            raise NonFiniteLoss(f"loss became non-finite at step {bad}; stopped. Last good checkpoint: {where}")

    def save() -> None:
        nonlocal saved_step
        check_finite()
        # Only a score measured on exactly these weights ranks them (best-by-metric retention).
        scored = last_eval if last_eval_step == step else {}
        meta = run.description() | {"step": step, "data": data_state, "eval": scored, "loss": last_metrics.get("loss")}
        items = {"model": model_def.combine(state.params, state.rest), "train": _train_item(state)}
        if state.ema is not None:
            items["ema"] = weights_for_use(model_def, state)
        store.save(step, items, meta)
        saved_step = step
        if jax.process_index() == 0:
            store.prune(cfg.keep, run.plugin.metric if evaluate else None)

    # XLA:CPU deadlocks (a rendezvous timeout, then abort) when consecutive calls
    # with collectives overlap across several host devices: measured here with 8
    # virtual devices on 2 cores, 300 tiny steps. Waiting for each call costs
    # nothing on CPU, where dispatch ahead only overlaps Python with compute.
    sync_each_call = jax.default_backend() == "cpu" and mesh.devices.size > 1
    # On CPU with one process, numpy batches go straight into the jitted call, which
    # places them by batch_sharding in C++, and the loader runs inline: jax.device_put
    # from Python cost about 0.3 ms a step with both cores busy computing, and the
    # thread hand-off about 0.06 ms, against a 4.4 ms VAE step (bench/loop_overhead.py).
    # Accelerators and multi-process runs need the transfer (or the assembly of the
    # global batch) done ahead, in the prefetch thread.
    host_batches = jax.default_backend() == "cpu" and jax.process_count() == 1

    def put(batch: Any) -> Any:
        if host_batches:
            return batch
        return sharding.put_global_batch(batch, batch_sharding, cfg.batch_size, leading=1 if k > 1 else 0)

    prefetch = Prefetcher(loader, put, depth=0 if host_batches else 2) if step < cfg.steps else None
    try:
        with _sigint_flag() as interrupted, jax.set_mesh(mesh):
            while step < cfg.steps:
                batch, data_state = next(prefetch)
                state, metrics = step_fn(state, batch, run_key)
                if sync_each_call:
                    state.step.block_until_ready()
                step += k
                if reporter.record(step, metrics):
                    last_metrics = reporter.flush(step)
                    check_finite()
                if evaluate and step % cfg.eval_every == 0:
                    model = model_def.merge(weights_for_use(model_def, state))
                    last_eval = {k_: float(v) for k_, v in evaluate(model, eval_data).items()}
                    last_eval_step = step
                    reporter.log_eval(step, last_eval)
                if interrupted["set"]:
                    save()
                    raise Interrupted(f"interrupted at step {step}; checkpoint saved in {store.path(step)}; rerun to resume")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    save()
            if reporter.pending:
                last_metrics = reporter.flush(step)
            if saved_step != step:
                save()
            check_finite()
    finally:
        if prefetch is not None:
            prefetch.close()
        reporter.close()

    if not last_metrics and saved_step is not None:
        last_metrics = {"loss": checkpoint.read_meta(store.path(saved_step)).get("loss") or math.nan}
    return TrainResult(
        step=step,
        loss=float(reporter.last_loss if reporter.last_loss is not None else last_metrics.get("loss", math.nan)),
        params_digest=checkpoint.params_digest(model_def.combine(state.params, state.rest)),
        workdir=str(run.workdir),
        metrics=last_eval,
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
    )


def weights_for_use(model_def: ModelDef, state: TrainState) -> dict:
    """The variables to evaluate and ship: the EMA of the parameters when the run keeps one."""
    trained = [state.ema] if state.ema is not None else state.params
    return model_def.combine(trained, state.rest)


def _train_item(state: TrainState) -> dict[str, Any]:
    """The non-model part of a TrainState, as the checkpoint's ``train`` item."""
    return {"step": state.step, "opt": state.opt, "ema": state.ema, "nonfinite_step": state.nonfinite_step}


def _init_from(run: Run, model_def: ModelDef, variables: dict) -> dict:
    """Start from a pretrained model: matching variables restored, replaceable ones re-initialised."""
    from zoo import pretrained

    old = pretrained.load_variables(run.init_from)  # "encoder/hidden/kernel" -> array
    fresh = _flat(variables)
    kept, replaced, refused = [], [], []
    for path, value in sorted(fresh.items(), key=lambda item: "/".join(map(str, item[0]))):
        name = "/".join(map(str, path))
        replaceable = any(name == p or name.startswith(p + "/") for p in run.plugin.replaceable)
        if name in old and old[name].shape == value.shape:
            fresh[path] = jax.device_put(old[name].astype(value.dtype), value.sharding)
            kept.append(name)
        elif replaceable:
            replaced.append(name)
        else:
            have = old[name].shape if name in old else "nothing"
            refused.append(f"  {name}: model {value.shape}, checkpoint {have}")
    if refused:
        raise UsageError(
            f"--init-from {run.init_from}: plugin {run.plugin.name!r} does not declare these replaceable:\n"
            + "\n".join(refused)
        )
    if replaced:
        print(f"init-from {run.init_from}: restored {len(kept)} variables, re-initialised {', '.join(replaced)}", file=sys.stderr)
    return _unflat(fresh)
