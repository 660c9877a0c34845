"""The dataset registry: names -> implementations, fetched, verified and cached.

Importing this stays cheap (no numpy, no jax): an implementation module is
imported only when its dataset is first used. Adding a dataset is one line in
``_DATASETS`` plus a module that defines a :class:`Dataset`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo import env
from zoo.errors import OfflineError, UnknownName, UsageError

if TYPE_CHECKING:
    import numpy as np

# name -> "module:object", the object being that dataset's Dataset.
_DATASETS: dict[str, str] = {
    "mnist": "zoo.data.mnist:DATASET",
}


@dataclass(frozen=True)
class Dataset:
    """What the registry needs from one dataset implementation."""

    splits: tuple[str, ...]
    fetch: Callable[[], Path]  # fetch, verify and cache; returns the cache folder
    load: Callable[[str], dict[str, np.ndarray]]  # verified arrays of one split
    is_cached: Callable[[], bool]  # cheap presence check, no hashing
    synthetic: Callable[[int, int], dict[str, np.ndarray]]  # (n, seed) -> random arrays shaped like load's


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_DATASETS)


def _dataset(name: str) -> Dataset:
    if name not in _DATASETS:
        raise UnknownName("dataset", name, names())
    module, _, attr = _DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def fetch(name: str) -> Path:
    """Fetch, verify and cache dataset ``name``; return its cache folder."""
    return _dataset(name).fetch()


def is_cached(name: str) -> bool:
    """Whether ``name``'s files are in the cache (presence only; loading verifies them)."""
    return _dataset(name).is_cached()


def load(name: str, split: str = "train") -> dict[str, np.ndarray]:
    """Verified arrays of one split, fetching first if needed and allowed.

    Under ``ZOO_OFFLINE`` a dataset that is not cached raises ``OfflineError``.
    """
    dataset = _dataset(name)
    if split not in dataset.splits:
        raise UsageError(f"unknown split {split!r} for dataset {name!r}; valid: {', '.join(dataset.splits)}")
    if not dataset.is_cached():
        if env.offline():
            raise OfflineError(
                f"dataset {name!r} is not cached under {env.home() / 'data'} and ZOO_OFFLINE is set; "
                f"run `zoo data fetch {name}` with network access first"
            )
        dataset.fetch()
    return dataset.load(split)


def synthetic(name: str, n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random examples with the keys, shapes and dtypes ``load(name)`` returns (for fast tests)."""
    return _dataset(name).synthetic(n, seed)
