"""Checkpoints: Orbax folders sealed by a MANIFEST of sha256s, verified before any byte is restored.

A checkpoint is one folder::

    MANIFEST.json     {"format": 1, "files": {"model/...": "<sha256>", ...}}
    meta/             JSON: plugin, variant, config, dataset, step, data position, eval, ...
    model/            Orbax pytree: every model variable, one pure nested dict
    ema/              (runs that keep an EMA) the same, with the averaged parameters
    train/            (training checkpoints only) step, optimizer states, EMA, non-finite record

The MANIFEST is written last, atomically, after Orbax has finished: a folder
without one is incomplete and never trusted. A catalogue pins the MANIFEST's own
sha256, which pins every file. Restores go onto abstract targets
(``jax.ShapeDtypeStruct`` with the current shardings), so a checkpoint written on
8 devices loads on 1 and back; the stored tree is compared with the target first
so a mismatch is one readable error. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo import env
from zoo.download import atomic_write_bytes, download, sha256_file
from zoo.errors import IntegrityError, OfflineError, ZooError

MANIFEST = "MANIFEST.json"
log = logging.getLogger(__name__)


class CheckpointError(ZooError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


# --------------------------------------------------------------------------- manifest


def _files(directory: Path) -> list[str]:
    # Only the top-level MANIFEST is exempt: a file of that name deeper down is data like any other.
    names = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(name for name in names if name != MANIFEST)


def write_manifest(directory: Path) -> str:
    """Seal ``directory``: hash every file into MANIFEST.json (atomically). Returns the manifest's sha256."""
    directory = Path(directory)
    manifest = {"format": 1, "files": {name: sha256_file(directory / name) for name in _files(directory)}}
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(directory / MANIFEST, data)
    return hashlib.sha256(data).hexdigest()


