"""Conformance kit: what a plugin must do to be a good citizen of the zoo.

Plugin authors call it from their own tests::

    from zoo.testing import check_plugin

    def test_my_plugin(tmp_path):
        check_plugin("myplugin", tmp_path)

Each check raises ``AssertionError`` saying what is wrong. Data is synthetic
(``zoo.data.synthetic``), so the checks run offline in seconds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from zoo import registry
from zoo.plugin import Plugin

_LIGHT_IMPORT_PROBE = """
import json, sys
from zoo import registry
registry.get_plugin(sys.argv[1])
print(json.dumps(sorted(m for m in ("jax", "flax", "optax", "orbax") if m in sys.modules)))
"""


def check_contract(plugin: Plugin) -> None:
    """Every field well-formed and every reference importable."""
    assert not plugin.problems(), f"plugin {plugin.name!r}: {plugin.problems()}"
    for field in ("config", "build", "train", "sample", "evaluate"):
        if getattr(plugin, field) is not None:
            assert callable(plugin.resolve(field)), f"plugin {plugin.name!r}: {field} is not callable"


def check_light_import(name: str) -> None:
    """Discovering the plugin must not import jax, flax, optax or orbax (``zoo list`` stays fast)."""
    out = subprocess.run(
        [sys.executable, "-c", _LIGHT_IMPORT_PROBE, name], capture_output=True, text=True, check=True
    ).stdout
    heavy = json.loads(out.strip().splitlines()[-1])
    assert not heavy, f"discovering plugin {name!r} imported {heavy}; reference them as 'module:attr' instead"


def check_variants(plugin: Plugin) -> None:
    """Every variant's config is valid and its model builds (abstractly: no memory, no compute)."""
    from flax import nnx

    from zoo import sharding
    from zoo.config import make_config
    from zoo.training import ModelDef

    mesh = sharding.make_mesh()
    for variant in plugin.variants:
        config = make_config(plugin, variant)
        model_def = ModelDef.create(lambda c=config: plugin.resolve("build")(c, nnx.Rngs(0)), mesh, [nnx.Param])
        assert model_def.groups[0], f"{plugin.name}/{variant} has no nnx.Param"


def _finite_metrics(metrics: Any, what: str) -> None:
    assert isinstance(metrics, dict) and metrics, f"{what} must return a non-empty dict of metrics"
    for key, value in metrics.items():
        assert isinstance(value, float) and math.isfinite(value), f"{what}: metric {key!r} = {value!r} is not finite"


def check_train_load_sample(plugin: Plugin, workdir: Path, *, steps: int = 2, batch_size: int = 8) -> dict[str, Any]:
    """Train a few steps on synthetic data, reload the workdir exactly, sample and evaluate."""
    from zoo import api, checkpoint, data, pretrained

    assert plugin.datasets, f"plugin {plugin.name!r} declares no dataset"
    dataset = plugin.datasets[0]
    train_data, eval_data = data.synthetic(dataset, 64, seed=0), data.synthetic(dataset, 32, seed=1)
    result = api.train(
        plugin.name, dataset=dataset, workdir=workdir, steps=steps, batch_size=batch_size,
        train_data=train_data, eval_data=eval_data, progress=False,
    )
    assert result.step == steps, f"trained to step {result.step}, asked for {steps}"
    assert math.isfinite(result.loss), f"loss after {steps} steps is {result.loss}"

    from flax import nnx

    loaded = pretrained.load(workdir)
    digest = checkpoint.params_digest(nnx.to_pure_dict(nnx.state(loaded.model)))
    assert digest == result.params_digest, "reloading the workdir did not give back the trained parameters"

    samples = loaded.sample(2, seed=0)
    again = loaded.sample(2, seed=0)
    if isinstance(samples, list):
        assert len(samples) == 2 and all(isinstance(s, str) for s in samples), "text samples must be list[str]"
        assert samples == again, "sample is not deterministic for a fixed seed"
    else:
        samples = np.asarray(samples)
        assert samples.ndim == 4 and samples.shape[0] == 2, f"image samples must be (n, H, W, C); got {samples.shape}"
        assert np.isfinite(samples).all() and samples.min() >= 0.0 and samples.max() <= 1.0, "images must be in [0, 1]"
        np.testing.assert_array_equal(samples, np.asarray(again), "sample is not deterministic for a fixed seed")

    metrics = {}
    if plugin.evaluate is not None:
        metrics = loaded.evaluate(eval_data)
        _finite_metrics(metrics, f"{plugin.name}.evaluate")
        if plugin.metric:
            assert plugin.metric[0] in metrics, f"evaluate does not report the plugin's metric {plugin.metric[0]!r}"
    return {"loss": result.loss, "params_digest": result.params_digest, "metrics": metrics}


def check_plugin(name: str, workdir: Path, *, steps: int = 2, batch_size: int = 8) -> dict[str, Any]:
    """All of the above for the registered plugin ``name``; returns what training measured."""
    plugin = registry.get_plugin(name)
    check_contract(plugin)
    check_light_import(name)
    check_variants(plugin)
    return check_train_load_sample(plugin, Path(workdir), steps=steps, batch_size=batch_size)
