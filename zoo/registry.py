"""Discovery: plugins from the ``zoo.plugins`` entry-point group, pretrained models from catalogues.

Everything here is light (no jax) and lazy: nothing is scanned before it is asked
for, and each plugin is isolated. Datasets (``zoo.datasets``, see ``zoo.data``) are
discovered by the same ``discover``. A plugin that fails to import, targets another
API major, is malformed, or shares its name with another distribution's plugin is
recorded as broken with its reason; every other plugin keeps working.

The plugins shipped in the ``flax-zoo`` distribution are the built-ins; they load
through the same entry points as everyone else's. ``ZOO_DISABLE_PLUGIN_AUTOLOAD=1``
loads only those.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from zoo import env
from zoo.catalog import Catalog, PretrainedEntry, load_catalog
from zoo.errors import UnknownName, ZooError
from zoo.plugin import Plugin

GROUP = "zoo.plugins"
BUILTIN_DISTRIBUTION = "flax-zoo"


@dataclasses.dataclass(frozen=True)
class Record:
    """One discovered entry point (a plugin, or a dataset in ``zoo.data``), healthy or broken.

    Attributes:
      name: the entry-point name.
      distribution: the distribution that declares it.
      target: the entry point's ``module:attribute``.
      value: the loaded object, or None when broken.
      error: why it is broken, or None.
    """

    name: str
    distribution: str
    target: str
    value: Any = None
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def ok(self) -> bool:
        return self.value is not None


class PluginRecord(Record):
    @property
    def plugin(self) -> Plugin | None:
        return self.value


class BrokenPlugin(ZooError):
    """The plugin (or dataset) exists but cannot be used; the message carries its reason."""


@functools.cache
def _claims(group: str) -> dict[str, list[tuple[metadata.EntryPoint, str]]]:
    """Entry-point name -> every (entry point, distribution) claiming it in ``group``."""
    by_name: dict[str, list[tuple[metadata.EntryPoint, str]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        if env.plugin_autoload_disabled() and dist_name != BUILTIN_DISTRIBUTION:
            continue
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            key = (dist_name, ep.name, ep.value)  # one dist can appear twice on sys.path
            if key not in seen:
                seen.add(key)
                by_name.setdefault(ep.name, []).append((ep, dist_name))
    return by_name


def _load_entry_point(ep: metadata.EntryPoint, distribution: str, kind: type, record_type: type[Record]) -> Record:
    """Import one entry point and check that it is a well-formed ``kind`` of that name."""
    record = functools.partial(record_type, ep.name, distribution, ep.value)
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - any import failure is the plugin's, not ours
        newer = isinstance(e, TypeError) and "unexpected keyword argument" in str(e)
        hint = "; it may target a newer plugin API than this zoo's: upgrade flax-zoo" if newer else ""
        return record(error=" ".join(f"import failed: {type(e).__name__}: {e}".split()) + hint)  # one line
    if not isinstance(obj, kind):
        return record(error=f"{ep.value} is a {type(obj).__name__}, not a {kind.public_name}")
    problems = obj.problems()
    if obj.name != ep.name:
        problems.insert(0, f"{kind.__name__.lower()} names itself {obj.name!r} but is registered as {ep.name!r}")
    if problems:
        return record(error="; ".join(problems))
    return record(value=obj)


@functools.cache
def discover(group: str, kind: type, record_type: type[Record] = Record) -> tuple[Record, ...]:
    """Every ``kind`` object found under entry-point ``group``, healthy and broken, sorted by name.

    ``kind`` has ``name``, ``problems()`` and ``public_name``. Two distributions claiming one name
    break that name, naming both, and neither is imported.
    """
    found = []
    for name, claims in sorted(_claims(group).items()):
        if len({dist for _, dist in claims}) > 1:
            owners = " and ".join(f"{dist} ({ep.value})" for ep, dist in claims)
            found.append(record_type(name, claims[0][1], claims[0][0].value, error=f"name claimed by both {owners}"))
        else:
            found.append(_load_entry_point(*claims[0], kind, record_type))
    return tuple(found)


def _with_catalog_checked(record: Record) -> Record:
    """A plugin's own catalogue is part of it: a bad one breaks that plugin, not the zoo."""
    if record.value is None or record.value.catalog is None:
        return record
    try:
        _read_catalog(_plugin_catalog_path(record))
    except ZooError as e:
        return PluginRecord(record.name, record.distribution, record.target, error=f"its catalogue is unusable: {e}")
    return record


