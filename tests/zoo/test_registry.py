"""zoo.registry: entry-point discovery beside the built-ins, per-plugin isolation, catalogue merging.

Third-party plugins here are real distributions (a ``.dist-info`` folder and the
module its entry point names) on ``sys.path``, found by ``importlib.metadata``
exactly as an installed package is.
"""

from __future__ import annotations

import os
import sys

import pytest
from helpers import (
    broken_plugins,
    catalog_toml,
    clean_zoo_env,  # noqa: F401 - autouse fixture
    duplicate_vae,
    entry_toml,
    healthy_plugin,
    plugin_source,
    site,  # noqa: F401 - fixture
    write_catalog,
    write_distribution,
)

import zoo
from zoo import registry
from zoo.errors import UnknownName, UsageError, ZooError
from zoo.registry import BrokenPlugin


BUILTIN = {r.name for r in registry.records() if r.builtin}  # the plugins flax-zoo ships


def by_name() -> dict[str, registry.PluginRecord]:
    return {r.name: r for r in registry.records()}


def test_builtin_vae_is_found_through_its_entry_point():
    vae = by_name()["vae"]
    assert vae.ok and vae.builtin and vae.error is None
    assert vae.distribution == "flax-zoo" and vae.target == "zoo_vae:plugin"
    assert registry.get_plugin("vae").name == "vae"
    assert "vae" in registry.plugins()


def test_records_are_sorted_and_cached_until_reset(site):
    first = registry.records()
    assert [r.name for r in first] == sorted(r.name for r in first)
    healthy_plugin(site)
    assert "fakeok" not in by_name()  # discovery is cached...
    registry.reset()
    assert by_name()["fakeok"].ok  # ...until reset


def test_third_party_plugin_beside_the_builtin(site):
    healthy_plugin(site, "fakeok", "fake-ok")
    records = by_name()
    assert records["fakeok"].ok and not records["fakeok"].builtin
    assert records["fakeok"].distribution == "fake-ok" and records["fakeok"].target == "fakeok_pkg:plugin"
    assert records["vae"].ok
    assert set(registry.plugins()) >= {"vae", "fakeok"}
    # discovery imported the light module, not the model code
    assert "fakeok_pkg" in sys.modules and "fakeok_pkg_model" not in sys.modules


def test_other_entry_point_groups_are_ignored(site):
    write_distribution(site, "fake-other", {"other": "other_pkg:plugin"}, {"other_pkg": "raise ImportError"}, group="x.y")
    assert "other" not in by_name()


def test_each_broken_plugin_is_isolated(site):
    reasons = broken_plugins(site)
    healthy_plugin(site)
    records = by_name()
    for name, reason in reasons.items():
        record = records[name]
        assert not record.ok and record.plugin is None, name
        assert reason in record.error, (name, record.error)
        assert record.distribution == f"fake-{name}"
        with pytest.raises(BrokenPlugin) as e:
            registry.get_plugin(name)
        assert str(e.value).startswith(f"plugin {name!r} is broken: "), e.value
        assert reason in str(e.value) and "\n" not in str(e.value)
        assert not isinstance(e.value, UsageError)  # exit code 1: exists, but cannot be used
    # every healthy plugin still works
    assert records["vae"].ok and records["fakeok"].ok
    assert set(registry.plugins()) == {*BUILTIN, "fakeok"}
    names = {m.name: m for m in zoo.list_models()}
    assert set(reasons) | {"vae", "fakeok"} <= set(names)
    assert all(names[n].status.startswith("broken: ") for n in reasons)


def test_unknown_plugin_suggests_names():
    with pytest.raises(UnknownName) as e:
        registry.get_plugin("vea")
    assert "did you mean 'vae'" in str(e.value)
    assert isinstance(e.value, UsageError)


def test_two_distributions_claiming_a_name_is_an_error_naming_both(site):
    duplicate_vae(site, "evil-vae")
    healthy_plugin(site)
    vae = by_name()["vae"]
    assert not vae.ok
    assert "flax-zoo" in vae.error and "evil-vae" in vae.error
    assert "zoo_vae:plugin" in vae.error and "evil_vae:plugin" in vae.error
    with pytest.raises(BrokenPlugin) as e:
        registry.get_plugin("vae")
    assert "flax-zoo" in str(e.value) and "evil-vae" in str(e.value)
    assert "evil_vae" not in sys.modules  # neither claimant is trusted, so neither is imported
    assert by_name()["fakeok"].ok


def test_one_distribution_seen_twice_is_not_a_duplicate(site, tmp_path, monkeypatch):
    healthy_plugin(site)
    monkeypatch.syspath_prepend(str(site))  # the same folder on sys.path twice
    monkeypatch.syspath_prepend(str(site) + "/")
    assert by_name()["fakeok"].ok


