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
from types import ModuleType
from typing import Any

import pytest

SUITE_ATTRIBUTE = "__zoo_conformance__"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zoo_conformance(plugin): a check of the zoo conformance kit on PLUGIN")


def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: Any) -> pytest.Class | None:
    if isinstance(obj, type) and getattr(obj, SUITE_ATTRIBUTE, None):
        return pytest.Class.from_parent(collector, name=name)
    return None


class _Steps:
    """The steps of one suite that later checks build on, each run once.

    A step runs in the first test that needs it and fails there with its own
    message; every later test that needs it fails with one line naming it.
    """

    def __init__(self, kit: ModuleType, plugin_name: str, steps: int, batch_size: int | None):
        self.testing, self.name, self.steps, self.batch_size = kit, plugin_name, steps, batch_size
        self.outcomes: dict[str, tuple[bool, Any]] = {}

    def once(self, step: str, check: Callable[[], Any]) -> Any:
        if step not in self.outcomes:
            try:
                self.outcomes[step] = (True, check())
            except Exception as e:  # noqa: BLE001 - recorded, and raised to the test that ran it
                self.outcomes[step] = (False, e)
                raise
        ok, value = self.outcomes[step]
        if not ok:
            pytest.fail(f"needs {step}, which failed: {value}", pytrace=False)
        return value

    def plugin(self) -> Any:
        return self.once("discovery", self._discover)

    def _discover(self) -> Any:
        from zoo import registry
        from zoo.errors import ZooError

        try:
            found = registry.get_plugin(self.name)
        except ZooError as e:  # unknown or broken: its one line, not the registry's traceback
            raise AssertionError(f"{e} (is its package installed? pip install -e .)") from None
        if message := self.testing.source_tree_warning(self.name):
            warnings.warn(message, self.testing.SourceTreeWarning, stacklevel=1)
        return found

    def one_device(self) -> Any:
        return self.once("the one-device build", lambda: self.testing.check_builds_on_one_device(self.plugin()))

    def workdir(self, factory: pytest.TempPathFactory) -> Any:
        return self.once("a workdir", lambda: factory.mktemp(f"zoo-{self.name}") / "run")

    def trained(self, factory: pytest.TempPathFactory) -> Any:
        train = self.testing.train_briefly
        workdir = self.workdir(factory)
        return self.once("training", lambda: train(self.plugin(), workdir, steps=self.steps, batch_size=self.batch_size))

    def loaded(self, factory: pytest.TempPathFactory) -> Any:
        digest = self.trained(factory).params_digest
        return self.once("restoring", lambda: self.testing.check_restore(self.plugin(), self.workdir(factory), digest))

    def metrics(self, factory: pytest.TempPathFactory) -> Any:
        model, data = self.loaded(factory), self.testing.synthetic_data(self.plugin())[1]
        return self.once("evaluate", lambda: self.testing.check_evaluate(self.plugin(), model, data))

    def needs(self, field: str) -> None:
        if getattr(self.plugin(), field, None) is None:
            pytest.skip(f"plugin {self.name!r} has no {field}")


def make_suite(kit: ModuleType, plugin_name: str, *, steps: int, batch_size: int | None) -> type:
    """A test class running each check of ``kit`` (``zoo.testing``) on ``plugin_name`` as its own item.

    The kit is passed in, not imported: ``zoo.testing`` imports this module, and an
    import back would be a cycle (tests/zoo/test_imports.py).
    """
    testing = kit
    run = _Steps(kit, plugin_name, steps, batch_size)

    class Conformance:
        pytestmark = [pytest.mark.zoo_conformance(plugin_name)]

        def test_discovery_is_light(self):
            run.plugin()
            testing.check_light_import(plugin_name)

        def test_contract(self):
            testing.check_contract(run.plugin())

        def test_variants_build(self):
            testing.check_variants(run.plugin())

        def test_builds_on_one_device(self):
            run.one_device()

        def test_builds_on_several_devices(self):
            testing.check_builds_on_several_devices(run.plugin(), run.one_device())

        def test_trains_a_few_steps(self, tmp_path_factory):
            run.trained(tmp_path_factory)

        def test_save_restore_round_trip(self, tmp_path_factory):
            run.loaded(tmp_path_factory)

        def test_sample(self, tmp_path_factory):
            run.needs("sample")
            testing.check_sample(run.plugin(), run.loaded(tmp_path_factory))

        def test_predict(self, tmp_path_factory):
            run.needs("predict")
            data = testing.synthetic_data(run.plugin())[1]
            if not testing.check_predict(run.plugin(), run.loaded(tmp_path_factory), data):
                pytest.skip("the kit feeds predict images; its dataset has none (test texts in your own tests)")

        def test_evaluate(self, tmp_path_factory):
            run.needs("evaluate")
            run.metrics(tmp_path_factory)

        def test_datasets(self):
            testing.check_datasets(run.plugin())

        def test_catalogue(self, tmp_path_factory):
            reported = run.metrics(tmp_path_factory) if run.plugin().evaluate is not None else None
            testing.check_catalogue(run.plugin(), reported)

    setattr(Conformance, SUITE_ATTRIBUTE, plugin_name)
    Conformance.__qualname__ = Conformance.__name__ = f"Conformance_{plugin_name}"
    return Conformance
