"""Checkpoints: Orbax folders sealed by a MANIFEST of sha256s, verified before any byte is restored.

A checkpoint is one folder::

    MANIFEST.json     {"format": 1, "files": {"model/...": "<sha256>", ...}, "sizes": {"model/...": <bytes>, ...}}
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

What is restored is exactly what the manifest lists: a symbolic link anywhere in
the folder, a special file, or any file or folder the manifest does not list is
refused before a byte is read. ("sizes" came later than "files"; a manifest
without it still verifies.)

Portable checkpoints (``save(..., portable=True)``, what ``zoo export`` writes)
hold host arrays without OCDBT: each parameter is one zarr array named by its
path, so the same weights give the same bytes on any machine and device count.
No checkpoint keeps Orbax's ``commit_success.txt`` (it records the absolute
folder) or ``_CHECKPOINT_METADATA`` (timestamps): restores never read them.

A checkpoint whose meta says ``"weights_dtype": "bfloat16"`` (``zoo export
--weights-dtype bfloat16``) stores its float32/float64 arrays in bfloat16, half
the bytes (``narrow_weights``); integer and uint8 arrays are stored as they are.
Restores widen them back to the model's dtypes, exactly (every bfloat16 is a
float32): that widening is the one dtype difference the tree comparison
accepts, and only for such checkpoints (the meta is sealed like the rest).

Fetching a checkpoint from a URL (download, bounded extraction, the cache in
``$ZOO_HOME``) is ``zoo.remote``'s job; this module is the on-disk format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from zoo.download import atomic_write_bytes, sha256_file
from zoo.errors import IntegrityError, ZooError
from zoo.paths import tree_paths  # variables are named as zoo.paths says

MANIFEST = "MANIFEST.json"
log = logging.getLogger(__name__)


class CheckpointError(ZooError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


# --------------------------------------------------------------------------- manifest


def _walk(directory: Path) -> tuple[list[str], list[str]]:
    """(files, folders) under ``directory`` as sorted posix paths, the top-level MANIFEST excluded.

    Refuses symbolic links (to files or folders: a restore would follow what a
    hash never saw) and anything that is not a regular file or a folder.
    """
    files, folders, pending = [], [], [directory]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                name = Path(entry.path).relative_to(directory).as_posix()
                if entry.is_symlink():
                    raise IntegrityError(f"{entry.path} is a symbolic link; a checkpoint may hold only its own files")
                if entry.is_dir(follow_symlinks=False):
                    folders.append(name)
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files.append(name)
                else:
                    raise IntegrityError(f"{entry.path} is not a regular file")
    # Only the top-level MANIFEST is exempt: a file of that name deeper down is data like any other.
    return sorted(f for f in files if f != MANIFEST), sorted(folders)


def write_manifest(directory: Path) -> str:
    """Seal ``directory``: hash every file into MANIFEST.json (atomically). Returns the manifest's sha256."""
    directory = Path(directory)
    files, _ = _walk(directory)
    manifest = {
        "format": 1,
        "files": {name: sha256_file(directory / name) for name in files},
        "sizes": {name: (directory / name).stat().st_size for name in files},
    }
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(directory / MANIFEST, data)
    return hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes, where: Path | str) -> tuple[dict[str, str], dict[str, int] | None]:
    """(sha256 by file, size by file or None) of a manifest's bytes; IntegrityError if malformed."""
    try:
        manifest = json.loads(data)
        listed, sizes = manifest["files"], manifest.get("sizes")
        valid = manifest["format"] == 1 and isinstance(listed, dict) and all(isinstance(v, str) for v in listed.values())
        valid = valid and (
            sizes is None
            or (isinstance(sizes, dict) and sizes.keys() == listed.keys() and all(type(v) is int and v >= 0 for v in sizes.values()))
        )
    except (ValueError, KeyError, TypeError, AttributeError):  # AttributeError: a JSON list has no .get
        valid = False
    if not valid:
        raise IntegrityError(f"{where} is not a valid manifest (format 1)")
    return listed, sizes