def verify(directory: Path, expected_sha256: str | None = None) -> None:
    """Check the manifest (against ``expected_sha256`` if given) and every file it lists.

    Raises CheckpointError if there is no manifest, IntegrityError naming the first
    file that is missing, altered or not listed.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST}: an incomplete save, or not a zoo checkpoint")
    data = manifest_path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IntegrityError(f"{manifest_path} does not match the sha256 pinned in the catalogue")
    try:
        manifest = json.loads(data)
        listed = manifest["files"]
        valid = manifest["format"] == 1 and isinstance(listed, dict) and all(isinstance(v, str) for v in listed.values())
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise IntegrityError(f"{manifest_path} is not a valid manifest (format 1)")
    present = set(_files(directory))
    for name, digest in sorted(listed.items()):
        if name not in present:
            raise IntegrityError(f"{directory / name} is missing from the checkpoint")
        if sha256_file(directory / name) != digest:
            raise IntegrityError(f"{directory / name} is corrupted (sha256 differs from {MANIFEST})")
    if extra := sorted(present - set(listed)):
        raise IntegrityError(f"{directory / extra[0]} is not listed in {MANIFEST}")


def manifest_sha256(directory: Path) -> str:
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- trees


def tree_paths(tree: Any) -> dict[str, Any]:
    """Flatten a nested-dict pytree to ``{"params/encoder/kernel": leaf}``."""
    import jax

    def name(key: Any) -> str:  # DictKey.key, SequenceKey.idx, GetAttrKey.name (NamedTuples)
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): leaf for path, leaf in flat}


def compare_trees(expected: Any, stored: Mapping[str, Any], where: str) -> None:
    """Raise one CheckpointError listing every path whose presence or shape differs.

    ``expected`` is an abstract target tree; ``stored`` maps paths to objects with
    ``.shape`` (Orbax metadata).
    """
    want = {p: tuple(x.shape) for p, x in tree_paths(expected).items()}
    have = {p: tuple(x.shape) for p, x in stored.items()}
    lines = [f"  {p}: model {want[p]}, checkpoint {have[p]}" for p in sorted(want.keys() & have.keys()) if want[p] != have[p]]
    lines += [f"  {p}: model {want[p]}, checkpoint has no such parameter" for p in sorted(want.keys() - have.keys())]
    lines += [f"  {p}: checkpoint {have[p]}, model has no such parameter" for p in sorted(have.keys() - want.keys())]
    if lines:
        raise CheckpointError(f"{where} does not fit the model ({len(lines)} difference(s)):\n" + "\n".join(lines))


def params_digest(tree: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes, in sorted path order.

    Two runs with the same digest have bitwise-identical parameters. Works on
    arrays sharded over several processes (they are gathered first). Runs on
    different meshes agree to rounding, not bitwise: the reductions add in another order.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    h = hashlib.sha256()
    for path, leaf in sorted(tree_paths(tree).items()):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.asarray(leaf)
        h.update(f"{path}|{array.dtype.str}|{array.shape}|".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- save / restore


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save(directory: Path, items: Mapping[str, Any], meta: Mapping[str, Any]) -> str | None:
    """Write pytrees ``items`` and JSON ``meta`` as one sealed checkpoint folder.

    Every process must call this (Orbax writes each process's shards); process 0
    writes the manifest once all are done. Returns the manifest sha256 on process 0.
    Any failure (a full disk, say) is raised as CheckpointError, never swallowed.
    """
    import jax
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    directory = Path(directory).absolute()
    if directory.exists():
        raise CheckpointError(f"{directory} already exists; refusing to overwrite a checkpoint")
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args["meta"] = ocp.args.JsonSave(dict(meta))
    try:
        checkpointer = _checkpointer()
        checkpointer.save(directory, ocp.args.Composite(**args))
        checkpointer.close()
        multihost_utils.sync_global_devices(f"zoo-checkpoint-{directory}")
        if jax.process_index() == 0:
            return write_manifest(directory)
    except ZooError:
        raise
    except Exception as e:  # noqa: BLE001 - Orbax/OS errors vary; the user needs the one line
        raise CheckpointError(f"saving checkpoint {directory} failed: {type(e).__name__}: {e}") from e
    return None


def read_meta(directory: Path) -> dict[str, Any]:
    """The JSON ``meta`` item (call ``verify`` first)."""
    try:
        return json.loads((Path(directory) / "meta" / "metadata").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: cannot read checkpoint metadata: {e}") from None


def stored_tree(directory: Path, item: str) -> dict[str, Any]:
    """Paths -> Orbax array metadata (with ``.shape``, ``.dtype``) of one stored item."""
    import orbax.checkpoint as ocp

    folder = Path(directory).absolute() / item
    if not folder.is_dir():
        raise CheckpointError(f"{directory}: the checkpoint has no {item!r} item")
    try:
        metadata = ocp.StandardCheckpointHandler().metadata(folder)
    except Exception as e:  # noqa: BLE001 - unreadable, whatever Orbax calls it
        raise CheckpointError(f"{directory}: cannot read the {item!r} tree: {type(e).__name__}: {e}") from None
    return tree_paths(dict(metadata.tree))


def restore(
    directory: Path, targets: Mapping[str, Any], expected_sha256: str | None = None, *, verified: bool = False
) -> dict[str, Any]:
    """Verify, compare shapes, then restore ``targets`` (item -> abstract tree) from ``directory``.

    Targets are trees of ``jax.ShapeDtypeStruct`` carrying the shardings wanted now.
    ``verified=True`` skips hashing a folder the caller has just verified.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not verified:
        verify(directory, expected_sha256)
    for item, target in targets.items():
        compare_trees(target, stored_tree(directory, item), f"checkpoint {directory} ({item})")
    args = {item: ocp.args.StandardRestore(target) for item, target in targets.items()}
    try:
        restored = _checkpointer().restore(directory, ocp.args.Composite(**args))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"restoring {directory} failed: {type(e).__name__}: {e}") from e
    return {item: restored[item] for item in targets}


# --------------------------------------------------------------------------- steps of a training run


