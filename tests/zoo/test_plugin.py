"""zoo.plugin: the Plugin contract's own checks (problems) and lazy resolution of its references."""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys

import pytest
from helpers import site  # noqa: F401 - fixture

import zoo
from zoo.errors import UnknownName, UsageError, ZooError
from zoo.plugin import API_MINOR, API_VERSION, Plugin, check_metrics, check_predictions, check_samples
from zoo.refs import PluginError


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
    assert zoo.API_MINOR == API_MINOR == 2


def test_versions_a_plugin_may_declare():
    assert make(api=(1, 0)).problems() == make(api=(1, API_MINOR)).problems() == []
    assert make(sample=None, predict="toy_model:predict", api=(1, 1)).problems() == []  # a classifier only
    assert make(predict="toy_model:predict").problems() == []  # sample and predict both


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
        ({"api": (2, 0)}, "targets plugin API (2, 0)"),
        ({"api": (1, 3)}, "needs plugin API 1.3, this zoo speaks 1.2; upgrade flax-zoo"),
        ({"api": (1,)}, "targets plugin API (1,)"),
        ({"api": True}, "targets plugin API True"),
        ({"sample": None}, "needs sample (generative), predict (discriminative) or both"),
        ({"predict": "nocolon"}, "predict must be 'module:attribute', got 'nocolon'"),
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


def test_resolve_returns_classes_as_they_are_and_functions_guarded():
    def build(config, rngs, *, width: int = 3):
        return width

    guarded = make(build=build, config=dict).resolve("build")
    assert guarded.__wrapped__ is build and guarded(None, None, width=5) == 5
    assert inspect.signature(guarded) == inspect.signature(build)  # option parsing reads it
    assert make(build=build, config=dict).resolve("config") is dict


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


# --------------------------------------------------------------------------- failures inside plugin code name the plugin


def raiser(error: BaseException):
    def build(config, rngs):
        raise error

    return make(build=build).resolve("build")


def test_an_exception_in_plugin_code_is_one_line_naming_plugin_and_function():
    with pytest.raises(PluginError) as e:
        raiser(ValueError("kernel shape (3, 4)\n\nand forty lines of JAX detail"))(None, None)
    assert str(e.value) == (
        "plugin 'toy' build raised ValueError: kernel shape (3, 4) ... (run with --debug for the traceback)"
    )
    assert e.value.exit_code == 1 and isinstance(e.value.__cause__, ValueError)


def test_a_zoo_error_raised_on_purpose_keeps_its_class_message_and_exit_code():
    original = UnknownName("width", "wide", ["narrow", "wider"])  # a subclass whose __init__ takes other arguments
    for error, code in [(UsageError("width must be even"), 2), (ZooError("no GPU"), 1), (original, 2)]:
        with pytest.raises(type(error)) as e:
            raiser(error)(None, None)
        assert type(e.value) is type(error) and e.value.exit_code == code  # `except UsageError` still catches it
        assert str(e.value) == f"plugin 'toy' build: {error}" and e.value.__cause__ is error
    assert e.value.name == "wide"  # its attributes come along
    with pytest.raises(UsageError) as e:  # named once, however deep: a dataset's error inside a plugin's train
        make(train=lambda run: raiser(UsageError("bad"))(None, None)).resolve("train")(None)
    assert str(e.value) == "plugin 'toy' build: bad"


def test_stops_and_errors_that_already_name_their_owner_pass_through():
    stop = ZooError("interrupted at step 7")
    stop.exit_code = 143
    inner = PluginError("dataset 'x' load raised OSError: gone")
    for error in (stop, inner):
        with pytest.raises(ZooError) as e:
            raiser(error)(None, None)
        assert e.value is error
    with pytest.raises(KeyboardInterrupt):
        raiser(KeyboardInterrupt())(None, None)


# --------------------------------------------------------------------------- what plugin functions return