def verify(directory: Path, expected_sha256: str | None = None) -> None:
    """Check the manifest (against ``expected_sha256`` if given) and every file it lists.

    Raises CheckpointError if there is no manifest, IntegrityError naming the first
    file that is missing, altered, not listed, or a link; and the first folder
    that holds no listed file.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if manifest_path.is_symlink():
        raise IntegrityError(f"{manifest_path} is a symbolic link; a checkpoint may hold only its own files")
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST}: an incomplete save, or not a zoo checkpoint")
    data = manifest_path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IntegrityError(f"{manifest_path} does not match the sha256 pinned in the catalogue")
    listed, sizes = parse_manifest(data, manifest_path)
    files, folders = _walk(directory)
    present = set(files)
    for name in sorted(listed):
        if name not in present:
            raise IntegrityError(f"{directory / name} is missing from the checkpoint")
    if extra := sorted(present - set(listed)):
        raise IntegrityError(f"{directory / extra[0]} is not listed in {MANIFEST}")
    needed = {parent.as_posix() for name in listed for parent in PurePosixPath(name).parents} - {"."}
    if stray := sorted(set(folders) - needed):
        raise IntegrityError(f"{directory / stray[0]} is a folder {MANIFEST} does not list")
    for name, digest in sorted(listed.items()):
        path = directory / name
        if (sizes is not None and path.stat().st_size != sizes[name]) or sha256_file(path) != digest:
            raise IntegrityError(f"{path} is corrupted (sha256 differs from {MANIFEST})")


def manifest_sha256(directory: Path) -> str:
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- trees


def compare_trees(expected: Any, stored: Mapping[str, Any], where: str, weights_dtype: str | None = None) -> None:
    """Raise one CheckpointError listing every path whose presence, shape or dtype differs.

    ``expected`` is an abstract target tree; ``stored`` maps paths to objects with
    ``.shape`` and ``.dtype`` (Orbax metadata). ``weights_dtype`` is the checkpoint's
    ``meta["weights_dtype"]``: floats stored narrowed to it fit wider model floats
    (``dtype_fits``).
    """
    want, have = tree_paths(expected), dict(stored)
    lines = []
    for p in sorted(want.keys() & have.keys()):
        model, saved = want[p], have[p]
        if tuple(model.shape) != tuple(saved.shape):
            lines.append(f"  {p}: model {tuple(model.shape)}, checkpoint {tuple(saved.shape)}")
        elif not dtype_fits(model.dtype, saved.dtype, weights_dtype):
            lines.append(f"  {p}: model {model.dtype}, checkpoint {saved.dtype}")
    lines += [f"  {p}: model {tuple(want[p].shape)}, checkpoint has no such parameter" for p in sorted(want.keys() - have.keys())]
    lines += [f"  {p}: checkpoint {tuple(have[p].shape)}, model has no such parameter" for p in sorted(have.keys() - want.keys())]
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

ORBAX_FAILURES = (OSError, ValueError, KeyError)
"""What Orbax and tensorstore raise for bytes or folders they cannot use: a full disk
comes as ``ValueError: RESOURCE_EXHAUSTED ... No space left on device``, unreadable
JSON as ``ValueError``, a missing key as ``KeyError``, a missing file as ``OSError``.
Anything else is a bug and keeps its traceback (see ``_bad_bytes``)."""


def _bad_bytes(error: BaseException) -> bool:
    """Whether ``error`` means "these bytes or folders are unusable" rather than a bug.

    Orbax re-raises a tensorstore read failure (a corrupt zstd frame, measured) as a
    plain ``Exception`` from the ``ValueError``; that one counts by its cause.
    """
    if isinstance(error, ORBAX_FAILURES):
        return True
    return type(error) is Exception and isinstance(error.__cause__, ORBAX_FAILURES)

MACHINE_FILES = ("commit_success.txt", "_CHECKPOINT_METADATA")
"""Orbax's files that record where and when a save ran (an absolute folder, timestamps).
Restores never read them, and nothing machine-specific belongs in a checkpoint."""


def _checkpointer(items: Mapping[str, Any] = {}, use_ocdbt: bool = True):  # noqa: B006 - read-only default
    """A synchronous Orbax checkpointer; ``items`` name the pytree items when saving."""
    import orbax.checkpoint as ocp

    handlers = {name: ocp.StandardCheckpointHandler(use_ocdbt=use_ocdbt) for name in items}
    if handlers:
        handlers["meta"] = ocp.JsonCheckpointHandler()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**handlers))


class _DropOrbaxRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname


@contextlib.contextmanager
def _calling_orbax(failure: str) -> Iterator[None]:
    """Call Orbax quietly; what it raises for unusable bytes becomes ``CheckpointError("{failure}: {reason}")``.

    Its log records (absl) are silenced meanwhile: its writer threads log each
    failure with a full traceback before the caller sees the exception (two
    tracebacks for one full disk, measured); we raise that exception once, as one
    line. Its warnings ("Skipping merge of OCDBT checkpoints" for every portable
    save) say nothing a user can act on. Any other exception is a bug and keeps
    its own type and traceback (see ``_bad_bytes``).
    """
    quiet = _DropOrbaxRecords()
    logger = logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        yield
    except Exception as e:  # noqa: BLE001 - narrowed by _bad_bytes; a bug is re-raised as itself
        if not _bad_bytes(e):
            raise
        raise CheckpointError(f"{failure}: {error_line(e)}") from e
    finally:
        logger.removeFilter(quiet)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C while Orbax writes, then deliver it to the handler it was meant for.

    Interrupted inside Orbax, a save left its writer threads running into
    interpreter shutdown: pages of "Event loop is closed" tracebacks and a stray
    temporary folder, measured. So a Ctrl-C waits for the write under way (the
    loop's first one only asks it to stop anyway); pressed twice meanwhile, the
    process ends at once with one line, leaving an unsealed folder that is never
    trusted (``StepDirectory`` ignores and later replaces it).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)
        if len(held) >= 2:
            os.write(2, b"zoo: interrupted during a checkpoint save; its unsealed folder will be ignored\n")
            os._exit(130)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for signum in held:
            if callable(previous):
                previous(signum, None)  # the default handler raises KeyboardInterrupt; the loop's counts


def error_line(error: BaseException) -> str:
    """One line: the error's type and message, whitespace collapsed, at most 400 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 400 else text[:397] + "..."


