"""Every registered plugin passes the conformance kit (contract, light import, variants, train/load/sample/predict),
and every registered dataset the dataset contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import zoo.data
from zoo import registry, testing

PLUGINS = sorted(registry.plugins())


def test_registry_has_first_party_plugins():
    assert "vae" in PLUGINS


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_conformance(name, tmp_path):
    report = testing.check_plugin(name, tmp_path / name)
    assert len(report["params_digest"]) == 64


# --------------------------------------------------------------------------- datasets

DATASETS = sorted(r.name for r in zoo.data.records())

LIGHT_PROBE = """
import json, sys, zoo.data
zoo.data.get(sys.argv[1]); zoo.data.is_cached(sys.argv[1])
print(json.dumps(sorted(m for m in ("numpy", "jax") if m in sys.modules)))
"""


def test_registry_has_builtin_datasets():
    assert "mnist" in DATASETS


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_conformance(name):
    """Discovered healthy and light; synthetic is deterministic, fits the declared shape and classes, and matches load."""
    record = {r.name: r for r in zoo.data.records()}[name]
    assert record.ok, record.error
    dataset = record.dataset
    out = subprocess.run([sys.executable, "-c", LIGHT_PROBE, name], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == [], f"declaring or cache-checking {name!r} imports numpy or jax"
    fake, again = zoo.data.synthetic(name, 5, seed=1), zoo.data.synthetic(name, 5, seed=1)
    assert all(np.array_equal(fake[k], again[k]) for k in fake), "synthetic(n, seed) is not deterministic"
    if dataset.image_shape:
        assert fake["image"].shape == (5, *dataset.image_shape)
    if dataset.classes and "label" in fake:
        assert 0 <= fake["label"].min() and fake["label"].max() < len(dataset.classes)
    if zoo.data.is_cached(name):  # never downloads; compares keys, dtypes and per-example shapes when it can
        real = zoo.data.load(name, dataset.splits[-1])
        assert {k: (v.dtype, v.shape[1:]) for k, v in real.items()} == {k: (v.dtype, v.shape[1:]) for k, v in fake.items()}
