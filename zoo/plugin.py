"""The plugin contract: the one spec every model family implements.

A plugin is a distribution that exposes a ``Plugin`` object under the entry-point
group ``zoo.plugins``; the entry-point name is the plugin's name::

    # pyproject.toml
    [project.entry-points."zoo.plugins"]
    vae = "zoo_vae:plugin"

    # zoo_vae/__init__.py  (light: imports neither jax nor the model code)
    plugin = zoo.Plugin(
        name="vae", api=1, summary="Variational autoencoder",
        config="zoo_vae.model:VAEConfig",
        variants={"dense-20": {"kind": "dense", "latent_dim": 20}},
        build="zoo_vae.model:build", train="zoo_vae.train:train",
        sample="zoo_vae.model:sample", evaluate="zoo_vae.train:evaluate",
        datasets=("mnist",),
    )

The callables are ``"module:attribute"`` references resolved on first use, so
``zoo list`` and ``zoo info`` never import jax. Their signatures:

- ``config``: a frozen dataclass; every field has a default; a variant is a dict
  of field overrides.
- ``build(config, rngs: nnx.Rngs) -> nnx.Module``. Parameters carry logical axis
  names (``nnx.with_partitioning(init, ("embed", "mlp"))``); the core maps them
  onto the mesh.
- ``train(run: zoo.training.Run) -> zoo.training.TrainResult``: calls
  ``run.fit(objective)`` with the plugin's loss; never a loop of its own.
- ``sample(model, key, n, **options)`` -> ``np.ndarray`` images ``(n, H, W, C)``
  in ``[0, 1]``, or ``list[str]`` of texts.
- ``evaluate(model, data: dict[str, np.ndarray]) -> dict[str, float]`` on a
  dataset split as ``zoo.data.load`` returns it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

from zoo.errors import ZooError

API_VERSION = 1
"""Major version of this contract. A plugin built for another major is refused."""

Ref = str | Callable[..., Any] | type
"""A ``"module:attribute"`` string resolved lazily, or the object itself."""

_REFS = ("config", "build", "train", "sample", "evaluate")


@dataclasses.dataclass(frozen=True)
class Plugin:
    """What a model family offers the zoo. Only ``name`` through ``sample`` are required.

    Attributes:
      name: unique plugin name; must equal the entry-point name.
      api: the plugin-API major version the plugin targets (``zoo.plugin.API_VERSION``).
      summary: one line for ``zoo list``.
      config: the model-config dataclass.
      variants: named presets, each a dict of config-field overrides; the first is the default.
      build, train, sample, evaluate: see the module docstring.
      datasets: names of ``zoo.data`` datasets it trains on; the first is the default.
      metric: ``(name, "min" | "max")`` of the ``evaluate`` metric that ranks checkpoints.
      replaceable: parameter path prefixes (``"head"``) that ``--init-from`` may
        re-initialise when their shapes differ from the pretrained ones.
      catalog: a catalogue file of pretrained entries, relative to the folder of the
        module the entry point names (``zoo_vae`` in ``zoo_vae:plugin``).
    """

    name: str
    api: int
    summary: str
    config: Ref
    variants: Mapping[str, Mapping[str, Any]]
    build: Ref
    train: Ref
    sample: Ref
    evaluate: Ref | None = None
    datasets: tuple[str, ...] = ()
    metric: tuple[str, str] | None = None
    replaceable: tuple[str, ...] = ()
    catalog: str | None = None

    def problems(self) -> list[str]:
        """Everything wrong with this object's shape, without importing anything."""
        found = []
        if self.api != API_VERSION:
            found.append(f"targets plugin API {self.api!r}, this zoo speaks API {API_VERSION}")
        for field in ("name", "summary"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                found.append(f"{field} must be a non-empty string")
        for field in _REFS:
            ref = getattr(self, field)
            if ref is None and field == "evaluate":
                continue
            if isinstance(ref, str):
                if ref.count(":") != 1 or not all(ref.split(":")):
                    found.append(f"{field} must be 'module:attribute', got {ref!r}")
            elif not callable(ref):
                found.append(f"{field} must be 'module:attribute' or a callable")
        if not isinstance(self.variants, Mapping) or not self.variants:
            found.append("variants must be a non-empty mapping of name -> overrides")
        elif not all(isinstance(k, str) and isinstance(v, Mapping) for k, v in self.variants.items()):
            found.append("each variant must map a name to a dict of config overrides")
        if not isinstance(self.datasets, tuple | list) or not all(isinstance(d, str) for d in self.datasets):
            found.append("datasets must be a tuple of dataset names")
        if self.metric is not None and (
            not isinstance(self.metric, tuple | list) or len(self.metric) != 2 or self.metric[1] not in ("min", "max")
        ):
            found.append("metric must be (name, 'min' | 'max')")
        if self.catalog is not None and (not isinstance(self.catalog, str) or not self.catalog):
            found.append("catalog must be a path (a string) relative to the plugin's module")
        return found

    @property
    def default_variant(self) -> str:
        return next(iter(self.variants))

    def resolve(self, field: str) -> Any:
        """Import and return the object behind a reference field (``"build"``, ...)."""
        ref = getattr(self, field)
        if ref is None:
            raise ZooError(f"plugin {self.name!r} has no {field}")
        if not isinstance(ref, str):
            return ref
        module_name, attr = ref.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ZooError(f"plugin {self.name!r}: cannot import {module_name} for {field}: {e}") from e
        target: Any = module
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError as e:
                raise ZooError(f"plugin {self.name!r}: {ref} does not exist ({field})") from e
        return target
