"""Publishing trained weights: a byte-reproducible export, its catalogue entry, and a reproduction check.

``export`` turns a training workdir into what a catalogue can pin::

    checkpoint = export(Path("runs/vae"), Path("checkpoints/vae-mnist"))   # or archive=True: a .zip
    print(checkpoint.entry_toml())    # plugin, variant, dataset, sha256, params_digest, metrics, recipe...

The folder is written in the portable layout of ``zoo.checkpoint`` (host arrays,
no OCDBT, no Orbax timestamps or absolute paths), so the same weights give the
same bytes, hence the same sha256, on any machine. The metrics come from the
plugin's ``evaluate`` run on the spot; the recipe is rebuilt from the sealed
checkpoint's own record of the run (its ``meta``), which a stray or edited
``run.json`` cannot change. ``weights_digest`` checks a recipe: the
``params_digest`` of what a rerun trained, as its export would record it.

``weights_dtype="bfloat16"`` (``zoo export --weights-dtype bfloat16``) stores the
float32/float64 weights in bfloat16, about half the bytes (a trained 1.24M-parameter
BERT run: 3.69 MB -> 1.60 MB, measured); integer and uint8 variables stay as they
are, and the meta records ``"weights_dtype": "bfloat16"``. Loading widens them
back to the model's dtypes, exactly. The metrics and ``params_digest`` are
measured on the model holding those widened weights, i.e. on what users load,
so ``zoo verify`` re-measures the card exactly and ``zoo verify --reproduce``
rounds a rerun's weights the same way before comparing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zoo import checkpoint
from zoo.catalog import NAME
from zoo.errors import IntegrityError, UsageError, ZooError

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every archive member's timestamp: the zip epoch, so archives of the same bytes are the same bytes."""
RECIPE_FLAGS = {"steps": "--steps", "batch_size": "--batch-size", "seed": "--seed", "checkpoint_every": "--checkpoint-every"}
"""Training fields ``zoo train`` takes as flags; every other changed field becomes ``--set train.FIELD=...``."""


