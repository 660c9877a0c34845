"""Conformance kit: what a plugin must do to be a good citizen of the zoo.

One line in a plugin's own tests runs every check, each as its own test item::

    # tests/test_conformance.py
    from zoo.testing import plugin_conformance

    test_conformance = plugin_conformance("mymodel")

pytest collects it through the ``zoo`` pytest plugin that flax-zoo registers
(entry point ``pytest11``); with that plugin disabled (``-p no:zoo``) name the
suite ``TestConformance`` instead. ``pytest -m zoo_conformance`` selects it. The
checks, in order:

- discovery is light (importing the entry point imports no jax), the contract
  is well formed and every reference resolves;
- every variant builds, on one device and on a mesh of several with bitwise the
  same parameters (in a subprocess with 8 CPU devices when fewer are visible);
- a few training steps on synthetic data end with a finite loss;
- restoring the workdir gives back exactly the trained parameters;
- ``sample`` and ``predict`` (whichever the plugin has) return valid outputs
  (samples deterministic for a seed, predictions independent of the batch);
  ``evaluate`` returns finite metrics;
- the datasets it trains on are installed, and ``synthetic`` matches ``load``;
- the plugin's catalogue entries name its variants, datasets and metrics, and
  local checkpoints match their pinned sha256.

The same checks are plain functions (``check_plugin`` runs them all in a row).
Each raises ``AssertionError`` saying what is wrong. Data is the dataset's
``synthetic`` arrays, so everything runs offline.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from zoo import registry
from zoo.plugin import Plugin

TRAIN_EXAMPLES, EVAL_EXAMPLES = 64, 8
"""Synthetic examples the kit trains and evaluates on: enough for every batch, still instant
(a text example is a whole 1025-byte window, so evaluation stays small on purpose)."""
MAX_BUILT_PARAMETERS = 5_000_000
"""Variants up to this size are initialised for real (on one device and on several); larger ones
are built abstractly only. They run the same code at a larger width, and initialising them for
real, twice, was most of the kit's time (GPT-2's 124M parameters are 0.5 GB a copy on a CPU)."""


class SourceTreeWarning(UserWarning):
    """The plugin under test was imported from a source tree, not from its installed distribution."""


def _child_env(**extra: str) -> dict[str, str]:
    """The environment for a probe subprocess: it sees the modules this process sees."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _run_probe(code: str, *args: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter; its last stderr line becomes the AssertionError."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_child_env(**env))
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise AssertionError(lines[-1])
    return done.stdout


# =========================================================================== discovery and contract


_LIGHT_IMPORT_PROBE = """
import json, sys
from importlib import metadata
for entry_point in metadata.entry_points(group="zoo.plugins", name=sys.argv[1]):
    entry_point.load()  # this plugin's entry point only: what others import is theirs
print(json.dumps(sorted(m for m in ("jax", "flax", "optax", "orbax") if m in sys.modules)))
"""


def check_light_import(name: str) -> None:
    """Discovering the plugin must not import jax, flax, optax or orbax (``zoo list`` stays fast)."""
    heavy = json.loads(_run_probe(_LIGHT_IMPORT_PROBE, name).strip().splitlines()[-1])
    assert not heavy, f"discovering plugin {name!r} imported {heavy}; reference heavy code as 'module:attr' instead"


def check_contract(plugin: Plugin) -> None:
    """Every field well formed and every reference importable and callable."""
    assert not plugin.problems(), f"plugin {plugin.name!r}: {'; '.join(plugin.problems())}"
    for field in ("config", "build", "train", "sample", "evaluate", "predict"):
        if getattr(plugin, field, None) is not None:
            assert callable(plugin.resolve(field)), f"plugin {plugin.name!r}: {field} is not callable"


def source_tree_warning(name: str) -> str | None:
    """Why the plugin's module does not come from its installed distribution, or None.

    A test run from the project folder can import ``./zoo_mymodel`` instead of the
    installed copy; then the tests pass on files a user never gets. Editable
    installs point at the source tree on purpose and are not flagged.
    """
    record = registry.get_record(name)
    module = sys.modules.get(record.target.split(":")[0])
    if module is None or not getattr(module, "__file__", None):
        return None
    try:
        dist = metadata.distribution(record.distribution)
    except metadata.PackageNotFoundError:
        return None
    stem = module.__name__.replace(".", "/")
    wanted = {f"{stem}.py", f"{stem}/__init__.py"}
    installed = [dist.locate_file(f) for f in dist.files or () if f.as_posix() in wanted]
    actual = Path(module.__file__).resolve()
    if not installed or any(Path(p).resolve() == actual for p in installed):
        return None
    return (
        f"plugin {name!r} was imported from {actual}, not from the installed {record.distribution} "
        f"({Path(installed[0]).resolve()}): these tests check a source tree, not what pip installed. "
        "Use a src/ layout, or test an editable install (pip install -e .)"
    )


