"""The Python API (re-exported by ``zoo``): list, inspect, build, train, load, sample, verify.

Listing and inspecting work from Plugin objects and catalogues alone and never
import jax; everything else imports it on first use.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from zoo import registry
from zoo.errors import IntegrityError, UnknownName, UsageError, ZooError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One line of ``zoo list``; with ``details`` filled, what ``zoo info`` shows.

    A "plugin" entry is an architecture family you can build or train; a
    "pretrained" entry is a catalogued checkpoint of one.
    """

    name: str
    kind: Literal["plugin", "pretrained"]
    plugin: str
    summary: str
    status: str = "ok"  # "ok", or "broken: <reason>"
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"details": dict(self.details)}


def _plugin_info(record: registry.PluginRecord, details: bool) -> ModelInfo:
    plugin = record.plugin
    extra: dict[str, Any] = {"distribution": record.distribution, "entry_point": record.target, "builtin": record.builtin}
    if plugin is None:
        return ModelInfo(record.name, "plugin", record.name, "", f"broken: {record.error}", extra if details else {})
    if details:
        extra |= {
            "api": plugin.api,
            "functions": [f for f in ("sample", "predict", "evaluate") if getattr(plugin, f) is not None],
            "variants": {k: dict(v) for k, v in plugin.variants.items()},
            "default_variant": plugin.default_variant,
            "datasets": list(plugin.datasets),
            "metric": list(plugin.metric) if plugin.metric else None,
            "pretrained": sorted(e.name for e in registry.catalog().entries.values() if e.plugin == record.name),
        }
    return ModelInfo(record.name, "plugin", record.name, plugin.summary, "ok", extra if details else {})


def _pretrained_info(entry: Any, details: bool) -> ModelInfo:
    healthy = registry.plugins()
    status = "ok" if entry.plugin in healthy else f"broken: plugin {entry.plugin!r} is not available"
    extra = entry.to_dict() | {"metrics": dict(entry.metrics)} if details else {"metrics": dict(entry.metrics)}
    return ModelInfo(entry.name, "pretrained", entry.plugin, entry.description, status, extra)


def list_models(
    pattern: str | None = None, *, pretrained: bool = False, plugin: str | None = None
) -> list[ModelInfo]:
    """Plugins and pretrained models whose names match the fnmatch ``pattern``.

    ``pretrained=True`` lists only catalogued checkpoints; ``plugin`` keeps those of one plugin.
    """
    found = []
    if not pretrained:
        found += [_plugin_info(r, False) for r in registry.records()]
    found += [_pretrained_info(e, False) for e in registry.catalog().entries.values()]
    if pattern:
        found = [m for m in found if fnmatch.fnmatchcase(m.name, pattern)]
    if plugin:
        registry.get_record(plugin)  # an unknown plugin is an error, not an empty list
        found = [m for m in found if m.plugin == plugin]
    return sorted(found, key=lambda m: (m.kind != "pretrained", m.name))


def info(name: str) -> ModelInfo:
    """Everything known about a pretrained model or a plugin, by name (pretrained names first)."""
    entries = registry.catalog().entries
    if name in entries:
        return _pretrained_info(entries[name], True)
    if name in {r.name for r in registry.records()}:
        return _plugin_info(registry.get_record(name), True)
    raise UnknownName("model or plugin", name, [*entries, *(r.name for r in registry.records())])


def build(plugin: str, variant: str | None = None, *, seed: int = 0, **overrides: Any) -> Any:
    """A freshly initialised ``nnx.Module`` of ``plugin`` (single device, unsharded).

    Initialised from the same ``init`` random stream as ``zoo train --seed SEED``, so
    it equals that run's model before its first step.
    """
    p = registry.get_plugin(plugin)  # an unknown name fails before jax is imported

    from flax import nnx

    from zoo import memory
    from zoo.config import make_config
    from zoo.training.config import random_stream

    config = make_config(p, variant, overrides)
    make = lambda: p.resolve("build")(config, nnx.Rngs(random_stream(seed, "init")))  # noqa: E731
    with nnx.use_eager_sharding(False):
        memory.check_parameters(nnx.state(nnx.eval_shape(make)), plugin)
        return make()


def _split_settings(config_cls: type, train_cls: type, settings: Mapping[str, Any]) -> tuple[dict, dict]:
    """``--set`` keys -> (model overrides, train overrides).

    ``model.X`` and ``train.X`` say which explicitly; a bare key goes to the model
    config if it has that field, else to the training config.
    """
    model_fields = {f.name for f in dataclasses.fields(config_cls)}
    train_fields = {f.name for f in dataclasses.fields(train_cls)}
    model, train = {}, {}
    for key, value in settings.items():
        scope, _, field = key.rpartition(".")
        if not scope and field not in model_fields | train_fields:  # a typo: suggest from both configs
            raise UnknownName("config field", field, model_fields | train_fields)
        if scope == "train" or (not scope and field not in model_fields):
            train[field] = value
        elif scope in ("", "model"):
            model[field] = value
        else:
            raise UsageError(f"--set {key}: prefix must be 'model.' or 'train.'")
    return model, train


