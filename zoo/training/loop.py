"""The loop itself: restore or initialise, compile the step once, run it, log, evaluate, save.

``Loop`` keeps the run's state in attributes and does one thing per method;
``fit(run, objective)`` (or ``run.fit(objective)``) builds one and runs it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from zoo import checkpoint, paths, pretrained, sharding, stopping
from zoo.data.loader import ArrayLoader, DeviceRows, Prefetcher, fits_on_devices
from zoo.errors import UsageError, ZooError
from zoo.matrices import MATRIX_INPUTS, MatrixMarkError
from zoo.reporting import MetricSums, Reporter
from zoo.training import freeze
from zoo.training.config import make_optimizer, random_stream
from zoo.training.lock import workdir_lock
from zoo.training.model_def import ModelDef, flatten
from zoo.training.objectives import Objective, objective_groups
from zoo.training.state import StepContext, TrainState, train_item, weights_for_use
from zoo.training.step import loop_call, make_train_step


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


class NonFiniteLoss(ZooError):
    """The loss or the weights became NaN or infinite; nothing after the last good checkpoint was kept."""


class Loop:
    """One run of the shared loop. ``run`` is a ``zoo.training.Run``."""

    def __init__(self, run: Any, objective: Objective, loader: ArrayLoader | None = None):
        self.started = time.perf_counter()
        self.mesh = run.check()  # may settle run.train (a resumed cosine run keeps its horizon): read it after
        self.run, self.cfg = run, run.train
        cfg = self.cfg
        groups = objective_groups(objective)
        try:
            self.model_def = ModelDef.create(run.build, self.mesh, [g.params for g in groups])
        except MatrixMarkError as e:
            raise ZooError(f"plugin {run.plugin.name!r}: {e}") from None
        if not any(self.model_def.groups):
            raise ZooError(f"plugin {run.plugin.name!r}: the objective's parameter filters select no parameters")
        self.freeze_line = self._freeze(groups) if cfg.freeze else None
        matrices = self.model_def.matrix_inputs
        if cfg.optimizer == "muon" and not self.model_def.trained & matrices.keys():
            raise UsageError(
                f"train.optimizer=muon: plugin {run.plugin.name!r} marks none of the parameters it trains as a matrix "
                f"(nnx.Param metadata {MATRIX_INPUTS}); use adamw"
            )
        self.ctx = StepContext(self.model_def, tuple(make_optimizer(cfg, g.learning_rate, matrices) for g in groups), cfg)
        self.state_shardings = self.ctx.state_shardings(self.mesh)
        self.replicated = sharding.replicated(self.mesh)
        self.store = checkpoint.StepDirectory(run.workdir / "checkpoints")
        # Every process draws whole global batches and keeps the rows its devices hold
        # (``_prefetcher``), whatever the mesh: indexing a few hundred rows of in-memory
        # arrays is cheap next to a step, and no mesh can mis-cut them.
        self.loader = loader or ArrayLoader(run.data("train"), cfg.batch_size, cfg.seed, steps_per_call=cfg.steps_per_call)
        self.resumed_from = self.store.latest()  # run.check() has matched its record with this run
        self.run_id = checkpoint.read_meta(self.store.path(self.resumed_from)).get("run_id") if self.resumed_from is not None else None
        self.run_id = self.run_id or uuid.uuid4().hex  # (pre-id checkpoints get one at their next save)
        self.state = self._restore(self.resumed_from) if self.resumed_from is not None else self._initialise()
        self.step = int(self.state.step)
        self.finite_step = self.step  # the last step whose weights are known finite (restored ones were checked at their save)
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

    def _freeze(self, groups: tuple) -> str:
        """Apply ``train.freeze`` to the model's groups (``zoo.training.freeze``); returns the line announcing it.

        Before the state exists: its groups, optimizer states and shardings are then made
        without the frozen parameters, which live in ``rest``.
        """
        spec, model_def = self.cfg.freeze, self.model_def
        frozen = freeze.frozen_paths(spec, model_def.trained, self.run.plugin)
        emptied = [g.name for g, trained in zip(groups, model_def.groups) if trained and trained <= frozen]
        if emptied:
            raise UsageError(f"train.freeze={spec} freezes every parameter of group {', '.join(emptied)}; it would not train")
        self.model_def = model_def.freeze(frozen)
        sizes = {p: math.prod(leaf.shape) for p, leaf in flatten(model_def.abstract).items()}

        def named(chosen: frozenset) -> dict[str, int]:
            return {paths.name(p): sizes[p] for p in chosen}

        return freeze.describe(spec, named(frozen), named(self.model_def.trained))

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
        return jax.jit(self.ctx.init_state, out_shardings=self.state_shardings)(variables)

    def _compile(self, objective: Objective) -> Any:
        k = self.cfg.steps_per_call
        # Made by a jitted call so that, with several processes, every process holds its part.
        self.run_key = jax.jit(lambda: random_stream(self.cfg.seed, "step"), out_shardings=self.replicated)()
        self.batch_sharding = sharding.batch_sharding(self.mesh, leading=1 if k > 1 else 0)
        device_rows = self._device_rows()
        self.rows = device_rows.rows if device_rows else {}
        gather = device_rows.gather if device_rows else lambda rows, batch: batch
        # Jitted on its own so that the trace which finds the metrics (for the sums) is the
        # one the loop's call reuses: the step is traced once, not twice.
        step = jax.jit(make_train_step(self.ctx, objective))
        metrics = self._trace_on_data(step)
        self.empty_sums = jax.jit(lambda: MetricSums.zeros(metrics), out_shardings=self.replicated)()
        self.sums = self.empty_sums
        return jax.jit(
            loop_call(step, k, gather),
            in_shardings=(self.state_shardings, self.replicated, self.replicated, self.batch_sharding, self.replicated),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=0,
        )

    def _trace_on_data(self, step: Any) -> dict:
        """The step's metrics (abstract), traced on the dataset's abstract batch before anything compiles.

        A model that does not fit the data (``--set image_shape=(1,1,1)`` against MNIST)
        fails here: one line naming the plugin, not a compiler traceback.
        """
        # Typed as the call will see it (the trace is reused only if the types match): a
        # batch gathered or placed on the devices carries the mesh, a numpy batch does not.
        batch = self.loader.batch_spec(None if self._numpy_batches() else self.replicated)
        try:
            with jax.set_mesh(self.mesh):
                return jax.eval_shape(step, self.state, batch, self.run_key)[1]
        except (TypeError, ValueError, IndexError) as e:
            shapes = ", ".join(f"{name} {tuple(x.shape)} {x.dtype}" for name, x in batch.items())
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise UsageError(
                f"plugin {self.run.plugin.name!r}: its model does not fit dataset {self.run.dataset!r} "
                f"(batch {shapes}): {reason}"
            ) from e

    def _numpy_batches(self) -> bool:
        """Whether batches go into the jitted call as numpy arrays (the host path on CPU, one process)."""
        return not self.loader.indices_only and jax.default_backend() == "cpu" and jax.process_count() == 1

    def _device_rows(self) -> DeviceRows | None:
        """The training data on the devices when it fits and one process runs; then the loader yields indices.

        The step gathers its batch from the rows: handing it a numpy batch cost about
        0.14 ms of CPU time a call at batch 128 on CPU, an index array 0.015 ms (see
        zoo.data.loader). Several processes keep the host path, each placing its own
        rows of the global batch.
        """
        if jax.process_count() > 1 or not fits_on_devices(self.loader.arrays, self.mesh.devices.flatten().tolist()):
            return None
        self.loader.indices_only = True
        return DeviceRows(self.loader.arrays, self.replicated)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        """Train until ``train.steps``; save at the end, on schedule and when every process agrees to stop."""
        cfg = self.cfg
        self._announce()
        self.reporter = Reporter(self.run.workdir, cfg.steps, self.step, cfg.log_every, enabled=self.run.progress)
        # Calls queued behind the running one. JAX dispatches asynchronously and nothing
        # else bounds the queue: with the char GPT's 2.5 s step on CPU the loop ran dozens
        # of calls ahead, so a Ctrl-C "after the current step" waited over a minute for them.
        # XLA:CPU deadlocks (a rendezvous timeout, then abort) when consecutive calls
        # with collectives overlap across several host devices (8 virtual devices on 2
        # cores, 300 tiny steps): there, none. On CPU dispatching ahead only overlaps
        # Python with compute, so waiting costs nothing.
        self.calls_ahead = 0 if jax.default_backend() == "cpu" and self.mesh.devices.size > 1 else 2
        self.in_flight: collections.deque = collections.deque()
        prefetch = self._prefetcher() if self.step < cfg.steps else None
        try:
            with stopping.catching() as requests, jax.set_mesh(self.mesh):
                self._stop_if_agreed(requests)  # a Ctrl-C during start-up stops here, before any step
                while self.step < cfg.steps:
                    self._advance(prefetch)
                    self._stop_if_agreed(requests)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self._save()
                if self.reporter.unlogged(self.step):
                    self._log()
                if self.saved_step != self.step:
                    self._save()
                self._check_finite()
                self._stop_if_agreed(requests)  # received during the final save: still said, exit 130/143
        finally:
            if prefetch is not None:
                prefetch.close()
            self.reporter.close()
        return self._result()

    def _announce(self) -> None:
        """Say (process 0, stderr) where a resumed run picks up, when ``steps`` asks for nothing more, and what is frozen."""
        if jax.process_index() != 0:
            return
        if self.resumed_from is not None and self.step > self.cfg.steps:
            print(f"zoo: {self.run.workdir} is already at step {self.step}, past steps={self.cfg.steps}: nothing to train", file=sys.stderr)
            return
        if not self.run.progress:
            return
        if self.resumed_from is not None:
            print(f"resuming {self.run.workdir} from step {self.step} (to {self.cfg.steps})", file=sys.stderr)
        if self.freeze_line:
            print(self.freeze_line, file=sys.stderr)

    def _stop_if_agreed(self, requests: stopping.StopRequests) -> None:
        """Every process reads every process's stop flags here; if any is set, all save this step and stop."""
        flags = stopping.agree(requests.flags)
        if not flags:
            return
        if self.saved_step != self.step and self.step > 0:
            self._save()
        where = f"checkpoint saved in {self.store.path(self.step)}" if self.step > 0 else "nothing trained, nothing saved"
        raise stopping.Interrupted(f"interrupted at step {self.step}; {where}; rerun to resume", requests.exit_code(flags))

    def _prefetcher(self) -> Prefetcher:
        # On CPU with one process, numpy batches go straight into the jitted call, which
        # places them by batch_sharding in C++, and the loader runs inline: jax.device_put
        # from Python cost about 0.3 ms a step with both cores busy computing, and the
        # thread hand-off about 0.06 ms, against a 4.4 ms VAE step (bench/loop_overhead.py).
        # Accelerators and multi-process runs need the transfer (or the assembly of the
        # global batch) done ahead, in the prefetch thread.
        if self.loader.indices_only:  # the data is on the devices: small index arrays go straight in
            return Prefetcher(self.loader, lambda indices: indices, depth=0)
        host_batches = self._numpy_batches()
        leading = 1 if self.cfg.steps_per_call > 1 else 0

        rows = sharding.process_rows(sharding.batch_sharding(self.mesh), self.cfg.batch_size)
        local = (slice(None),) * leading + (rows,)

        def put(batch: Any) -> Any:
            if host_batches:
                return batch
            mine = {name: x[local] for name, x in batch.items()}
            return sharding.put_global_batch(mine, self.batch_sharding, self.cfg.batch_size, leading=leading)

        return Prefetcher(self.loader, put, depth=0 if host_batches else 2)

    def _advance(self, prefetch: Prefetcher) -> None:
        """One jitted call (``steps_per_call`` steps), then logging and evaluation when due."""
        inputs, self.data_state = next(prefetch)
        self.state, self.sums = self.step_fn(self.state, self.sums, self.rows, inputs, self.run_key)
        self.in_flight.append(self.sums.count["loss"])  # an output the next call does not donate
        while len(self.in_flight) > self.calls_ahead:
            self.in_flight.popleft().block_until_ready()
        self.step += self.cfg.steps_per_call
        if self.reporter.due(self.step):
            self._log()
            self._check_finite()
        if self.evaluate and self.step % self.cfg.eval_every == 0:
            self._evaluate()

    def _log(self) -> None:
        """Write the metrics summed since the last log point and start the sums afresh."""
        self.last_metrics = self.reporter.flush(self.step, self.sums)
        self.sums = self.empty_sums

    def _evaluate(self) -> None:
        model = self.model_def.merge(weights_for_use(self.model_def, self.state))
        self.last_eval = {k: float(v) for k, v in self.evaluate(model, self.eval_data).items()}
        self.last_eval_step = self.step
        self.reporter.log_eval(self.step, self.last_eval)

    def _check_finite(self) -> None:
        """Stop if a step's loss was not finite, or the weights are not (a NaN gradient under a finite loss).

        Run at every log point and before every save, so no checkpoint holds a non-finite state.
        The weights are read once per step: a log point, a save and the end often fall on the same one.
        """
        bad = int(self.state.nonfinite_step)
        if bad < 0 and (self.finite_step == self.step or bool(_all_finite((self.state.params, self.state.rest)))):
            self.finite_step = self.step
            return
        saved = self.saved_step
        where = f"step {saved} in {self.store.path(saved)}" if saved is not None else "none was saved"
        what = f"loss became non-finite at step {bad}" if bad >= 0 else (
            f"weights became non-finite between steps {self.finite_step} and {self.step} (the loss stayed finite)"
        )
        raise NonFiniteLoss(f"{what}; stopped. Last good checkpoint: {where}")

    def _save(self) -> None:
        self._check_finite()
        # Only a score measured on exactly these weights ranks them (best-by-metric retention).
        scored = self.last_eval if self.last_eval_step == self.step else {}
        meta = self.run.description() | {
            "run_id": self.run_id, "step": self.step, "data": self.data_state, "eval": scored,
            "loss": self.last_metrics.get("loss"),
        }
        items = {"model": self.model_def.combine(self.state.params, self.state.rest), "train": train_item(self.state)}
        if self.state.ema is not None:
            items["ema"] = weights_for_use(self.model_def, self.state)
        with stopping.protected():
            self.store.save(self.step, items, meta)
        self.saved_step = self.step
        self.run.write_run_file(self.run_id, self.step, self.resumed_from)  # written with the first checkpoint, not before
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


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite: one pass, a replicated scalar."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def fit(run: Any, objective: Objective, *, loader: ArrayLoader | None = None) -> TrainResult:
    """Run the shared loop for ``run`` (a ``zoo.training.Run``); ``Run.fit`` is the usual entry.

    ``loader`` yields whole global batches (every process the same); each process keeps its rows.
    """
    with workdir_lock(run.workdir):
        return Loop(run, objective, loader).fit()