@functools.cache
def records() -> tuple[PluginRecord, ...]:
    """Every plugin found, healthy and broken, sorted by name."""
    return tuple(_with_catalog_checked(r) for r in discover(GROUP, Plugin, PluginRecord))


def plugins() -> dict[str, Plugin]:
    """Healthy plugins by name."""
    return {r.name: r.plugin for r in records() if r.plugin is not None}


def get_record(name: str) -> PluginRecord:
    """The record of plugin ``name``, healthy or broken; UnknownName otherwise."""
    for r in records():
        if r.name == name:
            return r
    raise UnknownName("plugin", name, [r.name for r in records()])


def get_plugin(name: str) -> Plugin:
    """The healthy plugin called ``name``; UnknownName or BrokenPlugin otherwise."""
    record = get_record(name)
    if record.plugin is None:
        raise BrokenPlugin(f"plugin {name!r} is broken: {record.error}")
    return record.plugin


def builtin_catalog_path() -> Path:
    """The catalogue shipped with flax-zoo: inside the wheel, or at the source checkout's root."""
    package = Path(__file__).resolve().parent
    installed = package / "_shipped" / "registry.toml"
    return installed if installed.exists() else package.parent / "registry.toml"


def _plugin_catalog_path(record: PluginRecord) -> Path | None:
    if record.plugin is None or not record.plugin.catalog:
        return None
    module = sys.modules.get(record.target.split(":")[0]) or importlib.import_module(record.target.split(":")[0])
    return Path(module.__file__).resolve().parent / record.plugin.catalog


@functools.cache
def _read_catalog(path: Path) -> tuple[PretrainedEntry, ...]:
    """One catalogue file, parsed once per discovery (plugin checks and ``catalog`` share it)."""
    return tuple(load_catalog(path))


@functools.cache
def catalog() -> Catalog:
    """Pretrained entries from the built-in catalogue, plugin catalogues and ``ZOO_REGISTRY``.

    A name defined twice is an error naming both files. Entries whose plugin is
    unknown or broken are kept (``zoo list`` shows them) and fail when loaded.
    """
    paths = [builtin_catalog_path()]
    paths += [p for r in records() if (p := _plugin_catalog_path(r)) is not None]
    paths += env.extra_catalogs()
    paths = list(dict.fromkeys(p.absolute() for p in paths))  # one file named twice is read once
    entries: dict[str, PretrainedEntry] = {}
    for path in paths:
        if path == paths[0] and not path.exists():
            continue  # a core without shipped weights is still a zoo
        for entry in _read_catalog(path):
            if entry.name in entries:
                raise ZooError(
                    f"pretrained model {entry.name!r} is defined in both {entries[entry.name].source} and {entry.source}"
                )
            entries[entry.name] = entry
    if shadowing := sorted(entries.keys() & {r.name for r in records()}):  # `zoo info NAME` must mean one thing
        entry = entries[shadowing[0]]
        raise ZooError(f"pretrained model {entry.name!r} in {entry.source} has the name of a plugin; rename the entry")
    return Catalog(entries)


def get_pretrained(name: str) -> PretrainedEntry:
    entries = catalog().entries
    if name not in entries:
        raise UnknownName("pretrained model", name, entries)
    return entries[name]


def reset() -> None:
    """Forget what was discovered (tests install and remove plugins and datasets)."""
    _claims.cache_clear()
    discover.cache_clear()
    records.cache_clear()
    catalog.cache_clear()
    _read_catalog.cache_clear()
