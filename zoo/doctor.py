"""``zoo doctor``: is every plugin, dataset and catalogue entry usable? One line per problem.

Discovery only checks shapes (``zoo list`` must not import jax); the doctor goes
further, so that CI can gate on it:

- every reference of every plugin and dataset resolves to a callable (the config
  to a dataclass), and every dataset a plugin or catalogue entry names exists;
- each dataset's ``is_cached`` runs and ``synthetic(4, 0)`` is a batch of 4;
- each variant of each plugin makes a valid config and builds (abstractly:
  ``nnx.eval_shape``, no memory, no compute);
- unless ``quick``: the default variant, built for real, goes through ``evaluate``
  on 8 synthetic examples, ``sample(2)`` and ``predict`` on those examples, and
  their results pass the contract's checks (``zoo.plugin.check_*``).

Nothing is trained or downloaded. The real calls cost a compile each: measured
5-70 s per first-party plugin on the shared 2-core machine (classifiers' evaluate
compiles a PGD attack), so ``--quick`` and ``zoo doctor NAME`` exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from zoo import data as datasets
from zoo import registry
from zoo.errors import UnknownName, ZooError
from zoo.plugin import Plugin

SMOKE_EXAMPLES = 8


@dataclasses.dataclass(frozen=True)
class Checkup:
    """What the doctor found about one plugin, dataset or catalogue entry."""

    kind: str  # "plugin", "dataset", "pretrained" or "catalogue"
    name: str
    distribution: str | None
    problems: tuple[str, ...]
    unchecked: str | None = None  # why it could not be checked (a problem reported on another line)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        error = "; ".join(self.problems) or None  # one string, as `zoo list` shows a broken plugin's reason
        return {"name": self.name, "distribution": self.distribution, "ok": self.ok, "error": error,
                "problems": list(self.problems), "unchecked": self.unchecked}  # fmt: skip

    def lines(self) -> list[str]:
        """``zoo doctor``'s text: ``kind name (distribution): ok``, or one BROKEN line per problem."""
        head = " ".join(filter(None, [self.kind, self.name])) + (f" ({self.distribution})" if self.distribution else "")
        if self.problems:
            return [f"{head}: BROKEN: {problem}" for problem in self.problems]
        return [f"{head}: " + (f"not checked: {self.unchecked}" if self.unchecked else "ok")]


