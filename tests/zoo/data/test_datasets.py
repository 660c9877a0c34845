"""zoo.data: the Dataset contract, discovery through ``zoo.datasets`` entry points, isolation, ``zoo data``.

Third-party datasets here are real distributions on ``sys.path`` (see
``helpers.write_distribution``), found by ``importlib.metadata`` as installed ones are.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import (
    assert_one_line_error,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    dataset_source,
    run_main,
    site,  # noqa: F401 - fixture
    subprocess_env,
    tiny_dataset,
    write_distribution,
)

import zoo.data
from zoo import registry
from zoo.data import Dataset, builtins, mnist
from zoo.errors import OfflineError, UnknownName
from zoo.plugin import API_MINOR, API_VERSION
from zoo.refs import PluginError
from zoo.registry import BrokenPlugin


BUILTIN = [r.name for r in zoo.data.records() if r.builtin]  # the datasets flax-zoo ships


def by_name() -> dict[str, zoo.data.DatasetRecord]:
    return {r.name: r for r in zoo.data.records()}


def make(**overrides) -> Dataset:
    fields = dict(
        name="toy", api=1, splits=("train",), fetch="m:fetch", load="m:load", is_cached="m:is_cached", synthetic="m:syn"
    )
    return Dataset(**(fields | overrides))


# --------------------------------------------------------------------------- the contract


def test_a_well_formed_dataset_has_no_problems():
    assert make().problems() == []
    assert make(api=(1, 1), classes=("a", "b"), image_shape=(2, 2, 3), size="1 kB", license="MIT").problems() == []


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"api": 2}, "targets plugin API 2"),
        ({"api": (1, 99)}, f"needs plugin API 1.99, this zoo speaks {API_VERSION}.{API_MINOR}; upgrade flax-zoo"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"splits": ()}, "splits must be a non-empty tuple"),
        ({"splits": "train"}, "splits must be a non-empty tuple"),
        ({"load": "nocolon"}, "load must be 'module:attribute', got 'nocolon'"),
        ({"fetch": 3}, "fetch must be 'module:attribute' or a callable"),
        ({"license": None}, "license must be a string"),
        ({"classes": "abc"}, "classes must be a tuple of class names"),
        ({"image_shape": (28, 28)}, "image_shape must be (H, W, C)"),
        ({"image_shape": (28, 0, 1)}, "image_shape must be (H, W, C)"),
    ],
)
def test_each_problem_is_reported(overrides, needle):
    problems = make(**overrides).problems()
    assert any(needle in p for p in problems), problems


# --------------------------------------------------------------------------- the built-in MNIST


def test_builtin_mnist_registers_through_its_entry_point():
    record = by_name()["mnist"]
    assert record.ok and record.builtin and record.target == "zoo.data.builtins:mnist"
    assert zoo.data.get("mnist") is builtins.mnist
    assert builtins.mnist.image_shape == (28, 28, 1) and builtins.mnist.classes == tuple("0123456789")


def test_mnist_light_cache_check_matches_the_implementation(tmp_path, monkeypatch):
    assert builtins.MNIST_FILES == tuple(mnist.IDX_SHA256)  # the light list cannot drift from the pins
    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    for present in range(len(builtins.MNIST_FILES) + 1):  # none, some, all four files
        assert zoo.data.is_cached("mnist") == mnist.is_cached() == (present == 4)
        if present < 4:
            (tmp_path / "data" / "mnist").mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / "mnist" / builtins.MNIST_FILES[present]).write_bytes(b"")


# --------------------------------------------------------------------------- third-party datasets


def test_a_third_party_dataset_is_fetched_loaded_and_synthesised(site):
    tiny_dataset(site)
    assert zoo.data.names() == sorted([*BUILTIN, "tiny"])
    record = by_name()["tiny"]
    assert record.ok and not record.builtin and record.distribution == "fake-tiny-data"
    assert "tiny_data_impl" not in sys.modules  # discovery imported the declaration only
    assert not zoo.data.is_cached("tiny")
    folder = zoo.data.fetch("tiny")
    assert folder == zoo.data.cache_dir("tiny") and sorted(p.name for p in folder.iterdir()) == ["test.npz", "train.npz"]
    assert zoo.data.is_cached("tiny")
    test = zoo.data.load("tiny", "test")
    fake = zoo.data.synthetic("tiny", 5, seed=3)
    assert set(test) == set(fake) == {"image", "label"}
    for key in test:  # the same per-example shapes and dtypes, with its own leading axis
        assert test[key].shape[1:] == fake[key].shape[1:] and test[key].dtype == fake[key].dtype
    assert len(test["label"]) == 24 and len(fake["label"]) == 5
    np.testing.assert_array_equal(fake["image"], zoo.data.synthetic("tiny", 5, seed=3)["image"])


def test_load_fetches_a_missing_dataset_unless_offline(site, monkeypatch):
    tiny_dataset(site)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="run `zoo data fetch tiny`"):
        zoo.data.load("tiny", "train")
    monkeypatch.delenv("ZOO_OFFLINE")
    assert len(zoo.data.load("tiny", "train")["label"]) == 48
    assert zoo.data.is_cached("tiny")


def test_unknown_dataset_suggests(site):
    tiny_dataset(site)
    with pytest.raises(UnknownName, match="did you mean 'tiny'"):
        zoo.data.get("tyni")


# --------------------------------------------------------------------------- broken datasets are isolated


def broken_datasets(root) -> dict[str, str]:
    """One distribution per way a dataset declaration can be broken; ``{name: expected reason}``."""
    cases = {
        "importfail": ({"importfail_data": "raise ImportError('needs libbar')\n"}, "libbar"),
        "notdataset": ({"notdataset_data": "dataset = {'name': 'notdataset'}\n"}, "not a zoo.data.Dataset"),
        "badfields": (
            {"badfields_data": dataset_source("badfields", "m", splits="()", load="'nocolon'")},
            "splits must be a non-empty tuple of split names; load must be 'module:attribute'",
        ),
        "misnamed": ({"misnamed_data": dataset_source("other", "m")}, "names itself 'other'"),
    }
    for name, (modules, _) in cases.items():
        write_distribution(root, f"fake-{name}", {name: f"{name}_data:dataset"}, modules, group="zoo.datasets")
    return {name: reason for name, (_, reason) in cases.items()}


def test_each_broken_dataset_is_isolated(site):
    reasons = broken_datasets(site)
    tiny_dataset(site)
    records = by_name()
    for name, reason in reasons.items():
        assert not records[name].ok and reason in records[name].error, records[name]
        with pytest.raises(BrokenPlugin) as e:
            zoo.data.load(name)
        assert str(e.value).startswith(f"dataset {name!r} is broken: ") and reason in str(e.value)
    assert records["mnist"].ok and records["tiny"].ok
    assert len(zoo.data.synthetic("tiny", 2)["label"]) == 2


def test_two_distributions_claiming_a_dataset_name(site):
    tiny_dataset(site, "tiny", "fake-tiny-a")
    tiny_dataset(site / "other", "tiny", "fake-tiny-b")
    sys.path.insert(0, str(site / "other"))
    try:
        registry.reset()
        record = by_name()["tiny"]
        assert not record.ok and "fake-tiny-a" in record.error and "fake-tiny-b" in record.error
    finally:
        sys.path.remove(str(site / "other"))


BAD_IMPL = """
import numpy as np

