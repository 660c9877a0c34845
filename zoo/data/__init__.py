"""Datasets: a public contract, discovered through entry points like plugins, fetched once and cached.

A dataset is a distribution exposing a :class:`Dataset` under the entry-point
group ``zoo.datasets``; the entry-point name is the dataset's name. The built-in
MNIST registers the same way (see ``zoo.data.builtins``)::

    # pyproject.toml
    [project.entry-points."zoo.datasets"]
    fashion-mnist = "zoo_fashion:dataset"

    # zoo_fashion/__init__.py  (light: no numpy, no jax; ``zoo data list`` imports it)
    dataset = zoo.data.Dataset(
        name="fashion-mnist", api=1, splits=("train", "test"),
        fetch="zoo_fashion.data:fetch", load="zoo_fashion.data:load",
        is_cached="zoo_fashion.data:is_cached", synthetic="zoo_fashion.data:synthetic",
        size="30 MB", license="MIT", source="https://github.com/zalandoresearch/fashion-mnist",
        description="Zalando's 28x28 greyscale clothes, 10 classes",
        classes=("T-shirt", "Trouser", ...), image_shape=(28, 28, 1),
    )

What the four functions do (``"module:attribute"`` references, resolved on first use):

- ``fetch() -> Path``: download, verify (pin sha256s) and cache under
  ``zoo.data.cache_dir(name)``; return the folder. Idempotent; raises
  ``zoo.errors.OfflineError`` under ``ZOO_OFFLINE`` when something is missing.
- ``load(split) -> dict[str, np.ndarray]``: one split from the cache, verified.
  This dict is a *batch*: every array has the same leading example axis ``N``
  (``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}``); the loader slices
  training batches of it along that axis.
- ``is_cached() -> bool``: a cheap presence check, no hashing. Keep it in a light
  module: ``zoo data list`` calls it for every dataset.
- ``synthetic(n, seed) -> dict[str, np.ndarray]``: ``n`` random examples with the
  keys, dtypes and per-example shapes ``load`` returns, for tests that run offline
  in milliseconds.

``classes`` (label index -> name) and ``image_shape`` (``(H, W, C)``) tell
``zoo predict`` how to print classes and how to convert image files for models
trained on this dataset. What the functions raise names the dataset
(``zoo.refs.PluginError``). Importing this module stays cheap (no numpy, no jax).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from zoo import env, refs, registry
from zoo.errors import OfflineError, UnknownName, UsageError, ZooError
from zoo.plugin import api_problem
from zoo.refs import Ref

if TYPE_CHECKING:
    import numpy as np

GROUP = "zoo.datasets"
_REFS = ("fetch", "load", "is_cached", "synthetic")


def _check_batch(result: Any, *args: Any, **_: Any) -> dict[str, Any]:
    """``load``/``synthetic``'s result: a non-empty dict of arrays sharing one leading example axis."""
    import numpy as np

    if not isinstance(result, dict) or not result:
        raise ValueError(f"{type(result).__name__}, not a non-empty dict of arrays")
    arrays = {key: value for key, value in result.items() if isinstance(value, np.ndarray) and value.ndim >= 1}
    if bad := [key for key in result if key not in arrays]:
        raise ValueError(f"{bad[0]!r} as {type(result[bad[0]]).__name__}, not a numpy array with an example axis")
    lengths = {key: len(a) for key, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays of different lengths {lengths}; a batch shares one leading example axis")
    return result


def _check_synthetic(result: Any, n: int, *_: Any, **__: Any) -> dict[str, Any]:
    """``synthetic(n, seed)``'s result: a batch of exactly ``n`` examples."""
    batch = _check_batch(result)
    if (length := len(next(iter(batch.values())))) != n:
        raise ValueError(f"{length} examples, asked for {n}")
    return batch


_CHECKS: dict[str, Callable[..., Any]] = {"load": _check_batch, "synthetic": _check_synthetic}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset, as its distribution declares it (see the module docstring).

    Attributes:
      name: unique dataset name; must equal the entry-point name.
      api: the contract version it targets, as for plugins (``1`` or ``(1, minor)``).
      splits: split names ``load`` accepts; the first is for training.
      fetch, load, is_cached, synthetic: see the module docstring.
      description, size, license, source: for ``zoo data list`` (``size`` as people
        say it: "11 MB"; ``source`` a URL or citation).
      classes: name of each label value, ``classes[k]`` for label ``k``.
      image_shape: ``(H, W, C)`` of one image, for datasets of images.
    """

    name: str
    api: int | tuple[int, int]
    splits: tuple[str, ...]
    fetch: Ref
    load: Ref
    is_cached: Ref
    synthetic: Ref
    description: str = ""
    size: str = ""
    license: str = ""
    source: str = ""
    classes: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None

    public_name: ClassVar[str] = "zoo.data.Dataset"

    def problems(self) -> list[str]:
        """Everything wrong with this object's shape, without importing anything."""
        found = [problem] if (problem := api_problem(self.api)) else []
        if not isinstance(self.name, str) or not self.name:
            found.append("name must be a non-empty string")
        if not isinstance(self.splits, tuple | list) or not self.splits or not all(isinstance(s, str) for s in self.splits):
            found.append("splits must be a non-empty tuple of split names")
        found += [problem for field in _REFS if (problem := refs.ref_problem(field, getattr(self, field)))]
        for field in ("description", "size", "license", "source"):
            if not isinstance(getattr(self, field), str):
                found.append(f"{field} must be a string")
        if not isinstance(self.classes, tuple | list) or not all(isinstance(c, str) for c in self.classes):
            found.append("classes must be a tuple of class names")
        shape = self.image_shape
        if shape is not None and not (
            isinstance(shape, tuple | list) and len(shape) == 3 and all(type(d) is int and d > 0 for d in shape)
        ):
            found.append(f"image_shape must be (H, W, C) of positive ints, got {shape!r}")
        return found

    def resolve(self, field: str) -> Callable[..., Any]:
        """The function behind ``field``, guarded: what it raises names this dataset, batches are checked."""
        owner = f"dataset {self.name!r}"
        return refs.guard(refs.resolve(getattr(self, field), owner, field), owner, field, _CHECKS.get(field))


class DatasetRecord(registry.Record):
    @property
    def dataset(self) -> Dataset | None:
        return self.value


# --------------------------------------------------------------------------- discovery


def records() -> tuple[DatasetRecord, ...]:
    """Every dataset found, healthy and broken, sorted by name."""
    return registry.discover(GROUP, Dataset, DatasetRecord)


def names() -> list[str]:
    """Discovered dataset names (healthy or broken), sorted."""
    return [r.name for r in records()]


def get(name: str) -> Dataset:
    """The healthy dataset called ``name``; UnknownName or BrokenPlugin otherwise."""
    for record in records():
        if record.name == name:
            if record.dataset is None:
                raise registry.BrokenPlugin(f"dataset {name!r} is broken: {record.error}")
            return record.dataset
    raise UnknownName("dataset", name, names())


def describe() -> list[dict[str, Any]]:
    """One row per discovered dataset for ``zoo data list``: its metadata, whether cached, or why broken."""
    rows = []
    for record in records():
        row: dict[str, Any] = {"name": record.name, "distribution": record.distribution, "error": record.error}
        if (dataset := record.dataset) is not None:
            row |= {field: getattr(dataset, field) for field in ("description", "size", "license", "source")}
            row |= {"splits": list(dataset.splits), "classes": list(dataset.classes)}
            try:
                row["cached"] = bool(dataset.resolve("is_cached")())
            except ZooError as e:  # its own code fails: this dataset is broken, the listing goes on
                row["error"] = str(e)
        rows.append(row | {"ok": row["error"] is None})
    return rows


def cache_dir(name: str) -> Path:
    """Where dataset ``name`` keeps its files: ``$ZOO_HOME/data/NAME``."""
    return env.home() / "data" / name


# --------------------------------------------------------------------------- use


def fetch(name: str) -> Path:
    """Fetch, verify and cache dataset ``name``; return its cache folder."""
    return get(name).resolve("fetch")()


def is_cached(name: str) -> bool:
    """Whether ``name``'s files are in the cache (presence only; loading verifies them)."""
    return bool(get(name).resolve("is_cached")())


def load(name: str, split: str = "train") -> dict[str, np.ndarray]:
    """Verified arrays of one split (a batch of every example), fetching first if needed and allowed.

    Under ``ZOO_OFFLINE`` a dataset that is not cached raises ``OfflineError``.
    """
    dataset = get(name)
    if split not in dataset.splits:
        raise UsageError(f"unknown split {split!r} for dataset {name!r}; valid: {', '.join(dataset.splits)}")
    if not dataset.resolve("is_cached")():
        if env.offline():
            raise OfflineError(
                f"dataset {name!r} is not cached under {env.home() / 'data'} and ZOO_OFFLINE is set; "
                f"run `zoo data fetch {name}` with network access first"
            )
        dataset.resolve("fetch")()
    return dataset.resolve("load")(split)


def synthetic(name: str, n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random examples with the keys, shapes and dtypes ``load(name)`` returns (for fast tests)."""
    return get(name).resolve("synthetic")(n, seed)
