"""The conformance kit (zoo.testing) and its pytest plugin: each check catches what it is for, readably.

The full suite passing on real plugins is shown by tests/plugins/test_conformance.py
(``check_plugin`` on every first-party plugin) and tests/test_scaffold.py (the
generated packages run ``plugin_conformance`` in their own tests).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import (
    MODEL_SOURCE,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    dataset_source,
    entry_toml,
    healthy_plugin,
    plugin_source,
    site,  # noqa: F401 - fixture
    subprocess_env,
    write_catalog,
    write_distribution,
)

from zoo import registry, testing

CHECKS = [
    "test_discovery_is_light", "test_contract", "test_variants_build", "test_builds_on_one_device",
    "test_builds_on_several_devices", "test_trains_a_few_steps", "test_save_restore_round_trip",
    "test_sample", "test_predict", "test_evaluate", "test_datasets", "test_catalogue",
]  # fmt: skip


def _collect(folder: Path, source: str, *options: str) -> list[str]:
    (folder / "test_kit.py").write_text(textwrap.dedent(source))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options, "test_kit.py"],
        cwd=folder, capture_output=True, text=True, env=subprocess_env(),
    )  # fmt: skip
    return [line.split("::", 1)[1] for line in done.stdout.splitlines() if "::" in line]


def test_one_line_gives_one_item_per_check_under_any_name(tmp_path):
    items = _collect(tmp_path, 'from zoo.testing import plugin_conformance\ntest_conformance = plugin_conformance("vae")\n')
    assert items == [f"test_conformance::{check}" for check in CHECKS]
    marked = _collect(tmp_path, "from zoo.testing import plugin_conformance\nkit = plugin_conformance('vae')\n", "-m", "zoo_conformance")
    assert marked == [f"kit::{check}" for check in CHECKS]


def test_without_the_pytest_plugin_a_test_class_name_still_collects(tmp_path):
    source = "from zoo.testing import plugin_conformance\n"
    assert _collect(tmp_path, source + "test_conformance = plugin_conformance('vae')\n", "-p", "no:zoo") == []
    named = _collect(tmp_path, source + "TestConformance = plugin_conformance('vae')\n", "-p", "no:zoo")
    assert named == [f"TestConformance::{check}" for check in CHECKS]


def test_a_plugin_that_is_not_installed_fails_every_check_in_one_line(tmp_path):
    (tmp_path / "test_kit.py").write_text("from zoo.testing import plugin_conformance\nkit = plugin_conformance('vea')\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "test_kit.py"],
        cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(COLUMNS="1000"),  # untruncated summary
    )  # fmt: skip
    summary = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert len(summary) == len(CHECKS), done.stdout
    assert "unknown plugin 'vea'; did you mean 'vae'? (is its package installed? pip install -e .)" in summary[0]
    assert all("needs discovery, which failed: unknown plugin 'vea'" in line for line in summary[1:]), summary
    assert "Traceback" not in done.stdout and "jax" not in done.stdout


# --------------------------------------------------------------------------- outputs


STUB = SimpleNamespace(name="stub", metric=("accuracy", "max"))


def _loaded(**methods) -> SimpleNamespace:
    return SimpleNamespace(**{"classes": (), "dataset": "tiny", **methods})


def test_sample_check_accepts_images_and_texts_and_names_each_fault():
    images = np.random.default_rng(0).random((2, 4, 4, 1))
    testing.check_sample(STUB, _loaded(sample=lambda n, seed: images[:n]))
    testing.check_sample(STUB, _loaded(sample=lambda n, seed: ["a", "b"][:n]))
    faults = {
        "[0, 1]": lambda n, seed: images[:n] * 2,
        "(n, H, W, C)": lambda n, seed: images[:n, :, :, 0],
        "not deterministic": lambda n, seed: np.random.default_rng().random((n, 4, 4, 1)),
        "strings": lambda n, seed: ["a", 3][:n],
    }
    for needle, sample in faults.items():
        with pytest.raises(AssertionError, match=re.escape(needle)):
            testing.check_sample(STUB, _loaded(sample=sample))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_predict_check_wants_distributions_per_input_independent_of_the_batch():
    data = {"image": np.random.default_rng(0).random((3, 4, 4, 1)).astype(np.float32)}
    row_softmax = lambda x: _softmax(np.asarray(x).reshape(len(x), -1)[:, :3], axis=1)  # noqa: E731
    testing.check_predict(STUB, _loaded(predict=row_softmax, classes=("a", "b", "c")), data)
    faults = {
        "sum to 1": lambda x: row_softmax(x) * 0.5,
        "3 classes": lambda x: _softmax(np.asarray(x).reshape(len(x), -1)[:, :2], axis=1),
        # normalised over the batch instead of the classes: each row depends on the others
        "depend on the batch": lambda x: (lambda p: p / p.sum(1, keepdims=True))(_softmax(np.asarray(x).reshape(len(x), -1)[:, :3], 0)),
        r"\(N, classes\)": lambda x: row_softmax(x)[:1],
    }  # fmt: skip
    for needle, predict in faults.items():
        with pytest.raises(AssertionError, match=needle):
            testing.check_predict(STUB, _loaded(predict=predict, classes=("a", "b", "c")), data)


def test_evaluate_check_names_the_bad_metric():
    data = {"image": np.zeros((2, 4, 4, 1))}
    assert testing.check_evaluate(STUB, _loaded(evaluate=lambda d: {"accuracy": 0.5}), data) == {"accuracy": 0.5}
    with pytest.raises(AssertionError, match="'loss' = nan"):
        testing.check_evaluate(STUB, _loaded(evaluate=lambda d: {"accuracy": 0.5, "loss": float("nan")}), data)
    with pytest.raises(AssertionError, match="metric 'accuracy'"):
        testing.check_evaluate(STUB, _loaded(evaluate=lambda d: {"loss": 1.0}), data)


# --------------------------------------------------------------------------- discovery


def test_light_import_check_names_what_discovery_imported(site):
    write_distribution(site, "fake-heavy", {"heavy": "heavy_pkg:plugin"},
                       {"heavy_pkg": plugin_source("heavy", "heavy_model", extra="import jax"), "heavy_model": MODEL_SOURCE})  # fmt: skip
    healthy_plugin(site)
    registry.reset()
    testing.check_light_import("fakeok")
    with pytest.raises(AssertionError, match=r"discovering plugin 'heavy' imported \['jax'\]"):
        testing.check_light_import("heavy")


def _installed_with_record(root: Path, name: str) -> Path:
    """A plugin distribution as pip installs a wheel: its RECORD lists the module's files."""
    pkg = f"{name}_pkg"
    write_distribution(root, f"fake-{name}", {name: f"{pkg}:plugin"}, {f"{pkg}.__init__": plugin_source(name, f"{pkg}_model")})
    record = next(root.glob(f"fake_{name}-*.dist-info")) / "RECORD"
    record.write_text(f"{pkg}/__init__.py,,\n")
    return root / pkg / "__init__.py"


