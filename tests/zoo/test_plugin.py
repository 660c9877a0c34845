"""zoo.plugin: the Plugin contract's own checks (problems) and lazy resolution of its references."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from helpers import site  # noqa: F401 - fixture

import zoo
from zoo.errors import ZooError
from zoo.plugin import API_VERSION, Plugin


def make(**overrides) -> Plugin:
    fields = dict(
        name="toy",
        api=API_VERSION,
        summary="a toy",
        config="toy_model:Config",
        variants={"small": {"features": 3}, "large": {"features": 5}},
        build="toy_model:build",
        train="toy_model:train",
        sample="toy_model:sample",
    )
    return Plugin(**(fields | overrides))


def test_public_names():
    assert zoo.Plugin is Plugin and zoo.API_VERSION == API_VERSION == 1


def test_a_well_formed_plugin_has_no_problems():
    plugin = make(
        evaluate="toy_model:evaluate", datasets=("mnist",), metric=("loss", "min"), replaceable=("head",), catalog="c.toml"
    )
    assert plugin.problems() == []
    assert plugin.default_variant == "small"  # the first variant
    assert make(build=lambda config, rngs: None, config=dict).problems() == []  # objects are fine too
    assert make(datasets=["mnist"], metric=["acc", "max"]).problems() == []


def test_plugin_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make().name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"api": 2}, "targets plugin API 2"),
        ({"api": 0}, "targets plugin API 0"),
        ({"api": "1"}, "targets plugin API '1'"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": None}, "name must be a non-empty string"),
        ({"summary": ""}, "summary must be a non-empty string"),
        ({"summary": 3}, "summary must be a non-empty string"),
        ({"config": "toy_model.Config"}, "config must be 'module:attribute'"),
        ({"build": "nocolon"}, "build must be 'module:attribute', got 'nocolon'"),
        ({"train": "a:b:c"}, "train must be 'module:attribute'"),
        ({"sample": ":sample"}, "sample must be 'module:attribute'"),
        ({"sample": "toy_model:"}, "sample must be 'module:attribute'"),
        ({"build": None}, "build must be 'module:attribute' or a callable"),
        ({"build": 42}, "build must be 'module:attribute' or a callable"),
        ({"evaluate": "oops"}, "evaluate must be 'module:attribute'"),
        ({"variants": {}}, "variants must be a non-empty mapping"),
        ({"variants": ["small"]}, "variants must be a non-empty mapping"),
        ({"variants": {"small": 3}}, "each variant must map a name to a dict"),
        ({"variants": {1: {}}}, "each variant must map a name to a dict"),
        ({"datasets": "mnist"}, "datasets must be a tuple of dataset names"),
        ({"datasets": ("mnist", 3)}, "datasets must be a tuple of dataset names"),
        ({"metric": ("loss", "lowest")}, "metric must be (name, 'min' | 'max')"),
        ({"metric": "loss"}, "metric must be (name, 'min' | 'max')"),
        ({"metric": ("loss",)}, "metric must be (name, 'min' | 'max')"),
        ({"catalog": 123}, "catalog must be a path"),
        ({"catalog": ""}, "catalog must be a path"),
    ],
)
def test_each_problem_is_reported(overrides, needle):
    problems = make(**overrides).problems()
    assert any(needle in p for p in problems), problems


def test_all_problems_reported_at_once():
    problems = make(api=2, summary="", build="x", variants={}).problems()
    assert len(problems) == 4, problems


def test_problems_imports_nothing():
    plugin = make(config="surely_not_a_module_xyz:Config")
    assert plugin.problems() == []
    assert "surely_not_a_module_xyz" not in sys.modules


TOY_MODEL = """
LOADS = []
LOADS.append(1)

class Config:
    pass

class Nested:
    class Inner:
        value = 42

def build(config, rngs):
    return "built"
"""


def test_resolve_imports_lazily_and_follows_dotted_attributes(site):
    (site / "toy_model.py").write_text(TOY_MODEL)
    plugin = make(evaluate="toy_model:Nested.Inner")
    assert "toy_model" not in sys.modules
    assert plugin.resolve("build")(None, None) == "built"
    assert plugin.resolve("evaluate").value == 42
    assert plugin.resolve("config").__name__ == "Config"
    assert sys.modules["toy_model"].LOADS == [1]  # imported once


def test_resolve_returns_objects_as_they_are():
    def build(config, rngs):
        return None

    assert make(build=build).resolve("build") is build


def test_resolve_missing_module_is_a_zoo_error():
    with pytest.raises(ZooError) as e:
        make(build="surely_not_a_module_xyz:build").resolve("build")
    assert "'toy'" in str(e.value) and "surely_not_a_module_xyz" in str(e.value) and "build" in str(e.value)


def test_resolve_missing_attribute_is_a_zoo_error(site):
    (site / "toy_model.py").write_text(TOY_MODEL)
    for ref in ("toy_model:nope", "toy_model:Nested.nope"):
        with pytest.raises(ZooError) as e:
            make(build=ref).resolve("build")
        assert ref in str(e.value)


def test_resolve_absent_optional_field():
    with pytest.raises(ZooError) as e:
        make().resolve("evaluate")
    assert "has no evaluate" in str(e.value)
