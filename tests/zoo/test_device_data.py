"""Speed without a changed result: data kept on the devices, metrics summed there, any log interval.

The loop keeps a dataset that fits on the devices and gathers each batch by
index inside the jitted step; otherwise it feeds numpy batches from the host.
Both must train bitwise alike (exact resume and ``params_digest`` rest on it),
with one step per call or several, and the log interval must change nothing but
how often the means are written. Runs use the conftest's 8 CPU devices and 64
synthetic images, a few steps each.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import zoo
import zoo.data
from zoo.data import loader
from zoo.training import loop

TINY = dict(steps=8, batch_size=16, seed=0, progress=False)


@pytest.fixture(scope="module")
def data():
    return zoo.data.synthetic("mnist", 64)


def train(workdir, data, **options):
    return zoo.train("vae", workdir=workdir, train_data=data, **(TINY | options))


def logged(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def paths_taken(monkeypatch):
    """Records, per run, whether the loop kept the data on the devices."""
    taken = []
    real = loop.Loop._device_rows

    def spy(self):
        rows = real(self)
        taken.append(rows is not None)
        return rows

    monkeypatch.setattr(loop.Loop, "_device_rows", spy)
    return taken


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_device_and_host_paths_train_bitwise_alike(tmp_path, data, monkeypatch, paths_taken, steps_per_call):
    on_device = train(tmp_path / "device", data, steps_per_call=steps_per_call, log_every=4)
    monkeypatch.setattr(loader, "DEVICE_DATA_BUDGET", 0)  # nothing fits: numpy batches from the host
    on_host = train(tmp_path / "host", data, steps_per_call=steps_per_call, log_every=4)
    assert paths_taken == [True, False]
    assert on_device.params_digest == on_host.params_digest
    assert on_device.loss == on_host.loss
    assert logged(tmp_path / "device") == [{**r, "steps_per_s": d["steps_per_s"]} for r, d in zip(logged(tmp_path / "host"), logged(tmp_path / "device"))]


def test_log_every_changes_nothing_but_how_often_means_are_written(tmp_path, data):
    every_step = train(tmp_path / "every", data, log_every=1)
    every_four = train(tmp_path / "four", data, log_every=4)
    assert every_step.params_digest == every_four.params_digest and every_step.loss == every_four.loss
    single, grouped = logged(tmp_path / "every"), logged(tmp_path / "four")
    assert [r["step"] for r in single] == list(range(1, 9)) and [r["step"] for r in grouped] == [4, 8]
    for record in grouped:  # each is the mean of the four per-step values it covers
        covered = [r for r in single if record["step"] - 4 < r["step"] <= record["step"]]
        for name in ("loss", "recon", "kl"):
            assert record[name] == pytest.approx(np.mean([r[name] for r in covered], dtype=np.float64), rel=1e-6)
    assert every_step.loss == single[-1]["loss"]  # the result's loss is the last step's, not a mean
