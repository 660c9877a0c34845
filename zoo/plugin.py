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
  in ``[0, 1]``, or ``list[str]`` of ``n`` texts. For generative models.
- ``predict(model, inputs, **options)`` -> class probabilities ``(N, K)`` in
  ``[0, 1]``, one row per input. ``inputs`` is float32 ``(N, H, W, C)`` in ``[0, 1]``
  for images (the shape the training dataset's ``image_shape`` declares), or
  ``list[str]`` for texts; column ``k`` is the dataset's ``classes[k]``. For
  discriminative models. A plugin has ``sample``, ``predict`` or both.
  Or (API 1.2) ranked candidates, for answers that are not one distribution over
  the dataset's classes: a list with one entry per input, each a list of *slots*
  (the places the model answers for: every ``[MASK]`` of a text, say), each slot a
  non-empty list of ``{"label": str, "probability": float, ...}`` best first.
- ``evaluate(model, data: dict[str, np.ndarray]) -> dict[str, float]`` on a
  dataset split as ``zoo.data.load`` returns it.

Options are keyword-only parameters after the fixed ones; the CLI parses
``--option KEY=VALUE`` by their annotations.

What a function raises reaches the user as one line naming the plugin and the
function (``zoo.refs.PluginError``); what it returns is checked (metrics are
finite numbers by key, samples are images in [0, 1] or texts, predictions are
probabilities) with errors naming the offending key.

Versions. ``api`` is the contract version a plugin targets: ``1`` or ``(1, minor)``.
A new major breaks plugins (a zoo refuses every other major); a new minor only
adds, so a plugin written for 1.0 works unchanged on every 1.x. A plugin declares
the minor whose additions it uses, and a zoo older than that refuses it with a
line saying to upgrade. Minor 1 added ``predict`` and made ``sample`` optional:
a plugin using them declares ``api=(1, 1)``. Minor 2 added ranked candidates as a
``predict`` result: ``api=(1, 2)``. (A zoo that predates a field cannot
even construct a ``Plugin`` passing it; discovery reports that TypeError with the
same advice to upgrade.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from zoo import paths, refs
from zoo.errors import ZooError
from zoo.refs import Ref as Ref

API_VERSION = 1
"""Major version of this contract. A plugin built for another major is refused."""

API_MINOR = 2
"""Minor version of this contract: 1 added ``predict``, 2 its ranked candidates. A plugin needing a later minor is refused."""

_REFS = ("config", "build", "train", "sample", "evaluate", "predict")
_OPTIONAL_REFS = ("sample", "evaluate", "predict")


def api_problem(api: Any) -> str | None:
    """What is wrong with a declared ``api`` (``1`` or ``(1, minor)``) for this zoo; None if it is fine."""
    if isinstance(api, int) and not isinstance(api, bool):
        major, minor = api, 0
    elif isinstance(api, tuple | list) and len(api) == 2 and all(type(v) is int for v in api):
        major, minor = api
    else:
        return f"targets plugin API {api!r}, this zoo speaks API {API_VERSION} (api is 1 or (1, minor))"
    if major != API_VERSION:
        return f"targets plugin API {api!r}, this zoo speaks API {API_VERSION}"
    if minor > API_MINOR:
        return f"needs plugin API {major}.{minor}, this zoo speaks {API_VERSION}.{API_MINOR}; upgrade flax-zoo"
    return None


# --------------------------------------------------------------------------- what plugin functions return


def _metric(key: Any, value: Any) -> float:
    if not isinstance(key, str) or isinstance(value, str | bytes) or getattr(value, "shape", ()) != ():
        raise ValueError(f"metric {key!r} = {value!r} ({type(value).__name__}), not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric {key!r} = {value!r} ({type(value).__name__}), not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"metric {key!r} = {number}, not a finite number")
    return number


def check_metrics(result: Any, *_: Any, **__: Any) -> dict[str, float]:
    """``evaluate``'s result as ``{name: float}``; ValueError naming the first bad key."""
    if not isinstance(result, Mapping) or not result:
        raise ValueError(f"{type(result).__name__}, not a non-empty dict of metrics")
    return {key: _metric(key, value) for key, value in result.items()}


def check_samples(result: Any, model: Any = None, key: Any = None, n: int | None = None, **_: Any) -> Any:
    """``sample``'s result: ``n`` texts, or ``n`` images ``(n, H, W, C)`` in [0, 1] as a numpy array."""
    import numpy as np

    if isinstance(result, list):
        if not all(isinstance(text, str) for text in result):
            raise ValueError("a list that is not all str (texts are list[str]; images an array)")
        if n is not None and len(result) != n:
            raise ValueError(f"{len(result)} texts, asked for {n}")
        return result
    images = np.asarray(result)
    if images.ndim != 4 or images.dtype.kind not in "fiu":
        raise ValueError(f"{images.dtype} {images.shape}, not images (n, H, W, C) or a list of texts")
    if n is not None and images.shape[0] != n:
        raise ValueError(f"{images.shape[0]} images, asked for {n}")
    if images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
        raise ValueError(f"images with values in [{images.min()}, {images.max()}], outside [0, 1]")
    return images


def check_ranked(result: list, inputs: Any = None) -> list:
    """Ranked candidates: per input a list of slots, each a non-empty list of ``{"label", "probability"}`` best first."""
    if inputs is not None and len(result) != len(inputs):
        raise ValueError(f"{len(result)} ranked results for {len(inputs)} inputs")
    for i, slots in enumerate(result):
        if not isinstance(slots, list) or not all(isinstance(slot, list) and slot for slot in slots):
            raise ValueError(f"ranked result {i}: not a list of slots, each a non-empty list of candidates")
        for j, slot in enumerate(slots):
            where = f"ranked result {i}, slot {j}"
            if not all(isinstance(c, Mapping) and isinstance(c.get("label"), str) for c in slot):
                raise ValueError(f"{where}: a candidate is not a dict with a str 'label'")
            chances = [_metric("probability", c.get("probability")) for c in slot]
            if min(chances) < 0 or max(chances) > 1 or sum(chances) > 1 + 1e-4:
                raise ValueError(f"{where}: probabilities {chances} outside [0, 1] or summing past 1")
            if any(a < b for a, b in zip(chances, chances[1:])):
                raise ValueError(f"{where}: candidates not ranked best first ({chances})")
    return result


def check_predictions(result: Any, model: Any = None, inputs: Any = None, **_: Any) -> Any:
    """``predict``'s result: probabilities ``(N, K)`` in [0, 1], one row per input, as a numpy array;
    or ranked candidates (a list, see ``check_ranked``) as they are."""
    import numpy as np

    if isinstance(result, list):
        return check_ranked(result, inputs)
    probabilities = np.asarray(result)
    if probabilities.ndim != 2 or probabilities.dtype.kind not in "fiu":
        raise ValueError(f"{probabilities.dtype} {probabilities.shape}, not probabilities (N, classes)")
    if inputs is not None and probabilities.shape[0] != len(inputs):
        raise ValueError(f"{probabilities.shape[0]} rows for {len(inputs)} inputs")
    if probabilities.size and not (
        np.isfinite(probabilities).all() and probabilities.min() >= 0 and probabilities.max() <= 1
    ):
        raise ValueError(f"probabilities in [{probabilities.min()}, {probabilities.max()}], outside [0, 1]")
    return probabilities


_CHECKS: dict[str, Callable[..., Any]] = {"evaluate": check_metrics, "sample": check_samples, "predict": check_predictions}


@dataclasses.dataclass(frozen=True)
class Plugin:
    """What a model family offers the zoo. ``name`` through ``train`` are required, and ``sample`` or ``predict``.

    Attributes:
      name: unique plugin name; must equal the entry-point name.
      api: the contract version the plugin targets: ``1`` or ``(1, minor)`` (see "Versions" above).
      summary: one line for ``zoo list``.
      config: the model-config dataclass.
      variants: named presets, each a dict of config-field overrides; the first is the default.
      build, train, sample, evaluate, predict: see the module docstring.
      datasets: names of ``zoo.data`` datasets it trains on; the first is the default.
      metric: ``(name, "min" | "max")`` of the ``evaluate`` metric that ranks checkpoints.
      replaceable: parameter path prefixes (``"head"``) that ``--init-from`` may
        re-initialise when their shapes differ from the pretrained ones; with
        ``train.freeze=backbone`` they are all that trains.
      catalog: a catalogue file of pretrained entries, relative to the folder of the
        module the entry point names (``zoo_vae`` in ``zoo_vae:plugin``).
    """

    name: str
    api: int | tuple[int, int]
    summary: str
    config: Ref
    variants: Mapping[str, Mapping[str, Any]]
    build: Ref
    train: Ref
    sample: Ref | None = None
    evaluate: Ref | None = None
    predict: Ref | None = None
    datasets: tuple[str, ...] = ()
    metric: tuple[str, str] | None = None
    replaceable: tuple[str, ...] = ()
    catalog: str | None = None

    public_name: ClassVar[str] = "zoo.Plugin"

    def problems(self) -> list[str]:
        """Everything wrong with this object's shape, without importing anything."""
        found = [problem] if (problem := api_problem(self.api)) else []
        for field in ("name", "summary"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                found.append(f"{field} must be a non-empty string")
        for field in _REFS:
            ref = getattr(self, field)
            if ref is None and field in _OPTIONAL_REFS:
                continue
            if problem := refs.ref_problem(field, ref):
                found.append(problem)
        if self.sample is None and self.predict is None:
            found.append("needs sample (generative), predict (discriminative) or both")
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

    def replaces(self, path: str) -> bool:
        """Whether the parameter ``path`` ("a/b/kernel") is, or lies under, a declared ``replaceable`` prefix.

        The one rule for ``--init-from`` (which may re-initialise it) and ``train.freeze=backbone``
        (which trains only it).
        """
        return any(paths.under(path, prefix) for prefix in self.replaceable)

    def resolve(self, field: str) -> Any:
        """Import and return the object behind a reference field (``"build"``, ...).

        A function comes back guarded (``zoo.refs.guard``): what it raises names this
        plugin and the field, and what ``sample``, ``predict`` and ``evaluate`` return
        is checked. Classes (``config``) come back as they are.
        """
        ref = getattr(self, field)
        if ref is None:
            raise ZooError(f"plugin {self.name!r} has no {field}")
        target = refs.resolve(ref, f"plugin {self.name!r}", field)
        if isinstance(target, type) or not callable(target):
            return target
        return refs.guard(target, f"plugin {self.name!r}", field, _CHECKS.get(field))