def _remove_partial(directory: Path) -> None:
    """Delete what an interrupted or failed save left (single process: nobody else is writing)."""
    import jax

    if jax.process_count() > 1:  # the other processes may still write; StepDirectory ignores unsealed steps
        return
    for leftover in [directory, *directory.parent.glob(f"{directory.name}.orbax-checkpoint-tmp*")]:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def _host_arrays(tree: Any) -> Any:
    """Every leaf as a numpy array: Orbax then writes one chunk per array, whatever the devices."""
    import jax
    import numpy as np

    return jax.tree.map(np.asarray, tree)


def save(directory: Path, items: Mapping[str, Any], meta: Mapping[str, Any], *, portable: bool = False) -> str | None:
    """Write pytrees ``items`` and JSON ``meta`` as one sealed checkpoint folder.

    Every process must call this (Orbax writes each process's shards); process 0
    writes the manifest once all are done. Returns the manifest sha256 on process 0.
    ``portable=True`` (single process) writes the byte-reproducible layout of the
    module docstring. Any failure (a full disk, say) is raised as one-line
    CheckpointError and leaves no partial folder; Ctrl-C leaves none either.
    """
    import jax
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    directory = Path(directory).absolute()
    if directory.exists():
        raise CheckpointError(f"{directory} already exists; refusing to overwrite a checkpoint")
    if portable:
        if jax.process_count() > 1:
            raise CheckpointError("a portable checkpoint is written by a single process")
        items = {name: _host_arrays(tree) for name, tree in items.items()}
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    args["meta"] = ocp.args.JsonSave(dict(meta))
    try:
        with _calling_orbax(f"saving checkpoint {directory} failed"):
            checkpointer = _checkpointer(items, use_ocdbt=not portable)
            with _interrupts_held():
                try:
                    checkpointer.save(directory, ocp.args.Composite(**args))
                finally:
                    checkpointer.close()  # joins Orbax's threads on every exit path
            multihost_utils.sync_global_devices(f"zoo-checkpoint-{directory}")
            if jax.process_index() == 0:
                for leftover in (p for name in MACHINE_FILES for p in directory.rglob(name)):
                    leftover.unlink()
                return write_manifest(directory)
    except BaseException:
        with _interrupts_held():
            _remove_partial(directory)
        raise
    return None


