"""What a training run tells people: a progress line, ``metrics.jsonl`` and TensorBoard events.

Step metrics never leave the device one by one: the jitted step adds them to
running sums (``MetricSums``) that it carries from call to call, and the host
fetches those sums once per log interval. Syncing every step would stall the
pipeline, and keeping every step's arrays until the interval ends cost memory
and time growing with ``log_every`` (stacking 3750 steps' scalars with a jitted
function compiled anew for each count took about 10 s). Only process 0 writes;
the others keep quiet.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from zoo.download import atomic_write_bytes

log = logging.getLogger(__name__)


@struct.dataclass
class MetricSums:
    """Running sums of step metrics since the last log point, carried through the jitted step.

    Every field maps a metric name to a device array: ``total`` float32 (the sum of
    the step values that are not NaN: alternating objectives report NaN for the
    groups a step skips), ``compensation`` float32 (Kahan's lost low-order bits, so
    a mean over thousands of steps keeps float32 precision), ``count`` int32 (the
    values summed) and ``last`` (the latest step's value, its shape).
    """

    total: dict[str, jax.Array]
    compensation: dict[str, jax.Array]
    count: dict[str, jax.Array]
    last: dict[str, jax.Array]

    @classmethod
    def zeros(cls, metrics: Mapping[str, Any]) -> MetricSums:
        """Empty sums for step metrics shaped like ``metrics`` (arrays or ``ShapeDtypeStruct``)."""
        f32 = {name: jnp.zeros((), jnp.float32) for name in metrics}
        return cls(
            total=f32,
            compensation=dict(f32),
            count={name: jnp.zeros((), jnp.int32) for name in metrics},
            last={name: jnp.zeros(m.shape, jnp.float32) for name, m in metrics.items()},
        )

    def add(self, metrics: Mapping[str, jax.Array]) -> MetricSums:
        """These sums plus one step's ``metrics`` (traced inside the step; same names every step)."""
        total, compensation, count, last = {}, {}, {}, {}
        for name, value in metrics.items():
            value = jnp.asarray(value, jnp.float32)
            present = ~jnp.isnan(value)
            y = jnp.sum(jnp.where(present, value, 0.0)) - self.compensation[name]
            t = self.total[name] + y
            # Kahan: (t - total) - y is what the addition lost; an infinite sum has nothing to recover.
            compensation[name] = jnp.where(jnp.isfinite(t), (t - self.total[name]) - y, 0.0)
            total[name] = t
            count[name] = self.count[name] + jnp.sum(present, dtype=jnp.int32)
            last[name] = value
        return MetricSums(total=total, compensation=compensation, count=count, last=last)

    def means(self) -> dict[str, float]:
        """Host side, on fetched sums: each metric's mean over the interval (NaN if it had no value)."""
        return {
            name: (float(self.total[name]) - float(self.compensation[name])) / int(self.count[name])
            if int(self.count[name]) else math.nan
            for name in sorted(self.total)
        }


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Reporter:
    """Every ``log_every`` steps, writes the means of the step metrics everywhere they go.

    The loop carries a ``MetricSums`` through its jitted step, asks ``due(step)``
    after each call and, when due, hands the sums to ``flush`` and starts again
    from ``MetricSums.zeros``.

    Args:
      workdir: where ``metrics.jsonl`` and ``tb/`` go.
      total, start: the run's last step and the step it starts (or resumes) at.
      log_every: steps between writes.
      enabled: show progress on ``stream``; files are written either way (process 0).
    """

    def __init__(self, workdir: Path, total: int, start: int, log_every: int, enabled: bool = True, stream: TextIO | None = None):
        self.total, self.start, self.log_every = total, start, log_every
        self.writer = jax.process_index() == 0
        self.stream = stream or sys.stderr
        self.show = enabled and self.writer
        self.tty = self.stream.isatty()
        self.last_loss: float | None = None
        self._last_flush_step = start
        self._t0 = self._t_flush = time.perf_counter()
        self._jsonl = None
        self._tb = None
        if self.writer:
            workdir.mkdir(parents=True, exist_ok=True)
            self._forget_after(workdir / "metrics.jsonl", start)
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._tb = self._tensorboard(workdir / "tb")

    @staticmethod
    def _forget_after(path: Path, step: int) -> None:
        """Drop records past ``step``: a killed run logged steps its resume will log again."""
        if not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
        if len(kept) != len(lines):
            atomic_write_bytes(path, "".join(kept).encode())

    @staticmethod
    def _tensorboard(logdir: Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # optional at run time: the JSONL has the same numbers
            log.warning("tensorboardX is not installed; no TensorBoard events")
            return None
        return SummaryWriter(str(logdir))

    def due(self, step: int) -> bool:
        """Whether the metrics up to ``step`` are to be written now."""
        return step - self._last_flush_step >= self.log_every or step >= self.total

    def unlogged(self, step: int) -> bool:
        """Whether steps up to ``step`` ran since the last write."""
        return step > self._last_flush_step

    def flush(self, step: int, sums: MetricSums) -> dict[str, float]:
        """Fetch ``sums`` (the steps since the last write; one transfer), write and show their means."""
        fetched = jax.device_get(sums)
        means = fetched.means()
        last = fetched.last.get("loss")
        self.last_loss = None if last is None else float(np.ravel(last)[-1])
        now = time.perf_counter()
        rate = (step - self._last_flush_step) / max(now - self._t_flush, 1e-9)
        self._last_flush_step, self._t_flush = step, now
        self._write({"step": step, **means, "steps_per_s": rate}, step)
        if self.show:
            eta = (self.total - step) / rate if rate > 0 else math.inf
            self._show(step, means.get("loss", math.nan), rate, eta)
        return means

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}}, step)
        if self.show:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self._print(f"step {step}: eval {shown}")

    def _write(self, record: dict[str, Any], step: int) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and math.isfinite(value):
                    self._tb.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def _show(self, step: int, loss: float, rate: float, eta: float) -> None:
        width = 24
        done = int(width * step / max(self.total, 1))
        line = (
            f"[{'#' * done}{'.' * (width - done)}] step {step}/{self.total}  loss {loss:.4f}  "
            f"{rate:.1f} steps/s  eta {_format_seconds(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step >= self.total else ""))
            self.stream.flush()
        else:
            self._print(line)

    def _print(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