class StepDirectory:
    """The ``checkpoints/`` folder of a workdir: one sealed checkpoint per step, named by the step.

    Only folders with a verified manifest count as steps. Strays (temporary
    folders of an interrupted save, unsealed or corrupted steps, other names) are
    ignored with a warning; they never become ``latest()``.
    """

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, step: int) -> Path:
        return self.root / str(step)

    def _problem(self, child: Path) -> str | None:
        """Why ``child`` is not a trustworthy step, or None."""
        if not child.name.isdigit():
            return "not a step folder (an interrupted save leaves these)"
        try:
            verify(child)
        except ZooError as e:
            return str(e)
        return None

    def _numbered(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted((c for c in self.root.iterdir() if c.name.isdigit()), key=lambda c: int(c.name))

    def steps(self, warn: bool = True) -> list[int]:
        """Steps whose folders verify, ascending (hashes every step: for listings, not hot paths)."""
        good = []
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            reason = self._problem(child)
            if reason is None:
                good.append(int(child.name))
            elif warn:
                log.warning("ignoring %s: %s", child, reason)
        return sorted(good)

    def latest(self) -> int | None:
        """The newest step that verifies; only steps newer than it are hashed and, if bad, warned about."""
        for child in reversed(self._numbered()):
            reason = self._problem(child)
            if reason is None:
                return int(child.name)
            log.warning("ignoring %s: %s", child, reason)
        return None

    def save(self, step: int, items: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        import jax
        from jax.experimental import multihost_utils

        path = self.path(step)
        if path.exists() and jax.process_index() == 0:  # a stale, unsealed folder of a killed run
            shutil.rmtree(path)
        multihost_utils.sync_global_devices(f"zoo-clear-{path}")  # nobody writes before it is gone
        save(path, items, meta)

    def prune(self, keep: int, metric: tuple[str, str] | None = None) -> None:
        """Keep the newest ``keep`` steps, and the best by ``metric`` (name, "min"|"max") if given."""
        # Sealed steps only; no re-hashing: pruning deletes, it never trusts.
        steps = [int(c.name) for c in self._numbered() if (c / MANIFEST).is_file()]
        kept = set(steps[-keep:]) if keep > 0 else set()
        if metric is not None:
            name, mode = metric
            scored = [(read_meta(self.path(s)).get("eval", {}).get(name), s) for s in steps]
            scored = [(v, s) for v, s in scored if isinstance(v, int | float)]
            if scored:
                kept.add((min if mode == "min" else max)(scored)[1])
        for step in steps:
            if step not in kept:
                shutil.rmtree(self.path(step), ignore_errors=True)


# --------------------------------------------------------------------------- remote checkpoints


def _safe_extract(archive: Path, into: Path) -> None:
    """Unzip refusing absolute paths, ``..`` and links: an archive may not write outside ``into``."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise IntegrityError(f"{archive}: refusing unsafe member {info.filename!r}")
        zf.extractall(into)


def fetch_remote(url: str, sha256: str, name: str) -> Path:
    """The verified local copy of a remote checkpoint (a .zip of its folder), fetched once.

    Downloads into ``$ZOO_HOME/checkpoints/<name>-<sha256[:16]>`` atomically: the
    folder appears only after the pinned manifest and every file verified.
    """
    cache = env.home() / "checkpoints" / f"{name}-{sha256[:16]}"
    if cache.is_dir():
        verify(cache, sha256)
        return cache
    if env.offline():
        raise OfflineError(f"{name} is not cached and ZOO_OFFLINE=1; fetch {url} (run `zoo sample {name}` once online)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".fetch-") as tmp:
        archive = download(url, Path(tmp) / "checkpoint.zip", what=f"checkpoint {name}")
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()  # an archive with no members creates nothing; it must still fail verification
        try:
            _safe_extract(archive, unpacked)
        except zipfile.BadZipFile:
            raise IntegrityError(f"{url} is not a zip archive of a checkpoint") from None
        roots = [p for p in unpacked.iterdir()]
        folder = roots[0] if len(roots) == 1 and roots[0].is_dir() and not (unpacked / MANIFEST).exists() else unpacked
        verify(folder, sha256)
        try:
            os.replace(folder, cache)
        except OSError:
            if not cache.is_dir():
                raise
            verify(cache, sha256)  # another process (a worker of the same job) fetched it first
    return cache
