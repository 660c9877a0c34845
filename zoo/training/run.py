"""``Run``: one training run as the core hands it to a plugin, and its identity in ``run.json``.

A workdir belongs to one run: ``run.json`` records what it trains and how, and a
later command in the same workdir resumes only if it describes the same run
(fields in ``RESUMABLE_CHANGES`` may differ).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

from zoo import checkpoint, pretrained, sharding
from zoo.config import config_to_dict
from zoo.data.loader import ArrayLoader
from zoo.download import atomic_write_bytes
from zoo.errors import UsageError, ZooError
from zoo.plugin import Plugin
from zoo.training import freeze
from zoo.training.config import TrainConfig, random_stream
from zoo.training.loop import TrainResult, fit
from zoo.training.objectives import Objective

RUN_FILE = "run.json"

RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep", "eval_every", "log_every", "steps_per_call"})
"""Training fields a resumed run may change: they leave the maths of each step as it was
(``steps_per_call`` fuses steps bitwise-identically, so it may change where it divides the
resumed step; ``steps`` extends the run)."""


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
    _checked_mesh: jax.sharding.Mesh | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def data(self, split: str = "train") -> Mapping[str, np.ndarray]:
        """The split's arrays: the overrides if given, else the cached dataset."""
        given = self.train_data if split == "train" else self.eval_data
        if given is not None:
            return given
        from zoo import data

        return data.load(self.dataset, split)

    def build(self) -> nnx.Module:
        """The model, initialised from the run's ``init`` random stream."""
        return self.plugin.resolve("build")(self.config, nnx.Rngs(random_stream(self.train.seed, "init")))

    def description(self) -> dict[str, Any]:
        """What identifies this run in ``run.json``; a resume must match it."""
        return {
            "plugin": self.plugin.name,
            "variant": self.variant,
            "config": config_to_dict(self.config),
            "dataset": self.dataset,
            "init_from": None if self.init_from is None else str(self.init_from),  # the weights it started from
            "train": config_to_dict(self.train) | {"schedule_steps": self.train.horizon if self.train.schedule == "cosine" else None},
        }

    def fit(self, objective: Objective, *, loader: ArrayLoader | None = None) -> TrainResult:
        """Train with ``objective`` until ``train.steps``; resumes from the workdir's last checkpoint."""
        return fit(self, objective, loader=loader)

    def check(self) -> jax.sharding.Mesh:
        """Refuse, before any model is built, what can be known wrong now; returns the run's mesh.

        ``zoo.train`` calls it before handing the run to the plugin, so these are the
        core's usage errors, not the plugin's; the loop calls it again for direct callers,
        which then costs nothing: the result is kept (a ``dataclasses.replace`` copy checks anew).
        """
        if self._checked_mesh is not None:
            return self._checked_mesh
        mesh = sharding.make_mesh(self.mesh_shape)
        cfg = self.train
        micro = "micro-batch size" if cfg.grad_accum > 1 else "batch size"
        sharding.check_batch_size(cfg.batch_size // cfg.grad_accum, mesh, micro)
        self.check_resumable()
        if self.init_from or self.train.freeze:
            self._check_against_model()
        self._checked_mesh = mesh
        return mesh

    def _check_against_model(self) -> None:
        """``--init-from`` and ``train.freeze`` against the model's paths and shapes, built abstractly (no memory).

        ``train.freeze`` is checked here over every ``nnx.Param``, so a typo is the core's usage
        error, not one raised inside the plugin's train; the loop applies it to the trained groups.
        """
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(self.build)
        if self.init_from:
            pretrained.check_init_from(self.init_from, self.plugin, nnx.to_pure_dict(nnx.state(model)))
        if self.train.freeze:
            params = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
            freeze.frozen_paths(self.train.freeze, params, self.plugin)

    def check_resumable(self) -> None:
        """Refuse to resume a workdir whose newest checkpoint belongs to a different run.

        The checkpoint's own record (its metadata) is the authority, whatever ``run.json``
        says; ``run.json``'s run id, when present, must match it (a step copied in from
        another run is refused). A workdir without a checkpoint has nothing to resume, and
        a ``run.json`` left there by a failed start is replaced at the first save.
        """
        store = checkpoint.StepDirectory(self.workdir / "checkpoints")
        latest = store.latest()
        if latest is None:
            return
        record = checkpoint_record(store.path(latest), latest)
        recorded_id, run_file_id = record.get("run_id"), read_run_file(self.workdir).get("run_id")
        if run_file_id is not None and recorded_id != run_file_id:
            raise ZooError(
                f"{store.path(latest)} belongs to another run (run id {recorded_id}, {RUN_FILE} says {run_file_id}); "
                "move it out of checkpoints/ or use another --workdir"
            )
        self._adopt_horizon(record)
        differences = describe_differences(record, self.description())
        if differences:
            raise UsageError(
                f"{self.workdir} holds a different run ({'; '.join(differences)}); use another --workdir to start afresh"
            )

    def _adopt_horizon(self, record: dict) -> None:
        """A resumed cosine run keeps the schedule it started with; extending past its end must be asked for."""
        if self.train.schedule != "cosine" or record["train"].get("schedule") != "cosine":
            return
        horizon = record["train"].get("schedule_steps") or record["train"].get("steps")
        record["train"].setdefault("schedule_steps", horizon)  # a checkpoint from before schedule_steps was recorded
        if self.train.schedule_steps is None and self.train.steps > horizon:
            raise UsageError(
                f"{self.workdir}: this run's cosine schedule ends at step {horizon}; --steps {self.train.steps} would "
                f"re-shape its learning rates rather than resume it. To train on at the final learning rate, add "
                f"--set train.schedule_steps={horizon}; for a longer schedule, use a new --workdir"
            )
        if self.train.schedule_steps is None:
            self.train = dataclasses.replace(self.train, schedule_steps=horizon)

    def write_run_file(self, run_id: str, step: int, resumed_from: int | None) -> None:
        """``run.json``: what the run is now (its latest command's description), its id, and where it stands."""
        if jax.process_index() == 0:
            record = self.description() | {"run_id": run_id, "step": step, "resumed_from": resumed_from}
            atomic_write_bytes(self.workdir / RUN_FILE, (json.dumps(record, indent=2) + "\n").encode())


def read_run_file(workdir: Path) -> dict[str, Any]:
    """``run.json`` as a dict ({} if absent); one-line ZooError if it is not a run's description."""
    path = Path(workdir) / RUN_FILE
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"{path} is not readable JSON ({e}); move the workdir aside or remove the file") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k, {}), dict) for k in ("train", "config")):
        raise ZooError(f"{path} is not a run description (a JSON object with train and config objects); remove it")
    return record