# =========================================================================== building


def _mesh_over(n: int) -> dict[str, int]:
    """A mesh of ``n`` devices that uses the fsdp and tensor axes when ``n`` allows."""
    tensor = 2 if n % 2 == 0 else 1
    fsdp = 2 if (n // tensor) % 2 == 0 else 1
    return {"data": n // (tensor * fsdp), "fsdp": fsdp, "tensor": tensor}


def built_parameters(plugin: Plugin, variant: str, mesh_shape: dict[str, int]) -> dict[str, np.ndarray]:
    """The variant's parameters, built sharded on a ``mesh_shape`` mesh, by path (``"a/b"``)."""
    import jax
    from flax import nnx

    from zoo import checkpoint, sharding
    from zoo.config import make_config
    from zoo.training import ModelDef

    config = make_config(plugin, variant)
    build = lambda: plugin.resolve("build")(config, nnx.Rngs(0))  # noqa: E731
    mesh = sharding.make_mesh(mesh_shape)
    model_def = ModelDef.create(build, mesh, [nnx.Param])
    assert model_def.groups[0], f"{plugin.name}/{variant} has no nnx.Param"
    with jax.set_mesh(mesh):
        variables = model_def.init(build)
    return {path: np.asarray(leaf) for path, leaf in checkpoint.tree_paths(variables).items()}


def check_variants(plugin: Plugin) -> dict[str, int]:
    """Every variant's config is valid and its model builds abstractly (no memory, no compute).

    Returns each variant's number of values (parameters and other variables).
    """
    import math

    import jax
    from flax import nnx

    from zoo import sharding
    from zoo.config import make_config
    from zoo.training import ModelDef

    mesh = sharding.make_mesh({"data": 1})
    sizes = {}
    for variant in plugin.variants:
        config = make_config(plugin, variant)
        model_def = ModelDef.create(lambda c=config: plugin.resolve("build")(c, nnx.Rngs(0)), mesh, [nnx.Param])
        assert model_def.groups[0], f"{plugin.name}/{variant} has no nnx.Param"
        sizes[variant] = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(model_def.abstract))
    return sizes


def variants_to_build(plugin: Plugin) -> list[str]:
    """The variants the build checks initialise for real: those of at most ``MAX_BUILT_PARAMETERS``."""
    return [variant for variant, size in check_variants(plugin).items() if size <= MAX_BUILT_PARAMETERS]


def check_builds_on_one_device(plugin: Plugin) -> dict[str, dict[str, np.ndarray]]:
    """Every variant (up to ``MAX_BUILT_PARAMETERS``) initialises on one device with finite parameters.

    Returns the parameters by variant and path.
    """
    built = {}
    for variant in variants_to_build(plugin):
        built[variant] = built_parameters(plugin, variant, {"data": 1})
        for path, value in built[variant].items():
            assert np.isfinite(value).all(), f"{plugin.name}/{variant}: parameter {path} is not finite after init"
    return built


_MESH_PROBE = """
import sys
from zoo import registry, testing
try:
    testing.check_builds_on_several_devices(registry.get_plugin(sys.argv[1]))
except AssertionError as e:
    sys.exit(" ".join(str(e).split()))
"""


def check_builds_on_several_devices(plugin: Plugin, one_device: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """Every variant builds sharded over several devices, bitwise equal to its one-device build.

    ``one_device``: the one-device builds if already made (``check_builds_on_one_device``).
    With fewer than two devices visible (a plugin's tests need not ask for more),
    the check runs in a subprocess with 8 CPU devices.
    """
    import jax

    n = jax.device_count()
    if n < 2:
        flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        _run_probe(_MESH_PROBE, plugin.name, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
        return
    shape = _mesh_over(n)
    for variant in one_device or variants_to_build(plugin):
        one = one_device[variant] if one_device else built_parameters(plugin, variant, {"data": 1})
        several = built_parameters(plugin, variant, shape)
        for path in one:
            assert np.array_equal(one[path], several[path]), (
                f"{plugin.name}/{variant}: parameter {path} built on mesh {shape} differs from its one-device build"
            )


# =========================================================================== training and outputs


def synthetic_data(plugin: Plugin) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, eval) synthetic arrays of the plugin's first dataset."""
    from zoo import data

    assert plugin.datasets, f"plugin {plugin.name!r} declares no dataset"
    name = plugin.datasets[0]
    return data.synthetic(name, TRAIN_EXAMPLES, seed=0), data.synthetic(name, EVAL_EXAMPLES, seed=1)


def train_briefly(plugin: Plugin, workdir: Path, *, steps: int = 2, batch_size: int | None = None):
    """Train ``steps`` steps on synthetic data on every visible device; the loss must stay finite."""
    import jax

    from zoo import api

    batch_size = batch_size or 2 * jax.device_count()  # every device gets a slice
    train_data, eval_data = synthetic_data(plugin)
    result = api.train(
        plugin.name, dataset=plugin.datasets[0], workdir=workdir, steps=steps, batch_size=batch_size,
        train_data=train_data, eval_data=eval_data, progress=False,
    )
    assert result.step == steps, f"{plugin.name}: trained to step {result.step}, asked for {steps}"
    assert math.isfinite(result.loss), f"{plugin.name}: loss after {steps} steps is {result.loss}"
    return result


def check_restore(plugin: Plugin, workdir: Path, params_digest: str):
    """Loading the workdir gives back exactly the trained parameters; returns the loaded model."""
    from flax import nnx

    from zoo import checkpoint, pretrained

    loaded = pretrained.load(workdir)
    digest = checkpoint.params_digest(nnx.to_pure_dict(nnx.state(loaded.model)))
    assert digest == params_digest, f"{plugin.name}: restoring {workdir} did not give back the trained parameters"
    return loaded


def check_sample(plugin: Plugin, loaded: Any, n: int = 2) -> None:
    """``n`` samples: texts (``list[str]``) or images ``(n, H, W, C)`` in [0, 1]; the same for one seed."""
    samples, again = loaded.sample(n, seed=0), loaded.sample(n, seed=0)
    if isinstance(samples, list):
        assert len(samples) == n and all(isinstance(s, str) for s in samples), (
            f"{plugin.name}.sample must return {n} strings or an image array; got {samples!r:.80}"
        )
        assert samples == again, f"{plugin.name}.sample is not deterministic for a fixed seed"
        return
    samples = np.asarray(samples)
    assert samples.ndim == 4 and samples.shape[0] == n, f"{plugin.name}.sample images must be (n, H, W, C); got {samples.shape}"
    assert np.isfinite(samples).all() and 0.0 <= samples.min() and samples.max() <= 1.0, (
        f"{plugin.name}.sample images must be finite and in [0, 1]"
    )
    assert np.array_equal(samples, np.asarray(again)), f"{plugin.name}.sample is not deterministic for a fixed seed"


def check_predict(plugin: Plugin, loaded: Any, data: dict[str, np.ndarray], n: int = 3) -> bool:
    """Probabilities ``(n, K)``: rows sum to 1, one column per class, and each row is independent of the batch.

    The inputs are the data's images; returns False (nothing checked) when it has none.
    """
    if "image" not in data:
        return False
    images = data["image"][:n]
    probabilities = np.asarray(loaded.predict(images))
    assert probabilities.ndim == 2 and probabilities.shape[0] == n, (
        f"{plugin.name}.predict must return (N, classes) for N inputs; got {probabilities.shape} for {n}"
    )
    assert np.isfinite(probabilities).all() and 0 <= probabilities.min() and probabilities.max() <= 1, (
        f"{plugin.name}.predict must return probabilities in [0, 1]"
    )
    sums = probabilities.sum(axis=1)
    assert np.allclose(sums, 1.0, atol=1e-3), f"{plugin.name}.predict rows must sum to 1; got {sums}"
    if classes := loaded.classes:
        assert probabilities.shape[1] == len(classes), (
            f"{plugin.name}.predict gives {probabilities.shape[1]} columns; dataset {loaded.dataset!r} has {len(classes)} classes"
        )
    alone = np.asarray(loaded.predict(images[:1]))
    assert np.allclose(alone[0], probabilities[0], atol=1e-5), (
        f"{plugin.name}.predict of one input differs from its row in a batch: outputs must not depend on the batch"
    )
    return True


def check_evaluate(plugin: Plugin, loaded: Any, data: dict[str, np.ndarray]) -> dict[str, float]:
    """``evaluate`` returns a non-empty dict of finite floats that includes the plugin's metric."""
    metrics = loaded.evaluate(data)
    assert isinstance(metrics, dict) and metrics, f"{plugin.name}.evaluate must return a non-empty dict of metrics"
    for key, value in metrics.items():
        assert isinstance(value, float) and math.isfinite(value), f"{plugin.name}.evaluate: {key!r} = {value!r} is not finite"
    if plugin.metric:
        assert plugin.metric[0] in metrics, f"{plugin.name}.evaluate does not report the plugin's metric {plugin.metric[0]!r}"
    return metrics


# =========================================================================== datasets and catalogue


def check_datasets(plugin: Plugin) -> None:
    """The plugin's datasets are installed and healthy; ``synthetic`` is deterministic and shaped like ``load``.

    ``load`` is compared only when the dataset is already cached (the kit never downloads).
    """
    from zoo import data
    from zoo.errors import ZooError

    for name in plugin.datasets:
        try:
            dataset = data.get(name)
        except ZooError as e:
            raise AssertionError(f"plugin {plugin.name!r} trains on dataset {name!r}: {e}") from None
        fake, again = data.synthetic(name, 4, seed=0), data.synthetic(name, 4, seed=0)
        assert all(np.array_equal(fake[k], again[k]) for k in fake), f"dataset {name!r}: synthetic(n, seed) is not deterministic"
        if dataset.image_shape and "image" in fake:
            assert fake["image"].shape[1:] == tuple(dataset.image_shape), (
                f"dataset {name!r} declares image_shape {dataset.image_shape}; synthetic images are {fake['image'].shape[1:]}"
            )
        if dataset.classes and "label" in fake:
            assert 0 <= fake["label"].min() and fake["label"].max() < len(dataset.classes), (
                f"dataset {name!r}: synthetic labels fall outside its {len(dataset.classes)} classes"
            )
        if data.is_cached(name):
            real = data.load(name, dataset.splits[-1])
            layout = lambda batch: {k: (v.dtype.str, v.shape[1:]) for k, v in batch.items()}  # noqa: E731
            assert layout(fake) == layout(real), (
                f"dataset {name!r}: synthetic gives {layout(fake)}, load gives {layout(real)} (keys, dtypes, shapes)"
            )



def check_catalogue(plugin: Plugin, metrics: dict[str, float] | None = None) -> int:
    """Every catalogue entry for the plugin builds, names known data and metrics, and matches its sha256.

    ``metrics``: what ``evaluate`` reports; an entry may only pin those. Remote
    checkpoints are not downloaded. Returns how many entries were checked.
    """
    from zoo import checkpoint
    from zoo.config import make_config
    from zoo.errors import ZooError

    entries = [e for e in registry.catalog().entries.values() if e.plugin == plugin.name]
    for entry in entries:
        where = f"catalogue entry {entry.name!r} ({entry.source})"
        try:
            make_config(plugin, entry.variant, entry.config)
        except ZooError as e:
            raise AssertionError(f"{where}: {e}") from None
        if plugin.datasets:
            assert entry.dataset in plugin.datasets, f"{where}: dataset {entry.dataset!r} is not one of {plugin.datasets}"
        if metrics is not None:
            stray = sorted(set(entry.metrics) - set(metrics))
            assert not stray, f"{where}: metrics {stray} are not reported by evaluate ({sorted(metrics)})"
        if not entry.remote:
            try:
                checkpoint.verify(entry.local_path, entry.sha256)
            except ZooError as e:
                raise AssertionError(f"{where}: {e}") from None
    return len(entries)


# =========================================================================== all at once


def check_plugin(name: str, workdir: Path, *, steps: int = 2, batch_size: int | None = None) -> dict[str, Any]:
    """Every check for the registered plugin ``name``, in a row; returns what training measured."""
    plugin = registry.get_plugin(name)
    check_contract(plugin)
    check_light_import(name)
    if message := source_tree_warning(name):
        warnings.warn(message, SourceTreeWarning, stacklevel=2)
    check_variants(plugin)
    check_builds_on_several_devices(plugin, check_builds_on_one_device(plugin))
    result = train_briefly(plugin, Path(workdir), steps=steps, batch_size=batch_size)
    loaded = check_restore(plugin, Path(workdir), result.params_digest)
    if getattr(plugin, "sample", None) is not None:
        check_sample(plugin, loaded)
    if getattr(plugin, "predict", None) is not None:
        check_predict(plugin, loaded, synthetic_data(plugin)[1])
    check_datasets(plugin)
    metrics = check_evaluate(plugin, loaded, synthetic_data(plugin)[1]) if plugin.evaluate is not None else {}
    check_catalogue(plugin, metrics if plugin.evaluate is not None else None)
    return {"loss": result.loss, "params_digest": result.params_digest, "metrics": metrics}


def plugin_conformance(name: str, *, steps: int = 2, batch_size: int | None = None) -> type:
    """A pytest suite of every check for plugin ``name``, one test item per check.

    Assign it in a test module: ``test_conformance = plugin_conformance("mymodel")``.
    Training happens once per suite, in a temporary folder.
    """
    from zoo.pytest_plugin import make_suite

    return make_suite(sys.modules[__name__], name, steps=steps, batch_size=batch_size)
