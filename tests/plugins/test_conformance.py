"""Every registered plugin passes the conformance kit: contract, light import, variants, train/load/sample."""

from __future__ import annotations

import pytest

from zoo import registry, testing

PLUGINS = sorted(registry.plugins())


def test_registry_has_first_party_plugins():
    assert "vae" in PLUGINS


@pytest.mark.parametrize("name", PLUGINS)
def test_plugin_conformance(name, tmp_path):
    report = testing.check_plugin(name, tmp_path / name)
    assert len(report["params_digest"]) == 64
