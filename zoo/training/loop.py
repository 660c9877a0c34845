"""The loop itself: restore or initialise, compile the step once, run it, log, evaluate, save.

``Loop`` keeps the run's state in attributes and does one thing per method;
``fit(run, objective)`` (or ``run.fit(objective)``) builds one and runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Mapping
from typing import Any

import jax
from zoo import checkpoint, pretrained, sharding
from zoo.data.loader import ArrayLoader, Prefetcher
from zoo.errors import UsageError, ZooError
from zoo.reporting import Reporter
from zoo.training.config import make_optimizer
from zoo.training.model_def import ModelDef
from zoo.training.objectives import Objective, objective_groups
from zoo.training.state import StepContext, TrainState, train_item, weights_for_use
from zoo.training.step import fuse_steps, make_train_step


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


class Loop:
    """One run of the shared loop. ``run`` is a ``zoo.training.Run``."""

    def __init__(self, run: Any, objective: Objective, loader: ArrayLoader | None = None):
        self.run, self.cfg = run, run.train
        self.started = time.perf_counter()
        self.mesh = run.check()
        cfg = self.cfg
        groups = objective_groups(objective)
        self.model_def = ModelDef.create(run.build, self.mesh, [g.params for g in groups])
        if not any(self.model_def.groups):
            raise ZooError(f"plugin {run.plugin.name!r}: the objective's parameter filters select no parameters")
        self.ctx = StepContext(self.model_def, tuple(make_optimizer(cfg, g.learning_rate) for g in groups), cfg)
        self.state_shardings = self.ctx.state_shardings(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self.store = checkpoint.StepDirectory(run.workdir / "checkpoints")
        self.loader = loader or ArrayLoader(
            run.data("train"), cfg.batch_size, cfg.seed, steps_per_call=cfg.steps_per_call,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
        self.resumed_from = self.store.latest()
        self.state = self._restore(self.resumed_from) if self.resumed_from is not None else self._initialise()
        self.step = int(self.state.step)
        if self.step % cfg.steps_per_call:
            raise UsageError(
                f"{run.workdir} resumes at step {self.step}, which steps_per_call={cfg.steps_per_call} does not divide; "
                f"resume with steps_per_call dividing {self.step}"
            )
        self.step_fn = self._compile(objective)
        self.evaluate = run.plugin.resolve("evaluate") if run.plugin.evaluate and cfg.eval_every else None
        self.eval_data = run.data("test") if self.evaluate else None
        self.last_eval: dict[str, float] = {}
        self.last_eval_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.data_state = self.loader.state()
        self.saved_step = self.resumed_from

    # ------------------------------------------------------------------ state

    def _restore(self, step: int) -> TrainState:
        abstract_state = sharding.abstract(jax.eval_shape(self.ctx.init_state, self.model_def.abstract), self.state_shardings)
        folder = self.store.path(step)
        restored = checkpoint.restore(folder, {"model": self.model_def.targets, "train": train_item(abstract_state)}, verified=True)
        params, rest = self.model_def.partition(restored["model"])
        self.loader.set_state(checkpoint.read_meta(folder)["data"])
        return TrainState(params=params, rest=rest, **restored["train"])

    def _initialise(self) -> TrainState:
        variables = self.model_def.init(self.run.build)
        if self.run.init_from:
            variables = pretrained.init_from(self.run.init_from, self.run.plugin, variables)
        state = jax.jit(self.ctx.init_state, out_shardings=self.state_shardings)(variables)
        self.run.write_run_file()
        return state

    def _compile(self, objective: Objective) -> Any:
        k = self.cfg.steps_per_call
        # Made by a jitted call so that, with several processes, every process holds its part.
        self.run_key = jax.jit(lambda: jax.random.key(self.cfg.seed), out_shardings=self.replicated)()
        self.batch_sharding = sharding.batch_sharding(self.mesh, leading=1 if k > 1 else 0)
        return jax.jit(
            fuse_steps(make_train_step(self.ctx, objective), k),
            in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        """Train until ``train.steps``; save at the end, on schedule and on Ctrl-C."""
        cfg = self.cfg
        self.reporter = Reporter(self.run.workdir, cfg.steps, self.step, cfg.log_every, enabled=self.run.progress)
        # XLA:CPU deadlocks (a rendezvous timeout, then abort) when consecutive calls
        # with collectives overlap across several host devices: measured here with 8
        # virtual devices on 2 cores, 300 tiny steps. Waiting for each call costs
        # nothing on CPU, where dispatch ahead only overlaps Python with compute.
        self.sync_each_call = jax.default_backend() == "cpu" and self.mesh.devices.size > 1
        prefetch = self._prefetcher() if self.step < cfg.steps else None
        try:
            with _sigint_flag() as interrupted, jax.set_mesh(self.mesh):
                while self.step < cfg.steps:
                    self._advance(prefetch)
                    if interrupted["set"]:
                        self._save()
                        raise Interrupted(
                            f"interrupted at step {self.step}; checkpoint saved in {self.store.path(self.step)}; rerun to resume"
                        )
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self._save()
                if self.reporter.pending:
                    self.last_metrics = self.reporter.flush(self.step)
                if self.saved_step != self.step:
                    self._save()
                self._check_finite()
        finally:
            if prefetch is not None:
                prefetch.close()
            self.reporter.close()
        return self._result()

    def _prefetcher(self) -> Prefetcher:
        # On CPU with one process, numpy batches go straight into the jitted call, which
        # places them by batch_sharding in C++, and the loader runs inline: jax.device_put
        # from Python cost about 0.3 ms a step with both cores busy computing, and the
        # thread hand-off about 0.06 ms, against a 4.4 ms VAE step (bench/loop_overhead.py).
        # Accelerators and multi-process runs need the transfer (or the assembly of the
        # global batch) done ahead, in the prefetch thread.
        host_batches = jax.default_backend() == "cpu" and jax.process_count() == 1
        leading = 1 if self.cfg.steps_per_call > 1 else 0

        def put(batch: Any) -> Any:
            if host_batches:
                return batch
            return sharding.put_global_batch(batch, self.batch_sharding, self.cfg.batch_size, leading=leading)

        return Prefetcher(self.loader, put, depth=0 if host_batches else 2)

    def _advance(self, prefetch: Prefetcher) -> None:
        """One jitted call (``steps_per_call`` steps), then logging and evaluation when due."""
        batch, self.data_state = next(prefetch)
        self.state, metrics = self.step_fn(self.state, batch, self.run_key)
        if self.sync_each_call:
            self.state.step.block_until_ready()
        self.step += self.cfg.steps_per_call
        if self.reporter.record(self.step, metrics):
            self.last_metrics = self.reporter.flush(self.step)
            self._check_finite()
        if self.evaluate and self.step % self.cfg.eval_every == 0:
            self._evaluate()

    def _evaluate(self) -> None:
        model = self.model_def.merge(weights_for_use(self.model_def, self.state))
        self.last_eval = {k: float(v) for k, v in self.evaluate(model, self.eval_data).items()}
        self.last_eval_step = self.step
        self.reporter.log_eval(self.step, self.last_eval)

    def _check_finite(self) -> None:
        bad = int(self.state.nonfinite_step)
        if bad >= 0:
            saved = self.saved_step
            where = f"step {saved} in {self.store.path(saved)}" if saved is not None else "none was saved"
            raise NonFiniteLoss(f"loss became non-finite at step {bad}; stopped. Last good checkpoint: {where}")

    def _save(self) -> None:
        self._check_finite()
        # Only a score measured on exactly these weights ranks them (best-by-metric retention).
        scored = self.last_eval if self.last_eval_step == self.step else {}
        meta = self.run.description() | {
            "step": self.step, "data": self.data_state, "eval": scored, "loss": self.last_metrics.get("loss"),
        }
        items = {"model": self.model_def.combine(self.state.params, self.state.rest), "train": train_item(self.state)}
        if self.state.ema is not None:
            items["ema"] = weights_for_use(self.model_def, self.state)
        self.store.save(self.step, items, meta)
        self.saved_step = self.step
        if jax.process_index() == 0:
            self.store.prune(self.cfg.keep, self.run.plugin.metric if self.evaluate else None)

    def _result(self) -> TrainResult:
        last_metrics = self.last_metrics
        if not last_metrics and self.saved_step is not None:
            last_metrics = {"loss": checkpoint.read_meta(self.store.path(self.saved_step)).get("loss") or math.nan}
        last_loss = self.reporter.last_loss
        return TrainResult(
            step=self.step,
            loss=float(last_loss if last_loss is not None else last_metrics.get("loss", math.nan)),
            params_digest=checkpoint.params_digest(self.model_def.combine(self.state.params, self.state.rest)),
            workdir=str(self.run.workdir),
            metrics=self.last_eval,
            seconds=time.perf_counter() - self.started,
            resumed_from=self.resumed_from,
        )


def fit(run: Any, objective: Objective, *, loader: ArrayLoader | None = None) -> TrainResult:
    """Run the shared loop for ``run`` (a ``zoo.training.Run``); ``Run.fit`` is the usual entry."""
    return Loop(run, objective, loader).fit()