def _training_dataset(p: Any, dataset: str | None, train_data: Mapping[str, Any] | None) -> str:
    """The dataset to train on: the given one (if the plugin allows it), else the plugin's first."""
    if dataset is None:
        if not p.datasets:
            raise UsageError(f"plugin {p.name!r} declares no dataset; pass one")
        dataset = p.datasets[0]
    elif p.datasets and dataset not in p.datasets:
        raise UnknownName(f"dataset for plugin {p.name!r}", dataset, p.datasets)
    if train_data is None:
        from zoo import data

        data.get(dataset)  # unknown or broken: fails here, naming the dataset, not inside the plugin's train
    return dataset


def train(
    plugin: str,
    *,
    variant: str | None = None,
    dataset: str | None = None,
    workdir: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
    mesh: str | Mapping[str, int] | None = None,
    init_from: str | None = None,
    train_data: Mapping[str, Any] | None = None,
    eval_data: Mapping[str, Any] | None = None,
    progress: bool = True,
    **train_options: Any,
):
    """Train ``plugin`` through the shared loop; resumes if ``workdir`` holds the same run.

    ``train_options`` are ``zoo.training.TrainConfig`` fields (``steps=1000``,
    ``batch_size=128``, ``seed=0``, ``checkpoint_every=...``); ``settings`` are
    ``--set`` style ``KEY=VALUE`` pairs for the model or training config.
    Returns a ``zoo.training.TrainResult``.
    """
    from zoo import sharding, training
    from zoo.config import fill_dataclass, make_config

    if workdir is not None and not str(workdir).strip():
        raise UsageError("--workdir is empty; name a folder (it would otherwise train into the current one)")
    p = registry.get_plugin(plugin)
    config_cls = p.resolve("config")
    model_overrides, train_overrides = _split_settings(config_cls, training.TrainConfig, settings or {})
    train_cfg = fill_dataclass(training.TrainConfig, {}, {**train_overrides, **train_options}, "training config")
    variant = variant or p.default_variant
    config = make_config(p, variant, model_overrides)
    dataset = _training_dataset(p, dataset, train_data)
    run = training.Run(
        plugin=p,
        variant=variant,
        config=config,
        train=train_cfg,
        dataset=dataset,
        workdir=Path(workdir or Path("runs") / f"{plugin}-{variant}").absolute(),
        mesh_shape=sharding.parse_mesh(mesh) if isinstance(mesh, str | None) else dict(mesh),
        init_from=init_from,
        train_data=train_data,
        eval_data=eval_data,
        progress=progress,
    )
    run.check()  # the core's own refusals (layout, workdir, --init-from), before the plugin's code runs
    result = p.resolve("train")(run)
    if not isinstance(result, training.TrainResult):
        raise ZooError(f"plugin {plugin!r}: train returned {type(result).__name__}, not a TrainResult")
    return result


def load(name_or_path: str | Path, **overrides: Any):
    """A pretrained model (catalogue name), training workdir or checkpoint folder, restored and verified.

    Returns a ``zoo.pretrained.LoadedModel``: ``.model``, ``.config``, ``.card``,
    ``.sample(n, seed=0)``, ``.predict(inputs)``, ``.evaluate()``.
    """
    from zoo import pretrained

    return pretrained.load(name_or_path, overrides=overrides)


def sample(name_or_path: str | Path, n: int = 16, *, seed: int = 0, **options: Any) -> Any:
    """``n`` samples from a pretrained model or workdir (see ``LoadedModel.sample``)."""
    return load(name_or_path).sample(n, seed=seed, **options)


def predict(name_or_path: str | Path, inputs: Any, **options: Any) -> Any:
    """Class probabilities ``(N, K)`` (or ranked candidates) from a pretrained model or workdir (see ``LoadedModel.predict``)."""
    return load(name_or_path).predict(inputs, **options)


@dataclasses.dataclass(frozen=True)
class Verification:
    """``zoo verify``'s verdict on one pretrained model."""

    name: str
    ok: bool
    checks: tuple[str, ...]  # human-readable lines, one per check
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"metrics": dict(self.metrics), "checks": list(self.checks)}


def verify(name: str) -> Verification:
    """Checksums, then re-run the plugin's evaluate and compare with the card's metrics."""
    entry = registry.get_pretrained(name)
    try:
        loaded = load(name)
    except ZooError as e:
        return Verification(name, False, (f"load: {e}",))
    checks = [f"checksums: ok (MANIFEST {entry.sha256[:12]}...)"]
    if entry.params_digest is not None:  # the MANIFEST pins the bytes; this pins what they restore to
        from zoo import publish

        try:
            publish.check_digest(loaded.model, entry.params_digest, name)
        except IntegrityError as e:
            return Verification(name, False, (*checks, f"params_digest: {e}"))
        checks.append(f"params_digest: ok ({entry.params_digest[:12]}...)")
    if not entry.metrics:
        return Verification(name, True, (*checks, "metrics: none on the card"))
    try:
        measured = loaded.evaluate()
    except ZooError as e:  # no test data offline, say: this model fails, the others still get checked
        return Verification(name, False, (*checks, f"evaluate: {e}"))
    ok = True
    for metric, card in entry.metrics.items():
        if metric not in measured:
            checks.append(f"{metric}: not reported by evaluate")
            ok = False
            continue
        allowed = entry.allowed_error(metric)
        good = abs(measured[metric] - card) <= allowed
        ok &= good
        checks.append(f"{metric}: {measured[metric]:.4f} (card {card:.4f}, allowed +-{allowed:.3g}) {'ok' if good else 'MISMATCH'}")
    return Verification(name, ok, tuple(checks), measured)