def test_source_tree_warning_only_when_the_module_is_not_the_installed_one(site, tmp_path, monkeypatch):
    installed = _installed_with_record(site, "srcwarn")
    registry.reset()
    registry.get_plugin("srcwarn")  # imported from the installed files
    assert testing.source_tree_warning("srcwarn") is None

    checkout = tmp_path / "checkout"  # a project folder that shadows the installed package
    (checkout / "srcwarn_pkg").mkdir(parents=True)
    (checkout / "srcwarn_pkg" / "__init__.py").write_text(installed.read_text())
    monkeypatch.delitem(sys.modules, "srcwarn_pkg")
    monkeypatch.syspath_prepend(str(checkout))
    registry.reset()
    registry.get_plugin("srcwarn")
    message = testing.source_tree_warning("srcwarn")
    assert message and str(checkout / "srcwarn_pkg") in message and str(installed) in message


def test_no_source_tree_warning_for_an_editable_install(site):
    healthy_plugin(site)  # no RECORD entry for the module: what an editable install looks like
    registry.reset()
    registry.get_plugin("fakeok")
    assert testing.source_tree_warning("fakeok") is None


# --------------------------------------------------------------------------- builds on meshes


NONDETERMINISTIC_MODEL = MODEL_SOURCE.replace(
    "return nnx.Linear(2, config.features, rngs=rngs)",
    "import numpy as np, jax.numpy as jnp\n"
    "    init = lambda key, shape, dtype: jnp.asarray(np.random.default_rng().random(shape), dtype)\n"
    "    return nnx.Linear(2, config.features, kernel_init=init, rngs=rngs)",
)


