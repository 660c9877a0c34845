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
from flax import nnx

from zoo import pretrained, sharding
from zoo.config import config_to_dict
from zoo.data.loader import ArrayLoader
from zoo.download import atomic_write_bytes
from zoo.errors import UsageError, ZooError
from zoo.plugin import Plugin
from zoo.training.config import TrainConfig
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

    def check(self) -> jax.sharding.Mesh:
        """Refuse, before any model is built, what can be known wrong now; returns the run's mesh.

        ``zoo.train`` calls it before handing the run to the plugin, so these are the
        core's usage errors, not the plugin's; the loop calls it again for direct callers.
        """
        mesh = sharding.make_mesh(self.mesh_shape)
        cfg = self.train
        micro = "micro-batch size" if cfg.grad_accum > 1 else "batch size"
        sharding.check_batch_size(cfg.batch_size // cfg.grad_accum, mesh, micro)
        self.check_resumable()
        if self.init_from:
            with nnx.use_eager_sharding(False):
                abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(self.build)))
            pretrained.check_init_from(self.init_from, self.plugin, abstract)
        return mesh

    def check_resumable(self) -> None:
        """Refuse to resume a workdir that belongs to a different run."""
        path = self.workdir / RUN_FILE
        if not path.exists():
            return
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise ZooError(f"{path} is not valid JSON; move the workdir aside or remove it") from None
        differences = describe_differences(saved, self.description())
        if differences:
            raise UsageError(
                f"{self.workdir} holds a different run ({'; '.join(differences)}); use another --workdir to start afresh"
            )

    def write_run_file(self) -> None:
        if jax.process_index() == 0:
            atomic_write_bytes(self.workdir / RUN_FILE, (json.dumps(self.description(), indent=2) + "\n").encode())


def describe_differences(saved: dict, now: dict) -> list[str]:
    """``"train.seed: workdir 0, now 1"`` for each field that differs, ignoring ``RESUMABLE_CHANGES``."""
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
    return differences