def test_disable_autoload_keeps_only_builtins(site, monkeypatch):
    broken_plugins(site)
    healthy_plugin(site)
    duplicate_vae(site)
    monkeypatch.setenv("ZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    records = by_name()
    assert set(records) == BUILTIN
    assert records["vae"].ok  # the impostor is not even seen
    monkeypatch.setenv("ZOO_DISABLE_PLUGIN_AUTOLOAD", "0")
    registry.reset()
    assert "fakeok" in by_name()


def test_well_formed_ref_to_missing_code_fails_on_use(site):
    write_distribution(
        site, "fake-lazy", {"lazy": "lazy_pkg:plugin"}, {"lazy_pkg": plugin_source("lazy", "lazy_model_not_installed")}
    )
    assert by_name()["lazy"].ok  # refs are lazy: listing does not import them
    with pytest.raises(ZooError) as e:
        zoo.build("lazy")
    assert "lazy_model_not_installed" in str(e.value) and "config" in str(e.value)


def test_build_a_third_party_plugin_and_refuse_a_broken_one(site):
    healthy_plugin(site)
    reasons = broken_plugins(site)
    model = zoo.build("fakeok", variant="large", seed=0)
    assert model.kernel[...].shape == (2, 5)
    assert zoo.build("fakeok", features=4).kernel[...].shape == (2, 4)
    for name, reason in reasons.items():
        with pytest.raises(BrokenPlugin) as e:
            zoo.build(name)
        assert reason in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UnknownName):
        zoo.build("fakeko")


# --------------------------------------------------------------------------- catalogues of plugins


def catalogue_plugin(site, name: str, catalog: str | None, text: str | None):
    pkg = f"{name}_pkg"
    write_distribution(
        site,
        f"fake-{name}",
        {name: f"{pkg}:plugin"},
        {f"{pkg}.__init__": plugin_source(name, "m", catalog=repr(catalog))},
    )
    if text is not None:
        (site / pkg / "pretrained.toml").write_text(text)


def test_a_plugins_own_catalogue_is_merged(site):
    catalogue_plugin(site, "withcat", "pretrained.toml", catalog_toml(entry_toml("withcat-small", plugin='"withcat"')))
    entry = registry.get_pretrained("withcat-small")
    assert entry.source == site / "withcat_pkg" / "pretrained.toml"
    assert registry.get_plugin("withcat").catalog == "pretrained.toml"
    info = zoo.info("withcat")
    assert info.details["pretrained"] == ["withcat-small"]


@pytest.mark.parametrize(
    ("catalog", "text", "needle"),
    [
        ("pretrained.toml", None, "cannot read"),
        ("pretrained.toml", "schema = 1\n[models.x]\nplugin = 1\n", "pretrained.toml"),
        ("pretrained.toml", catalog_toml(entry_toml("x", checkpoint='"../../outside"')), "escapes"),
    ],
)
def test_a_bad_plugin_catalogue_breaks_that_plugin_only(site, catalog, text, needle):
    catalogue_plugin(site, "badcat", catalog, text)
    healthy_plugin(site)
    record = by_name()["badcat"]
    assert not record.ok and needle in record.error
    assert by_name()["fakeok"].ok and by_name()["vae"].ok
    registry.catalog()  # the rest of the zoo's catalogue still loads
    assert {m.name for m in zoo.list_models()} >= {"badcat", "fakeok", "vae"}


def test_extra_catalogues_and_conflicts(tmp_path, monkeypatch, site):
    catalogue_plugin(site, "withcat", "pretrained.toml", catalog_toml(entry_toml("shared", plugin='"withcat"')))
    extra = write_catalog(tmp_path / "extra.toml", entry_toml("only-extra"))
    monkeypatch.setenv("ZOO_REGISTRY", str(extra))
    assert {"shared", "only-extra"} <= set(registry.catalog().entries)
    clash = write_catalog(tmp_path / "clash.toml", entry_toml("shared"))
    monkeypatch.setenv("ZOO_REGISTRY", str(clash))
    registry.reset()
    with pytest.raises(ZooError) as e:
        registry.catalog()
    assert "'shared'" in str(e.value)
    assert str(clash) in str(e.value) and str(site / "withcat_pkg" / "pretrained.toml") in str(e.value)


def test_pretrained_entry_of_a_missing_plugin_is_listed_as_broken(tmp_path, monkeypatch):
    extra = write_catalog(tmp_path / "extra.toml", entry_toml("orphan", plugin='"gpt9"'), entry_toml("fine"))
    monkeypatch.setenv("ZOO_REGISTRY", str(extra))
    listed = {m.name: m for m in zoo.list_models(pretrained=True)}
    assert listed["orphan"].status == "broken: plugin 'gpt9' is not available"
    assert listed["fine"].status == "ok"
    with pytest.raises(UnknownName) as e:
        registry.get_pretrained("fien")
    assert "did you mean 'fine'" in str(e.value)


def test_a_catalogue_named_twice_is_read_once(tmp_path, monkeypatch):
    extra = write_catalog(tmp_path / "extra.toml", entry_toml("twice"))
    monkeypatch.setenv("ZOO_REGISTRY", os.pathsep.join([str(extra), str(tmp_path / "." / "extra.toml")]))
    registry.reset()
    assert "twice" in registry.catalog().entries


def test_a_plugin_passing_a_field_this_zoo_lacks_is_told_to_upgrade(site):
    source = plugin_source("future", "future_model", api=(1, 9), extra="", explain="'a field of API 1.9'")
    write_distribution(site, "fake-future", {"future": "future_pkg:plugin"}, {"future_pkg": source})
    record = by_name()["future"]
    assert not record.ok
    assert "unexpected keyword argument 'explain'" in record.error and "upgrade flax-zoo" in record.error


def test_a_plugin_needing_a_later_minor_is_told_to_upgrade(site):
    write_distribution(site, "fake-later", {"later": "later_pkg:plugin"}, {"later_pkg": plugin_source("later", "m", api=(1, 9))})
    from zoo.plugin import API_MINOR, API_VERSION

    assert by_name()["later"].error == f"needs plugin API 1.9, this zoo speaks {API_VERSION}.{API_MINOR}; upgrade flax-zoo"
