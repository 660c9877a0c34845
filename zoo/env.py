"""Environment variables the zoo reads, in one place.

- ``ZOO_HOME``: cache root for datasets and downloaded checkpoints
  (default ``~/.cache/zoo``).
- ``ZOO_OFFLINE=1``: make no network attempt; say what would be fetched.
- ``ZOO_REGISTRY``: extra catalogue files, separated by ``os.pathsep``.
- ``ZOO_DISABLE_PLUGIN_AUTOLOAD=1``: load only the plugins shipped with flax-zoo.
- ``ZOO_MAX_DOWNLOAD`` (``8G``, ``500M``, bytes) and ``ZOO_DOWNLOAD_DEADLINE``
  (seconds): bounds on one download; read by ``zoo.download.size_limit`` and
  ``zoo.download.deadline_s``, where the defaults are.
"""

from __future__ import annotations

import os
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def home() -> Path:
    """The cache root; created on first use by whoever writes into it."""
    return Path(os.environ.get("ZOO_HOME") or Path.home() / ".cache" / "zoo").expanduser()


def offline() -> bool:
    return _flag("ZOO_OFFLINE")


def plugin_autoload_disabled() -> bool:
    return _flag("ZOO_DISABLE_PLUGIN_AUTOLOAD")


def extra_catalogs() -> list[Path]:
    raw = os.environ.get("ZOO_REGISTRY", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