def checkpoint_record(folder: Path, step: int) -> dict[str, Any]:
    """A verified step's metadata, checked to be a whole record of the run that wrote it."""
    record = checkpoint.read_meta(folder, require=("plugin", "variant", "config", "dataset", "train", "step", "data"))
    data = record["data"]
    problems = []
    if not isinstance(record["train"], dict) or not isinstance(record["config"], dict):
        problems.append("train and config are not objects")
    if not (isinstance(data, dict) and all(isinstance(data.get(k), int) and data[k] >= 0 for k in ("epoch", "index"))):
        problems.append(f"data position {data!r} is not {{epoch, index}}")
    if record["step"] != step:
        problems.append(f"it records step {record['step']!r}, not {step}")
    if problems:
        raise ZooError(f"{folder}: the checkpoint's record of its run is damaged ({'; '.join(problems)}); remove this step")
    return record


def describe_differences(saved: dict, now: dict) -> list[str]:
    """``"train.seed: workdir 0, now 1"`` for each field of ``now`` that differs, ignoring ``RESUMABLE_CHANGES``."""
    differences = []
    for key in now:
        if key in ("train", "config"):
            skip = RESUMABLE_CHANGES if key == "train" else frozenset()
            old, new = saved.get(key, {}), now[key]
            for field in sorted((set(new) | set(old)) - skip):
                if new.get(field) != old.get(field):
                    differences.append(f"{key}.{field}: workdir {old.get(field)!r}, now {new.get(field)!r}")
        elif now[key] != saved.get(key):
            differences.append(f"{key}: workdir {saved.get(key)!r}, now {now[key]!r}")
    return differences