def read_meta(directory: Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON ``meta`` item (call ``verify`` first); CheckpointError unless a JSON object with ``require``'s keys."""
    try:
        meta = json.loads((Path(directory) / "meta" / "metadata").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory}: cannot read checkpoint metadata: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{directory}: checkpoint metadata is a JSON {type(meta).__name__}, not an object")
    if missing := [key for key in require if key not in meta]:
        raise CheckpointError(f"{directory}: checkpoint metadata lacks {', '.join(map(repr, missing))}")
    return meta


def stored_tree(directory: Path, item: str) -> dict[str, Any]:
    """Paths -> Orbax array metadata (with ``.shape``, ``.dtype``) of one stored item."""
    import orbax.checkpoint as ocp

    folder = Path(directory).absolute() / item
    if not folder.is_dir():
        raise CheckpointError(f"{directory}: the checkpoint has no {item!r} item")
    with _calling_orbax(f"{directory}: cannot read the {item!r} tree"):
        return tree_paths(dict(ocp.StandardCheckpointHandler().metadata(folder).tree))


def restore(
    directory: Path, targets: Mapping[str, Any], expected_sha256: str | None = None, *, verified: bool = False
) -> dict[str, Any]:
    """Verify, compare shapes and dtypes, then restore ``targets`` (item -> abstract tree) from ``directory``.

    Targets are trees of ``jax.ShapeDtypeStruct`` carrying the shardings wanted now;
    the arrays come back in the targets' dtypes (narrowed weights widened back, exactly).
    ``verified=True`` skips hashing a folder the caller has just verified.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not verified:
        verify(directory, expected_sha256)
    narrowed = stored_weights_dtype(directory)
    for item, target in targets.items():
        compare_trees(target, stored_tree(directory, item), f"checkpoint {directory} ({item})", narrowed)
    args = {item: ocp.args.StandardRestore(target) for item, target in targets.items()}
    checkpointer = _checkpointer()
    try:
        with _calling_orbax(f"restoring {directory} failed"):
            restored = checkpointer.restore(directory, ocp.args.Composite(**args))
    finally:
        checkpointer.close()
    return {item: restored[item] for item in targets}


# --------------------------------------------------------------------------- narrowed weights

WEIGHTS_DTYPES = ("bfloat16",)
"""What a checkpoint may store its floating weights in (``meta["weights_dtype"]``).
bfloat16 has float32's exponent range, so narrowing never overflows, and widening back is exact."""


def _is_wider_float(dtype: Any, than: Any) -> bool:
    import jax.numpy as jnp

    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize > jnp.dtype(than).itemsize


def dtype_fits(model: Any, stored: Any, weights_dtype: str | None) -> bool:
    """Whether an array stored as ``stored`` restores into a model variable of dtype ``model``.

    The same dtype always fits; a float wider than ``weights_dtype`` (float32, float64)
    also fits a stored ``weights_dtype``, when the checkpoint's meta names one.
    """
    import jax.numpy as jnp

    if jnp.dtype(model) == jnp.dtype(stored):
        return True
    return weights_dtype is not None and jnp.dtype(stored) == jnp.dtype(weights_dtype) and _is_wider_float(model, stored)


def narrow_weights(tree: Any, weights_dtype: str) -> Any:
    """``tree`` as host arrays, every float wider than ``weights_dtype`` cast to it (what an export stores).

    Integers, uint8 bytes and floats no wider stay as they are. The cast runs in
    numpy (round to nearest even, subnormals kept): the bytes do not depend on a
    device's float modes (XLA:CPU flushes subnormals to zero).
    """
    import jax
    import jax.numpy as jnp

    narrow = jnp.dtype(weights_dtype)
    host = _host_arrays(tree)
    return jax.tree.map(lambda a: a.astype(narrow) if _is_wider_float(a.dtype, narrow) else a, host)


def widen_weights(stored: Any, like: Any) -> Any:
    """``stored`` (``narrow_weights`` of ``like``) as host arrays in ``like``'s dtypes: exactly what a restore gives."""
    import jax
    import numpy as np

    return jax.tree.map(lambda s, x: np.asarray(s).astype(x.dtype), stored, like)


def stored_weights_dtype(directory: Path) -> str | None:
    """The ``weights_dtype`` a checkpoint's meta records (None: the model's own dtypes); CheckpointError if unknown."""
    name = read_meta(directory).get("weights_dtype")
    if name is not None and name not in WEIGHTS_DTYPES:
        raise CheckpointError(f"{directory}: its weights are stored as {name!r}; this zoo loads {', '.join(WEIGHTS_DTYPES)}")
    return name


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
        if child.is_symlink():
            return "a symbolic link; a step must be a folder of its own"
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
        if jax.process_index() == 0:  # a stale, unsealed folder of a killed run (or a planted link)
            if path.is_symlink():
                path.unlink()
            elif path.exists():
                shutil.rmtree(path)
        multihost_utils.sync_global_devices(f"zoo-clear-{path}")  # nobody writes before it is gone
        save(path, items, meta)

    def _score(self, step: int, metric: str) -> Any:
        """The step's recorded ``eval[metric]``, or None when its metadata does not say."""
        try:
            evaluation = read_meta(self.path(step)).get("eval")
        except CheckpointError:
            return None
        return evaluation.get(metric) if isinstance(evaluation, dict) else None

    def prune(self, keep: int, metric: tuple[str, str] | None = None) -> None:
        """Keep the newest ``keep`` steps, and the best by ``metric`` (name, "min"|"max") if given."""
        # Sealed steps only; no re-hashing: pruning deletes, it never trusts.
        steps = [int(c.name) for c in self._numbered() if not c.is_symlink() and (c / MANIFEST).is_file()]
        kept = set(steps[-keep:]) if keep > 0 else set()
        if metric is not None:
            name, mode = metric
            scored = [(self._score(s, name), s) for s in steps]
            scored = [(v, s) for v, s in scored if isinstance(v, int | float)]
            if scored:
                kept.add((min if mode == "min" else max)(scored)[1])
        for step in steps:
            if step not in kept:
                shutil.rmtree(self.path(step), ignore_errors=True)