def test_metrics_become_floats():
    import jax.numpy as jnp
    import numpy as np

    metrics = check_metrics({"a": 1, "b": np.float32(0.5), "c": jnp.asarray(2.25), "d": np.int64(3)})
    assert metrics == {"a": 1.0, "b": 0.5, "c": 2.25, "d": 3.0} and all(type(v) is float for v in metrics.values())


@pytest.mark.parametrize(
    ("result", "needle"),
    [
        ({"accuracy": "high"}, "metric 'accuracy' = 'high' (str), not a number"),
        ({"accuracy": "0.9"}, "metric 'accuracy' = '0.9' (str), not a number"),
        ({"loss": math.nan}, "metric 'loss' = nan, not a finite number"),
        ({"loss": [1.0, 2.0]}, "metric 'loss' = [1.0, 2.0] (list), not a number"),
        ({"loss": None}, "metric 'loss' = None (NoneType), not a number"),
        ({}, "dict, not a non-empty dict of metrics"),
        (0.5, "float, not a non-empty dict of metrics"),
    ],
)
def test_bad_metrics_name_the_key(result, needle):
    with pytest.raises(PluginError) as e:
        make(evaluate=lambda model, data: result).resolve("evaluate")(None, {})
    assert str(e.value) == f"plugin 'toy' evaluate returned {needle}"


def test_samples_are_checked():
    import numpy as np

    images = np.full((2, 3, 3, 1), 0.5, np.float32)
    assert check_samples(images, None, None, 2) is not None and check_samples(["a", "b"], None, None, 2) == ["a", "b"]
    bad = [
        (images * 3, 2, "values in [1.5, 1.5], outside [0, 1]"),
        (images, 3, "2 images, asked for 3"),
        (images[0], 2, "float32 (3, 3, 1), not images (n, H, W, C) or a list of texts"),
        (["a", 1], 2, "a list that is not all str"),
        (["a"], 2, "1 texts, asked for 2"),
        (np.full((2, 3, 3, 1), np.nan), 2, "outside [0, 1]"),
    ]
    for result, n, needle in bad:
        with pytest.raises(ValueError, match=re_escape(needle)):
            check_samples(result, None, None, n)


def test_predictions_are_checked():
    import numpy as np

    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]])
    np.testing.assert_array_equal(check_predictions(probabilities, None, np.zeros((2, 4))), probabilities)
    for result, needle in [
        (probabilities[0], "not probabilities (N, classes)"),
        (probabilities[:1], "1 rows for 2 inputs"),
        (probabilities * 2, "outside [0, 1]"),
        ([["cat", "dog"]] * 2, "not a list of slots"),  # a list is ranked candidates (API 1.2), and these are not
    ]:
        with pytest.raises(ValueError, match=re_escape(needle)):
            check_predictions(result, None, ["text one", "text two"])


def test_check_predictions_takes_ranked_candidates():
    """API 1.2: per input, slots (a fill-mask model: one per [MASK]) of candidates ranked best first."""
    good = [[[{"label": " not", "probability": 0.5}, {"label": " so", "probability": 0.25}]], []]
    assert check_predictions(good, None, ["a [MASK] b", "no slot here"]) is good
    slot = good[0][0]
    for result, needle in [
        (good[:1], "1 ranked results for 2 inputs"),
        ([[[]], []], "not a list of slots, each a non-empty list"),
        ([[[{"label": 3, "probability": 0.5}]], []], "not a dict with a str 'label'"),
        ([[slot[::-1]], []], "not ranked best first"),
        ([[[{"label": "x", "probability": 0.7}] * 2], []], "summing past 1"),
        ([[[{"label": "x", "probability": float("nan")}]], []], "not a finite number"),
    ]:
        with pytest.raises(ValueError, match=re_escape(needle)):
            check_predictions(result, None, ["a [MASK] b", "no slot here"])


def re_escape(text: str) -> str:
    import re

    return re.escape(text)