def fetch():
    raise ConnectionError("mirror down\\nsecond line of detail")

def is_cached():
    return True

def load(split):
    return {"image": np.zeros((3, 2)), "label": np.zeros(4)}

def synthetic(n, seed):
    return {"image": [[0.0]] * n}
"""


def test_failures_in_dataset_code_name_the_dataset(site):
    write_distribution(
        site, "fake-bad", {"bad": "bad_data:dataset"},
        {"bad_data": dataset_source("bad", "bad_impl"), "bad_impl": BAD_IMPL}, group="zoo.datasets",
    )  # fmt: skip
    with pytest.raises(PluginError) as e:
        zoo.data.fetch("bad")
    assert str(e.value) == (
        "dataset 'bad' fetch raised ConnectionError: mirror down ... (run with --debug for the traceback)"
    )
    assert isinstance(e.value.__cause__, ConnectionError)  # kept for --debug
    with pytest.raises(PluginError, match=r"dataset 'bad' load returned arrays of different lengths \{'image': 3, 'label': 4\}"):
        zoo.data.load("bad", "train")
    with pytest.raises(PluginError, match="dataset 'bad' synthetic returned 'image' as list, not a numpy array"):
        zoo.data.synthetic("bad", 2)


# --------------------------------------------------------------------------- zoo data list / fetch


def rows_of(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_data_list_and_fetch_any_discovered_dataset(site):
    tiny_dataset(site)
    broken_datasets(site)
    code, out, err = run_main(["data", "list"])
    assert code == 0 and err == ""
    rows = rows_of(out)
    assert "train/test" in rows["tiny"] and " not cached " in rows["tiny"]
    assert "1 kB" in rows["tiny"] and "CC0-1.0" in rows["tiny"] and "https://example.org/tiny" in rows["tiny"]
    assert "BROKEN" in rows["importfail"] and "libbar" in rows["importfail"]
    code, out, err = run_main(["data", "fetch", "tiny"])
    assert code == 0 and str(zoo.data.cache_dir("tiny")) in out
    code, out, _ = run_main(["data", "list", "--json"])
    listed = {row["name"]: row for row in json.loads(out)}
    assert listed["tiny"]["cached"] is True and listed["tiny"]["classes"] == ["dark", "grey", "bright"]
    assert listed["importfail"]["ok"] is False and "libbar" in listed["importfail"]["error"]
    code, out, err = run_main(["data", "fetch", "importfail"])
    assert code == 1 and out == ""
    assert_one_line_error(err, "dataset 'importfail' is broken", "libbar")
    code, out, err = run_main(["data", "fetch", "tyni"])
    assert code == 2
    assert_one_line_error(err, "did you mean 'tiny'")


def test_a_dataset_whose_cache_check_fails_is_listed_as_broken(site):
    write_distribution(
        site, "fake-bad", {"bad": "bad_data:dataset"},
        {"bad_data": dataset_source("bad", "bad_impl", is_cached="'bad_impl:nope'"), "bad_impl": BAD_IMPL},
        group="zoo.datasets",
    )  # fmt: skip
    code, out, err = run_main(["data", "list"])
    assert code == 0
    assert "BROKEN" in rows_of(out)["bad"] and "bad_impl:nope does not exist (is_cached)" in rows_of(out)["bad"]
    assert "BROKEN" not in rows_of(out)["mnist"]


DRIVER = textwrap.dedent(
    """
    import json, sys
    from zoo.cli import main

    try:
        main(["data", "list", "--json"])
    except SystemExit as e:
        code = e.code
    print(json.dumps({"code": code, "heavy": sorted(m for m in ("numpy", "jax", "tiny_data_impl") if m in sys.modules)}))
    """
)


def test_data_list_imports_no_numpy_or_jax(site):
    tiny_dataset(site)
    broken_datasets(site)
    result = subprocess.run(
        [sys.executable, "-c", DRIVER], capture_output=True, text=True, env=subprocess_env(site), timeout=60
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, result.stderr
