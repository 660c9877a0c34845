"""zoo.reporting.MetricSums: step metrics summed on the device, means fetched at log points.

References are numpy means in float64 over the same per-step values.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from zoo.reporting import MetricSums

SCALAR = jax.ShapeDtypeStruct((), jnp.float32)


def summed(values: dict[str, np.ndarray]) -> MetricSums:
    """Adds step i's ``{name: values[name][i]}`` one jitted call per step, as the loop does."""
    add = jax.jit(lambda sums, metrics: sums.add(metrics))
    sums = MetricSums.zeros(dict.fromkeys(values, SCALAR))
    for i in range(len(next(iter(values.values())))):
        sums = add(sums, {name: v[i] for name, v in values.items()})
    return jax.device_get(sums)


def test_thousands_of_steps_keep_float32_precision():
    values = np.random.default_rng(0).normal(100.0, 5.0, 4000).astype(np.float32)
    sums = summed({"loss": values})
    assert sums.means()["loss"] == np.mean(values, dtype=np.float64)  # compensated: exact here, to the last bit
    assert float(sums.last["loss"]) == values[-1] and int(sums.count["loss"]) == 4000


def test_nan_values_are_skipped_and_a_metric_without_values_is_nan():
    loss = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    half = np.array([np.nan, 6.0, np.nan, 10.0], np.float32)  # an alternating group's metric
    never = np.full(4, np.nan, np.float32)
    means = summed({"loss": loss, "disc/loss": half, "gen/loss": never}).means()
    assert means["loss"] == 2.5 and means["disc/loss"] == 8.0 and math.isnan(means["gen/loss"])


def test_an_infinite_value_makes_the_mean_infinite_not_nan():
    means = summed({"loss": np.array([1.0, np.inf, 2.0], np.float32)}).means()
    assert means["loss"] == math.inf