@pytest.mark.slow
def test_several_devices_check_runs_in_a_subprocess_when_one_device_is_visible(site, monkeypatch):
    import jax

    healthy_plugin(site)
    write_distribution(site, "fake-hostrandom", {"hostrandom": "hostrandom_pkg:plugin"},
                       {"hostrandom_pkg": plugin_source("hostrandom", "hostrandom_model"), "hostrandom_model": NONDETERMINISTIC_MODEL})  # fmt: skip
    registry.reset()
    monkeypatch.setattr(jax, "device_count", lambda: 1)  # as in a plugin's tests that ask for no devices
    testing.check_builds_on_several_devices(registry.get_plugin("fakeok"))
    with pytest.raises(AssertionError, match=r"hostrandom/small: parameter kernel built on mesh .* differs from its one-device build"):
        testing.check_builds_on_several_devices(registry.get_plugin("hostrandom"))


def test_several_devices_check_in_process_compares_with_the_one_device_build(site):
    healthy_plugin(site)
    registry.reset()
    plugin = registry.get_plugin("fakeok")
    one = testing.check_builds_on_one_device(plugin)
    assert set(one) == {"small", "large"} and one["large"]["kernel"].shape == (2, 5)
    testing.check_builds_on_several_devices(plugin, one)
    one["small"]["kernel"] = one["small"]["kernel"] + 1.0  # a reference that no longer matches
    with pytest.raises(AssertionError, match="fakeok/small: parameter kernel"):
        testing.check_builds_on_several_devices(plugin, one)


# --------------------------------------------------------------------------- datasets and catalogue


SKEWED_DATA = """
import numpy as np
from zoo.data import cache_dir

def _arrays(n, seed, dtype):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (n, 4, 4, 1)).astype(dtype), "label": rng.integers(0, 3, n).astype(np.int32)}

def fetch():
    cache_dir("skewed").mkdir(parents=True, exist_ok=True)
    np.savez(cache_dir("skewed") / "test.npz", **_arrays(8, 0, np.uint8))
    return cache_dir("skewed")

def load(split):
    with np.load(cache_dir("skewed") / "test.npz") as f:
        return dict(f)

def is_cached():
    return (cache_dir("skewed") / "test.npz").is_file()

def synthetic(n, seed):
    return _arrays(n, seed, np.float32)  # not what load gives
"""


def test_datasets_check_compares_synthetic_with_load_once_cached(site):
    write_distribution(site, "fake-skewed", {"skewed": "skewed_pkg:dataset"},
                       {"skewed_pkg": dataset_source("skewed", "skewed_impl", splits="('test',)"), "skewed_impl": SKEWED_DATA},
                       group="zoo.datasets")  # fmt: skip
    plugin = SimpleNamespace(name="user", datasets=("skewed",))
    testing.check_datasets(plugin)  # not cached: synthetic alone is checked
    import zoo.data

    zoo.data.fetch("skewed")
    with pytest.raises(AssertionError, match=r"dataset 'skewed': synthetic gives .*<f4.* load gives .*\|u1"):
        testing.check_datasets(plugin)
    with pytest.raises(AssertionError, match="unknown dataset 'nosuch'"):
        testing.check_datasets(SimpleNamespace(name="user", datasets=("nosuch",)))


def test_catalogue_check_names_the_entry_and_what_is_wrong(site, tmp_path, monkeypatch):
    healthy_plugin(site)
    fields = {"plugin": '"fakeok"', "checkpoint": '"nowhere"', "metrics": "{ accuracy = 0.5 }"}
    catalogue = write_catalog(tmp_path / "c.toml", entry_toml("fake-huge", variant='"huge"', **fields))
    monkeypatch.setenv("ZOO_REGISTRY", str(catalogue))
    registry.reset()
    plugin = registry.get_plugin("fakeok")
    with pytest.raises(AssertionError, match=r"catalogue entry 'fake-huge' .*unknown variant .*'huge'"):
        testing.check_catalogue(plugin)
    write_catalog(catalogue, entry_toml("fake-small", variant='"small"', **fields))
    registry.reset()
    with pytest.raises(AssertionError, match=r"catalogue entry 'fake-small' .*metrics \['accuracy'\] are not reported"):
        testing.check_catalogue(plugin, {"loss": 1.0})
    with pytest.raises(AssertionError, match=r"catalogue entry 'fake-small' .*nowhere"):
        testing.check_catalogue(plugin, {"accuracy": 1.0})  # metrics fine; the checkpoint is missing