@dataclasses.dataclass(frozen=True)
class Exported:
    """What ``export`` wrote, and everything a catalogue entry says about it.

    Attributes:
      name: the entry's name (the destination's last component, ``.zip`` removed).
      path: the checkpoint folder, or the ``.zip`` with ``archive=True``.
      sha256: the MANIFEST's sha256 (what the catalogue pins).
      params_digest: ``zoo.checkpoint.params_digest`` of the exported weights.
      size: the archive's bytes (archives only).
      meta: the checkpoint's metadata (plugin, variant, config, dataset, train, step).
      config: model config fields that differ from the variant's preset.
      metrics: what the plugin's ``evaluate`` measured (empty if not measured).
      recipe: the ``zoo train`` command that trains these weights.
      weights_dtype: what the floating weights are stored in (None: the model's own dtypes).
    """

    name: str
    path: Path
    sha256: str
    params_digest: str
    size: int | None
    meta: Mapping[str, Any]
    config: Mapping[str, Any]
    metrics: Mapping[str, float]
    recipe: str
    weights_dtype: str | None = None

    def entry(self, license: str = "unknown", description: str | None = None) -> dict[str, Any]:
        """The catalogue entry as a dict (the ``[models.NAME]`` table), ``checkpoint`` as written."""
        location = self.path.absolute().as_uri() if self.size is not None else _catalogue_path(self.path)
        table: dict[str, Any] = {"plugin": self.meta["plugin"], "variant": self.meta["variant"]}
        if self.config:
            table["config"] = dict(self.config)
        table |= {"dataset": self.meta["dataset"], "checkpoint": location, "sha256": self.sha256}
        table["params_digest"] = self.params_digest
        if self.size is not None:
            table["size"] = self.size
        table |= {"metrics": dict(self.metrics), "recipe": self.recipe, "seed": self.meta["train"]["seed"]}
        steps = self.meta.get("step", self.meta["train"]["steps"])
        default = f"{self.meta['plugin']} {self.meta['variant']} on {self.meta['dataset']}, {steps} steps"
        if self.weights_dtype is not None:
            default += f", weights stored in {self.weights_dtype}"
        return table | {"license": license, "description": description or default}

    def entry_toml(self, license: str = "unknown", description: str | None = None) -> str:
        """The entry as TOML, ready to paste under a catalogue's ``schema = 1``."""
        lines = [f"[models.{self.name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in self.entry(license, description).items()]
        return "\n".join(lines) + "\n"


def _catalogue_path(folder: Path) -> str:
    """``folder`` as a catalogue beside the current directory names it (relative), when it can."""
    if folder.is_absolute():
        try:
            folder = folder.relative_to(Path.cwd())
        except ValueError:
            return folder.as_posix()  # outside the current folder: the user moves it beside the catalogue
    return folder.as_posix()


def _toml_value(value: Any) -> str:
    """TOML for the values an entry holds: strings, numbers, booleans, lists and flat tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ZooError(f"a catalogue cannot hold the non-finite number {value}")
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ZooError(f"cannot write {value!r} ({type(value).__name__}) into a catalogue")


# --------------------------------------------------------------------------- recipe


def _flag_value(value: Any) -> str:
    """How ``--set`` spells a value (zoo.config parses it back by the field's type)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_flag_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def recipe(meta: Mapping[str, Any], config_changes: Mapping[str, Any]) -> str:
    """The ``zoo train`` command for a checkpoint's ``meta`` (its run record).

    Training fields at their defaults are left out; so is the mesh unless the
    checkpoint records one (results on another mesh agree to rounding, not bitwise).
    """
    from zoo.training import TrainConfig

    train = meta["train"]
    args = ["zoo", "train", meta["plugin"], "--variant", meta["variant"], "--dataset", meta["dataset"]]
    for field, flag in RECIPE_FLAGS.items():
        if train.get(field) is not None:
            args += [flag, str(train[field])]
    if meta.get("init_from"):  # started from pretrained weights: part of the recipe
        args += ["--init-from", str(meta["init_from"])]
    if isinstance(meta.get("mesh"), Mapping) and meta["mesh"]:
        args += ["--mesh", ",".join(f"{axis}={n}" for axis, n in meta["mesh"].items())]
    for field, value in config_changes.items():
        args += ["--set", f"{field}={_flag_value(value)}"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for field, value in train.items():
        if field not in RECIPE_FLAGS and field in defaults and value != _jsonable(defaults[field]):
            args += ["--set", f"train.{field}={_flag_value(value)}"]
    return shlex.join(args)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def recipe_arguments(recipe_text: str, where: str) -> list[str]:
    """The arguments after ``zoo train`` of a catalogue recipe; UsageError if it is not one."""
    try:
        args = shlex.split(recipe_text)
    except ValueError as e:
        raise UsageError(f"{where}: recipe is not a shell command: {e}") from None
    if args[:2] != ["zoo", "train"] or len(args) < 3:
        raise UsageError(f"{where}: recipe must be a `zoo train PLUGIN ...` command; got {recipe_text!r}")
    return args[2:]


# --------------------------------------------------------------------------- export


def _config_changes(plugin: Any, variant: str, saved: Mapping[str, Any]) -> dict[str, Any]:
    """Fields of the saved config that differ from ``variant``'s preset (what the entry's ``config`` holds)."""
    from zoo.config import config_to_dict, make_config

    preset = config_to_dict(make_config(plugin, variant))
    return {k: v for k, v in saved.items() if preset.get(k) != v}


def write_archive(folder: Path, archive: Path, root: str) -> int:
    """Zip ``folder`` under ``root/`` deterministically (sorted members, fixed times and modes); returns its size."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    tmp = archive.with_name(f".{archive.name}.part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in files:
                info = zipfile.ZipInfo(f"{root}/{path.relative_to(folder).as_posix()}", date_time=ZIP_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes(), compresslevel=9)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive.stat().st_size


def _as_stored(loaded: Any, weights_dtype: str | None) -> tuple[dict, dict]:
    """(what the export stores, what loading it gives back) of ``loaded``'s variables, both pure dicts.

    With a ``weights_dtype`` the model then holds the widened-back weights (on their
    devices), so ``evaluate`` and ``params_digest`` measure what users will load.
    """
    import jax
    from flax import nnx

    weights = nnx.to_pure_dict(nnx.state(loaded.model))
    if weights_dtype is None:
        return weights, weights
    stored = checkpoint.narrow_weights(weights, weights_dtype)
    loads = jax.tree.map(lambda w, x: jax.device_put(w, x.sharding), checkpoint.widen_weights(stored, weights), weights)
    loaded.model = nnx.merge(nnx.graphdef(loaded.model), loads)
    return stored, loads


def check_weights_dtype(weights_dtype: str | None) -> None:
    """UsageError (one line) unless ``weights_dtype`` is None or one a checkpoint can store weights in."""
    if weights_dtype is not None and weights_dtype not in checkpoint.WEIGHTS_DTYPES:
        known = ", ".join(checkpoint.WEIGHTS_DTYPES)
        raise UsageError(f"cannot store weights as {weights_dtype!r}: the weights dtype must be one of {known}")


def export(
    workdir: str | Path,
    destination: str | Path,
    *,
    archive: bool = False,
    measure: bool = True,
    weights_dtype: str | None = None,
) -> Exported:
    """Write the newest verified weights of ``workdir`` (EMA if kept) as a portable checkpoint.

    ``destination`` is the folder to create, or with ``archive=True`` the ``.zip``
    (the suffix is added if missing); its name, less ``.zip``, is the entry's name.
    ``measure`` runs the plugin's ``evaluate`` on the dataset's test split for
    the entry's metrics. ``weights_dtype="bfloat16"`` stores float32/float64 weights
    in bfloat16 (half the bytes); metrics and digest are then those of the weights
    as loaded back. Nothing is left behind on failure.
    """
    from zoo import pretrained

    check_weights_dtype(weights_dtype)
    destination = Path(destination)
    if archive and destination.suffix != ".zip":
        destination = destination.with_name(destination.name + ".zip")
    name = destination.name.removesuffix(".zip")
    if not NAME.fullmatch(name):
        raise UsageError(f"{name!r} cannot name a catalogue entry: it must match {NAME.pattern}")
    if destination.exists() or destination.is_symlink():
        raise UsageError(f"{destination} exists; refusing to overwrite")
    loaded = pretrained.load(Path(workdir))
    meta = checkpoint.read_meta(loaded.checkpoint, require=("plugin", "variant", "config", "dataset", "train"))
    meta = {k: meta[k] for k in ("plugin", "variant", "config", "dataset", "train", "step", "mesh", "init_from") if k in meta}
    meta["weights"] = "ema" if (loaded.checkpoint / "ema").is_dir() else "model"
    if weights_dtype is not None:
        meta["weights_dtype"] = weights_dtype  # restores accept the narrowed dtype for this checkpoint only
    stored, loads = _as_stored(loaded, weights_dtype)
    metrics = dict(loaded.evaluate()) if measure else {}
    changes = _config_changes(loaded.plugin, meta["variant"], meta["config"])
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder = destination if not archive else Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{name}.")) / name
    try:
        sha256 = checkpoint.save(folder, {"model": stored}, meta, portable=True)
        size = write_archive(folder, destination, name) if archive else None
    finally:
        if archive:
            shutil.rmtree(folder.parent, ignore_errors=True)
    assert sha256 is not None  # portable saves are single-process, and process 0 seals
    digest = checkpoint.params_digest(loads)
    return Exported(name, destination, sha256, digest, size, meta, changes, metrics, recipe(meta, changes), weights_dtype)


def model_digest(model: Any) -> str:
    """``params_digest`` of an ``nnx.Module``'s variables: what an export of it records."""
    from flax import nnx

    return checkpoint.params_digest(nnx.to_pure_dict(nnx.state(model)))


def weights_digest(workdir: str | Path, weights_dtype: str | None = None) -> str:
    """``params_digest`` of the weights ``load(workdir)`` gives (EMA if kept), as an export with ``weights_dtype`` records it."""
    from zoo import pretrained

    loaded = pretrained.load(Path(workdir))
    return checkpoint.params_digest(_as_stored(loaded, weights_dtype)[1])


def card_weights_dtype(entry: Any) -> str | None:
    """The ``weights_dtype`` a catalogue entry's sealed checkpoint records (fetched if remote): a rerun's digest needs it."""
    from zoo import pretrained

    return checkpoint.stored_weights_dtype(pretrained.checkpoint_folder(entry))


def check_digest(model: Any, expected: str, where: str) -> str:
    """``model``'s params_digest; IntegrityError naming both digests unless it is ``expected``."""
    actual = model_digest(model)
    if actual != expected:
        raise IntegrityError(f"{where}: the restored weights have params_digest {actual}, but the card says {expected}")
    return actual
