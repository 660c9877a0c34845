"""The ``zoo`` pytest plugin (entry point ``pytest11``): runs the conformance kit as test items.

pytest loads this module in every session of an environment where flax-zoo is
installed, so it stays light: it imports pytest only, and the kit
(``zoo.testing``, then jax) on first use by a suite. It

- collects a suite made by ``zoo.testing.plugin_conformance`` under any name
  (pytest itself collects only classes named ``Test*``);
- registers the ``zoo_conformance`` marker every such test carries.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

SUITE_ATTRIBUTE = "__zoo_conformance__"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zoo_conformance(plugin): a check of the zoo conformance kit on PLUGIN")


def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> pytest.Class | None:
    if isinstance(obj, type) and getattr(obj, SUITE_ATTRIBUTE, None):
        return pytest.Class.from_parent(collector, name=name)
    return None


def make_suite(plugin_name: str, *, steps: int, batch_size: int | None) -> type:
    """A test class running each check of ``zoo.testing`` on ``plugin_name`` as its own item.

    Checks that later ones build on (the one-device build, training, restoring)
    run once, in the test named for them; a later test that needs a failed one
    fails with one line naming it rather than repeating its traceback.
    """
    from zoo import testing

    outcomes: dict[str, tuple[bool, Any]] = {}

    def once(step: str, check: Callable[[], Any]) -> Any:
        if step not in outcomes:
            try:
                outcomes[step] = (True, check())
            except Exception as e:  # noqa: BLE001 - recorded, and raised to the test that ran it
                outcomes[step] = (False, e)
                raise
        ok, value = outcomes[step]
        if not ok:
            pytest.fail(f"needs {step}, which failed: {value}", pytrace=False)
        return value

    def plugin() -> Any:
        def find() -> Any:
            from zoo import registry
            from zoo.errors import ZooError

            try:
                found = registry.get_plugin(plugin_name)
            except ZooError as e:  # unknown or broken: its one line, not the registry's traceback
                raise AssertionError(f"{e} (is its package installed? pip install -e .)") from None
            if message := testing.source_tree_warning(plugin_name):
                warnings.warn(message, testing.SourceTreeWarning, stacklevel=1)
            return found

        return once("discovery", find)

    def workdir(tmp_path_factory: pytest.TempPathFactory) -> Any:
        return once("a workdir", lambda: tmp_path_factory.mktemp(f"zoo-{plugin_name}") / "run")

    def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
        folder = workdir(tmp_path_factory)
        return once("training", lambda: testing.train_briefly(plugin(), folder, steps=steps, batch_size=batch_size))

    def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
        result = trained(tmp_path_factory)
        return once("restoring", lambda: testing.check_restore(plugin(), workdir(tmp_path_factory), result.params_digest))

    def metrics(tmp_path_factory: pytest.TempPathFactory) -> Any:
        model = loaded(tmp_path_factory)
        return once("evaluate", lambda: testing.check_evaluate(plugin(), model, testing.synthetic_data(plugin())[1]))

    def one_device() -> Any:
        return once("the one-device build", lambda: testing.check_builds_on_one_device(plugin()))

    def needs(field: str) -> None:
        if getattr(plugin(), field, None) is None:
            pytest.skip(f"plugin {plugin_name!r} has no {field}")

    class Conformance:
        pytestmark = [pytest.mark.zoo_conformance(plugin_name)]

        def test_discovery_is_light(self):
            plugin()
            testing.check_light_import(plugin_name)

        def test_contract(self):
            testing.check_contract(plugin())

        def test_variants_build(self):
            testing.check_variants(plugin())

        def test_builds_on_one_device(self):
            one_device()

        def test_builds_on_several_devices(self):
            testing.check_builds_on_several_devices(plugin(), one_device())

        def test_trains_a_few_steps(self, tmp_path_factory):
            trained(tmp_path_factory)

        def test_save_restore_round_trip(self, tmp_path_factory):
            loaded(tmp_path_factory)

        def test_sample(self, tmp_path_factory):
            needs("sample")
            testing.check_sample(plugin(), loaded(tmp_path_factory))

        def test_predict(self, tmp_path_factory):
            needs("predict")
            if not testing.check_predict(plugin(), loaded(tmp_path_factory), testing.synthetic_data(plugin())[1]):
                pytest.skip("the kit feeds predict images; its dataset has none (test texts in your own tests)")

        def test_evaluate(self, tmp_path_factory):
            needs("evaluate")
            metrics(tmp_path_factory)

        def test_datasets(self):
            testing.check_datasets(plugin())

        def test_catalogue(self, tmp_path_factory):
            reported = metrics(tmp_path_factory) if plugin().evaluate is not None else None
            testing.check_catalogue(plugin(), reported)

    setattr(Conformance, SUITE_ATTRIBUTE, plugin_name)
    Conformance.__qualname__ = Conformance.__name__ = f"Conformance_{plugin_name}"
    return Conformance
