"""Publishing trained weights: a byte-reproducible export, its catalogue entry, and a reproduction check.

``export`` turns a training workdir into what a catalogue can pin::

    checkpoint = export(Path("runs/vae"), Path("checkpoints/vae-mnist"))   # or archive=True: a .zip
    print(checkpoint.entry_toml())    # plugin, variant, dataset, sha256, params_digest, metrics, recipe...

The folder is written in the portable layout of ``zoo.checkpoint`` (host arrays,
no OCDBT, no Orbax timestamps or absolute paths), so the same weights give the
same bytes, hence the same sha256, on any machine. The metrics come from the
plugin's ``evaluate`` run on the spot; the recipe is rebuilt from the sealed
checkpoint's own record of the run (its ``meta``), which a stray or edited
``run.json`` cannot change. ``reproduce_digest`` checks a recipe: it trains in a
temporary folder and gives the ``params_digest`` of what it trained.
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


def export(
    workdir: str | Path,
    destination: str | Path,
    *,
    archive: bool = False,
    measure: bool = True,
) -> Exported:
    """Write the newest verified weights of ``workdir`` (EMA if kept) as a portable checkpoint.

    ``destination`` is the folder to create, or with ``archive=True`` the ``.zip``
    (the suffix is added if missing); its name, less ``.zip``, is the entry's name.
    ``measure`` runs the plugin's ``evaluate`` on the dataset's test split for
    the entry's metrics. Nothing is left behind on failure.
    """
    from flax import nnx

    from zoo import pretrained

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
    meta = {k: meta[k] for k in ("plugin", "variant", "config", "dataset", "train", "step", "mesh") if k in meta}
    meta["weights"] = "ema" if (loaded.checkpoint / "ema").is_dir() else "model"
    weights = nnx.to_pure_dict(nnx.state(loaded.model))
    metrics = dict(loaded.evaluate()) if measure else {}
    changes = _config_changes(loaded.plugin, meta["variant"], meta["config"])
    destination.parent.mkdir(parents=True, exist_ok=True)
    folder = destination if not archive else Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{name}.")) / name
    try:
        sha256 = checkpoint.save(folder, {"model": weights}, meta, portable=True)
        size = write_archive(folder, destination, name) if archive else None
    finally:
        if archive:
            shutil.rmtree(folder.parent, ignore_errors=True)
    assert sha256 is not None  # portable saves are single-process, and process 0 seals
    return Exported(name, destination, sha256, checkpoint.params_digest(weights), size, meta, changes, metrics, recipe(meta, changes))


def model_digest(model: Any) -> str:
    """``params_digest`` of an ``nnx.Module``'s variables: what an export of it records."""
    from flax import nnx

    return checkpoint.params_digest(nnx.to_pure_dict(nnx.state(model)))


def weights_digest(workdir: str | Path) -> str:
    """``params_digest`` of the weights ``load(workdir)`` gives (EMA if kept)."""
    from zoo import pretrained

    return model_digest(pretrained.load(Path(workdir)).model)


def check_digest(model: Any, expected: str, where: str) -> str:
    """``model``'s params_digest; IntegrityError naming both digests unless it is ``expected``."""
    actual = model_digest(model)
    if actual != expected:
        raise IntegrityError(f"{where}: the restored weights have params_digest {actual}, but the card says {expected}")
    return actual
