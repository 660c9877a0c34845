"""How to train (``TrainConfig``), separate from what to train, and the optimizer it describes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

import jax
import optax
from optax.contrib import MuonDimensionNumbers

from zoo import paths
from zoo.attacks import Attack
from zoo.errors import UsageError
from zoo.training import freeze


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train, separate from what to train (the model config).

    Set from the CLI with ``--steps``, ``--batch-size``, ``--seed``,
    ``--checkpoint-every`` and ``--set train.FIELD=VALUE``.
    """

    steps: int = 1000
    batch_size: int = 128
    seed: int = 0
    optimizer: Literal["adamw", "adam", "sgd", "muon"] = "adamw"  # muon: see make_optimizer
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # adamw's decoupled decay; 0 makes it Adam
    b1: float = 0.9  # Adam's beta1, or SGD's momentum
    b2: float = 0.999
    schedule: Literal["constant", "cosine"] = "constant"
    schedule_steps: int | None = None  # the cosine schedule's horizon (None: steps); recorded with the run, so
    # extending --steps past it continues at the final learning rate instead of silently re-shaping the schedule
    warmup_steps: int = 0  # linear warmup from 0, then the schedule
    final_lr_fraction: float = 0.0  # cosine ends at learning_rate * this
    grad_clip: float | None = None  # clip the global gradient norm to this
    grad_accum: int = 1  # micro-batches per batch: the same mean gradient for less memory (a stochastic
    # loss draws its randomness per micro-batch, so it differs by sampling, not in expectation)
    ema_decay: float | None = None  # keep an exponential moving average of the parameters
    freeze: str | None = None  # parameters that do not train: "backbone" (all but the plugin's replaceable head)
    # or comma-separated path prefixes / globs ("blocks/*,tokens"); see zoo.training.freeze
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: compute in bf16, fp32 master weights
    steps_per_call: int = 1  # steps fused into one jitted call (lax.scan)
    checkpoint_every: int | None = None  # None: only at the end (and on Ctrl-C)
    keep: int = 3  # newest checkpoints kept (plus the best by the plugin's metric)
    eval_every: int | None = None  # run the plugin's evaluate every N steps
    log_every: int = 100
    # Adversarial training (Madry et al., 2018): the loss sees attacked inputs instead of clean ones.
    # None defaults keep older workdirs resumable; the attack's defaults fill them in.
    adversarial: Literal["fgsm", "pgd"] | None = None
    adversarial_eps: float | None = None  # L-inf radius, a fraction of the inputs' valid range [0.1]
    adversarial_steps: int | None = None  # PGD iterations per training step [7]
    adversarial_step_size: float | None = None  # [2.5 * eps / steps]

    def __post_init__(self):
        positive = ("steps", "batch_size", "grad_accum", "steps_per_call", "log_every", "keep")
        for name in positive:  # keep >= 1: the checkpoint just saved is always kept
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:  # numpy and JAX both take it; -1 or 2**70 would fail deep inside
            raise UsageError(f"seed must be in [0, 2**32); got {self.seed}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UsageError(f"learning_rate must be positive and finite; got {self.learning_rate}")
        for name in ("weight_decay", "warmup_steps", "final_lr_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be finite and at least 0; got {value}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise UsageError(f"grad_clip must be positive and finite (a negative one would ascend); got {self.grad_clip}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise UsageError(f"schedule_steps must be at least 1; got {self.schedule_steps}")
        if self.batch_size % self.grad_accum:
            raise UsageError(f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}")
        k = self.steps_per_call
        for name in ("steps", "checkpoint_every", "eval_every"):
            value = getattr(self, name)
            if value is not None and (value < 1 or value % k):
                raise UsageError(f"{name} ({value}) must be a positive multiple of steps_per_call ({k})")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UsageError(f"ema_decay must be in (0, 1); got {self.ema_decay}")
        if self.freeze is not None:
            freeze.patterns(self.freeze)  # an empty pattern fails here; the model's paths are checked by Run.check
        self.adversarial_attack  # noqa: B018  an invalid eps or step count fails here, before anything compiles

    @property
    def adversarial_attack(self) -> Attack | None:
        """The attack adversarial training runs on every batch, or None."""
        if self.adversarial is None:
            return None
        given = {"eps": self.adversarial_eps, "steps": self.adversarial_steps, "step_size": self.adversarial_step_size}
        return Attack(self.adversarial, **({"eps": 0.1, "steps": 7} | {k: v for k, v in given.items() if v is not None}))

    @property
    def horizon(self) -> int:
        """The step at which the cosine schedule reaches its final learning rate."""
        return self.schedule_steps if self.schedule_steps is not None else self.steps


STREAMS = {"init": 0, "step": 1}
"""Named random streams split from the seed: parameter initialisation and the training steps never
share a key. (The data order is numpy's ``default_rng((seed, epoch))``, another generator altogether.)"""


def random_stream(seed: int, name: str) -> jax.Array:
    """The key of stream ``name`` for ``seed`` (traceable: call it inside jit to place it)."""
    return jax.random.fold_in(jax.random.key(seed), STREAMS[name])


MUON_RMS = 0.2
"""Muon's updates are scaled to AdamW's typical RMS (Liu et al., 2025, "Muon is scalable"), so a
learning rate and weight decay tuned for AdamW carry over to ``train.optimizer=muon``."""


def make_optimizer(
    cfg: TrainConfig, learning_rate: float | None = None, matrices: Mapping[tuple, tuple[int, ...]] | None = None
) -> optax.GradientTransformation:
    """The optax transformation ``cfg`` describes: clip -> optimizer with the schedule.

    ``matrices`` (``ModelDef.matrix_inputs``) maps the path of each parameter the model
    marks as a matrix to its input axes: with ``optimizer="muon"`` those train with Muon,
    every other parameter (embeddings, norms, biases) with AdamW.
    """
    peak = learning_rate if learning_rate is not None else cfg.learning_rate
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, peak, cfg.warmup_steps, max(cfg.horizon, cfg.warmup_steps + 1), peak * cfg.final_lr_fraction
        )
    elif cfg.warmup_steps:
        lr = optax.join_schedules([optax.linear_schedule(0.0, peak, cfg.warmup_steps), optax.constant_schedule(peak)], [cfg.warmup_steps])
    else:
        lr = peak
    if cfg.optimizer == "muon":
        opt = _muon(cfg, lr, matrices or {})
    elif cfg.optimizer == "adamw" and cfg.weight_decay:
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.optimizer in ("adam", "adamw"):  # adamw without decay is Adam, minus a pass adding 0 * params
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2)
    else:
        opt = optax.sgd(lr, momentum=cfg.b1 or None)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt


def _muon(cfg: TrainConfig, lr: optax.ScalarOrSchedule, matrices: Mapping[tuple, tuple[int, ...]]) -> optax.GradientTransformation:
    """Muon (Jordan et al., 2024) on ``matrices``, AdamW (``b1``, ``b2``) on the rest; one rate and decay for both.

    Muon replaces each matrix's momentum (Nesterov, 0.95) by the nearest semi-orthogonal
    matrix (five Newton-Schulz steps), with the input axes as its rows and the others as
    its columns. optax gives the AdamW half Nesterov momentum too (NAdamW).
    """

    def dimension_numbers(params: Mapping) -> Mapping:
        def spec(path: tuple, leaf: jax.Array) -> MuonDimensionNumbers | None:
            inputs = matrices.get(paths.keys(path))
            if inputs is None:  # not a matrix: AdamW's
                return None
            return MuonDimensionNumbers(inputs, tuple(a for a in range(leaf.ndim) if a not in inputs))

        return jax.tree_util.tree_map_with_path(spec, params)

    return optax.contrib.muon(
        lr, weight_decay=cfg.weight_decay, adam_b1=cfg.b1, adam_b2=cfg.b2, adam_weight_decay=cfg.weight_decay,
        consistent_rms=MUON_RMS, muon_weight_dimension_numbers=dimension_numbers,
    )  # fmt: skip