def _attempt(problems: list[str], check, *args: Any) -> None:
    """Run one check unless an earlier one failed; a failure becomes a problem line (plugin errors name the plugin)."""
    if problems:
        return  # later checks build on earlier ones: the first failure is the one to fix
    try:
        check(*args)
    except ZooError as e:
        problems.append(str(e))
    except Exception as e:  # noqa: BLE001 - a check must never take the doctor down; the rest still gets checked
        problems.append(f"could not be checked: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------- datasets


def _exercise_dataset(dataset: datasets.Dataset) -> None:
    for field in ("fetch", "load", "is_cached", "synthetic"):
        dataset.resolve(field)
    dataset.resolve("is_cached")()
    dataset.resolve("synthetic")(4, 0)  # guarded: checked to be a batch of 4


def check_dataset(record: datasets.DatasetRecord) -> Checkup:
    problems = [record.error] if record.error else []
    if record.dataset is not None:
        _attempt(problems, _exercise_dataset, record.dataset)
    return Checkup("dataset", record.name, record.distribution, tuple(problems))


# --------------------------------------------------------------------------- plugins


def _resolve_references(plugin: Plugin) -> None:
    config = plugin.resolve("config")
    if not dataclasses.is_dataclass(config) or not isinstance(config, type):
        raise ZooError(f"plugin {plugin.name!r}: config {plugin.config!r} is not a dataclass")
    for field in ("build", "train", "sample", "evaluate", "predict"):
        if getattr(plugin, field) is not None and not callable(plugin.resolve(field)):
            raise ZooError(f"plugin {plugin.name!r}: {field} {getattr(plugin, field)!r} is not callable")


def _build_every_variant(plugin: Plugin) -> None:
    from flax import nnx

    from zoo.config import make_config

    build = plugin.resolve("build")
    for variant in plugin.variants:
        config = make_config(plugin, variant)
        with nnx.use_eager_sharding(False):
            nnx.eval_shape(lambda config=config: build(config, nnx.Rngs(0)))


def _use_default_variant(plugin: Plugin, dataset: datasets.Dataset | None) -> None:
    """Build the default variant for real; evaluate, sample and predict on synthetic data, results checked."""
    import jax

    from zoo import api, prediction

    model = api.build(plugin.name)
    batch = dataset.resolve("synthetic")(SMOKE_EXAMPLES, 0) if dataset is not None else None
    if plugin.evaluate is not None and batch is not None:
        plugin.resolve("evaluate")(model, batch)
    if plugin.sample is not None:
        plugin.resolve("sample")(model, jax.random.key(0), 2)
    if plugin.predict is not None and batch is not None and dataset.image_shape and "image" in batch:
        plugin.resolve("predict")(model, prediction.prepare(batch["image"], dataset.image_shape))


def check_plugin(
    record: registry.PluginRecord, usable_datasets: dict[str, datasets.Dataset], broken_datasets: set[str], quick: bool
) -> Checkup:
    """Discovery's verdict, then references, datasets, every variant built abstractly, the default one used.

    A plugin whose dataset is installed but broken is not checked further: that
    problem is the dataset's, reported on its own line.
    """
    problems = [record.error] if record.error else []
    plugin = record.plugin
    if plugin is None:
        return Checkup("plugin", record.name, record.distribution, tuple(problems))
    if broken := [d for d in plugin.datasets if d in broken_datasets]:
        return Checkup("plugin", record.name, record.distribution, (), f"its dataset {broken[0]!r} is broken")
    missing = [d for d in plugin.datasets if d not in usable_datasets]
    problems += [f"plugin {plugin.name!r} trains on dataset {d!r}, which is not installed" for d in missing]
    _attempt(problems, _resolve_references, plugin)
    _attempt(problems, _build_every_variant, plugin)
    if not quick:
        first = usable_datasets.get(plugin.datasets[0]) if plugin.datasets else None
        _attempt(problems, _use_default_variant, plugin, first)
    return Checkup("plugin", record.name, record.distribution, tuple(problems))


# --------------------------------------------------------------------------- the catalogue


def check_catalog(plugins: set[str], usable_plugins: set[str], usable_datasets: set[str]) -> list[Checkup]:
    """The entries of ``plugins``: one problem per missing plugin or dataset; a catalogue that cannot be read is one."""
    try:
        entries = [e for e in registry.catalog().entries.values() if e.plugin in plugins or not plugins]
    except ZooError as e:
        return [Checkup("catalogue", "", None, (str(e),))]
    found = []
    for entry in entries:
        problems = []
        if entry.plugin not in usable_plugins:
            problems.append(f"plugin {entry.plugin!r} is not available (named in {entry.source})")
        if entry.dataset not in usable_datasets:
            problems.append(f"dataset {entry.dataset!r} is not available (named in {entry.source})")
        found.append(Checkup("pretrained", entry.name, None, tuple(problems)))
    return found


def examine(names: Collection[str] = (), *, quick: bool = False) -> dict[str, list[Checkup]]:
    """Check every dataset, plugin and pretrained entry; or the plugins and datasets called ``names``.

    ``quick`` skips the real build and the calls of evaluate, sample and predict.
    Returns ``{"datasets": [...], "plugins": [...], "pretrained": [...]}``; a named
    plugin brings the datasets it trains on and its pretrained entries along.
    """
    dataset_records, plugin_records = datasets.records(), registry.records()
    known = [r.name for r in (*dataset_records, *plugin_records)]
    for name in names:
        if name not in known:
            raise UnknownName("plugin or dataset", name, known)
    plugins = [r for r in plugin_records if not names or r.name in names]
    used = {d for r in plugins if r.plugin is not None for d in r.plugin.datasets}
    dataset_checks = [check_dataset(r) for r in dataset_records if not names or r.name in names or r.name in used]
    usable_datasets = {c.name: datasets.get(c.name) for c in dataset_checks if c.ok}
    broken_datasets = {c.name for c in dataset_checks if not c.ok}
    plugin_checks = [check_plugin(r, usable_datasets, broken_datasets, quick) for r in plugins]
    return {
        "datasets": dataset_checks,
        "plugins": plugin_checks,
        "pretrained": check_catalog(set(names), {c.name for c in plugin_checks if c.ok}, set(usable_datasets)),
    }
