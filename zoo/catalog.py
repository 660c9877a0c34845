"""Catalogues of pretrained models (``registry.toml`` and its kin): parsing and strict validation.

A catalogue is TOML::

    schema = 1

    [models.vae-mnist]
    plugin = "vae"                      # the plugin that builds it
    variant = "dense-20"                # optional; the plugin's default otherwise
    config = { latent_dim = 20 }        # optional config overrides on top of the variant
    dataset = "mnist"
    checkpoint = "checkpoints/vae-mnist"  # relative to this file (may not escape its folder),
                                          # or an https:// / file:// URL of a .zip of the folder
                                          # (http:// only on loopback, to test hosting locally)
    sha256 = "<sha256 of the checkpoint's MANIFEST.json>"
    params_digest = "<sha256>"          # optional; zoo.checkpoint.params_digest of the weights,
                                        # what `zoo verify --reproduce` compares a rerun with
    size = 812345                       # optional, remote only: the archive's exact size in bytes
    metrics = { neg_elbo = 98.7 }       # what the plugin's evaluate measured
    tolerance = { neg_elbo = 0.5 }      # optional; absolute, per metric, for `zoo verify`
    recipe = "zoo train vae --variant dense-20 ..."
    seed = 0
    license = "CC-BY-SA-3.0"
    description = "One line for zoo list."

Every problem is a ``CatalogError`` naming the file and the entry; nothing here
raises anything else, whatever the file holds.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from zoo.errors import ZooError

SCHEMA = 1
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REMOTE_SCHEMES = ("https://", "file://", "http://")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Plain http is accepted only from these: a hosted archive can be tried out locally,
while anything fetched from elsewhere travels over TLS (the sha256 pins the bytes either way)."""
DEFAULT_TOLERANCE = 1e-3
"""Relative tolerance ``zoo verify`` allows a metric without an explicit absolute one."""


class CatalogError(ZooError):
    """A catalogue file is unreadable or an entry in it is malformed."""


@dataclasses.dataclass(frozen=True)
class PretrainedEntry:
    """One pretrained model: what builds it, where its weights are, what they score."""

    name: str
    plugin: str
    variant: str | None
    config: Mapping[str, Any]
    dataset: str
    checkpoint: str
    sha256: str
    params_digest: str | None
    size: int | None
    metrics: Mapping[str, float]
    tolerance: Mapping[str, float]
    recipe: str
    seed: int
    license: str
    description: str
    source: Path

    @property
    def remote(self) -> bool:
        return self.checkpoint.startswith(REMOTE_SCHEMES)

    @property
    def local_path(self) -> Path:
        """The checkpoint folder of a local entry (validated not to escape the catalogue's folder)."""
        return self.source.parent / self.checkpoint

    def allowed_error(self, metric: str) -> float:
        """How far a re-measured ``metric`` may be from the card and still verify."""
        if metric in self.tolerance:
            return self.tolerance[metric]
        return DEFAULT_TOLERANCE * max(1.0, abs(self.metrics[metric]))

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies, and a MappingProxyType cannot be copied
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out |= {"config": dict(self.config), "metrics": dict(self.metrics), "tolerance": dict(self.tolerance)}
        out["source"] = str(self.source)
        return out


@dataclasses.dataclass(frozen=True)
class Catalog:
    entries: Mapping[str, PretrainedEntry]


# field -> (type check, description); tomllib only yields str/int/float/bool/date/list/dict.
def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(x: Any) -> bool:
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))  # TOML integers are unbounded; float() of a huge one overflows
    except OverflowError:
        return False


def _is_number_table(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_finite_number(x) for k, x in v.items())


_REQUIRED = {
    "plugin": (_is_str, "a non-empty string"),
    "dataset": (_is_str, "a non-empty string"),
    "checkpoint": (_is_str, "a non-empty string"),
    "sha256": (lambda v: isinstance(v, str) and SHA256.fullmatch(v) is not None, "64 lowercase hex digits"),
    "metrics": (_is_number_table, "a table of finite numbers"),
    "recipe": (_is_str, "a non-empty string"),
    "seed": (_is_int, "an integer"),
    "license": (_is_str, "a non-empty string"),
    "description": (_is_str, "a non-empty string"),
}
_OPTIONAL = {
    "variant": (_is_str, "a non-empty string"),
    "params_digest": (lambda v: isinstance(v, str) and SHA256.fullmatch(v) is not None, "64 lowercase hex digits"),
    "size": (lambda v: _is_int(v) and v > 0, "a positive integer (bytes)"),
    "config": (lambda v: isinstance(v, dict), "a table of config overrides"),
    "tolerance": (
        lambda v: _is_number_table(v) and all(x >= 0 for x in v.values()),
        "a table of non-negative numbers",
    ),
}


def _checkpoint_problem(checkpoint: str, folder: Path) -> str | None:
    """Why ``checkpoint`` is not an acceptable location, or None."""
    if "://" in checkpoint:
        if not checkpoint.startswith(REMOTE_SCHEMES):
            return f"checkpoint URL must start with {' or '.join(REMOTE_SCHEMES)}"
        try:
            parts = urllib.parse.urlsplit(checkpoint)
            host = parts.hostname
        except ValueError:  # e.g. an unclosed "[" in an IPv6 host
            return f"checkpoint URL {checkpoint!r} is malformed"
        if parts.scheme in ("https", "http") and not host:
            return f"checkpoint URL {checkpoint!r} names no host"
        if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
            return f"checkpoint URL {checkpoint!r}: plain http is allowed only on loopback ({', '.join(LOOPBACK_HOSTS)}); use https://"
        return None
    if "\x00" in checkpoint:
        return "checkpoint path contains a NUL byte"
    relative = PurePosixPath(checkpoint.replace("\\", "/"))
    if relative.is_absolute() or re.match(r"^[A-Za-z]:", checkpoint) or ".." in relative.parts:
        return f"checkpoint path {checkpoint!r} escapes the catalogue's folder"
    try:  # a symlink inside the folder may still point out of it
        resolved = (folder / relative).resolve()
        resolved.relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return f"checkpoint path {checkpoint!r} escapes the catalogue's folder"
    return None


def _entry(name: str, table: Any, path: Path) -> PretrainedEntry:
    where = f"{path}: [models.{name}]"
    if not NAME.fullmatch(name):
        raise CatalogError(f"{path}: model name {name!r} must match {NAME.pattern}")
    if not isinstance(table, dict):
        raise CatalogError(f"{where} must be a table")
    unknown = sorted(set(table) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise CatalogError(f"{where} has unknown field(s) {', '.join(map(repr, unknown))}")
    for field, (ok, wanted) in _REQUIRED.items():
        if field not in table:
            raise CatalogError(f"{where} is missing {field!r}")
        if not ok(table[field]):
            raise CatalogError(f"{where} field {field!r} must be {wanted}")
    for field, (ok, wanted) in _OPTIONAL.items():
        if field in table and not ok(table[field]):
            raise CatalogError(f"{where} field {field!r} must be {wanted}")
    if problem := _checkpoint_problem(table["checkpoint"], path.parent):
        raise CatalogError(f"{where} {problem}")
    if "size" in table and "://" not in table["checkpoint"]:
        raise CatalogError(f"{where} field 'size' is for remote checkpoints (the archive's bytes); a local folder has none")
    tolerance = table.get("tolerance", {})
    if stray := sorted(set(tolerance) - set(table["metrics"])):
        raise CatalogError(f"{where} tolerance names metric(s) not in metrics: {', '.join(stray)}")
    return PretrainedEntry(
        name=name,
        plugin=table["plugin"],
        variant=table.get("variant"),
        config=MappingProxyType(dict(table.get("config", {}))),
        dataset=table["dataset"],
        checkpoint=table["checkpoint"],
        sha256=table["sha256"],
        params_digest=table.get("params_digest"),
        size=table.get("size"),
        metrics=MappingProxyType({k: float(v) for k, v in table["metrics"].items()}),
        tolerance=MappingProxyType({k: float(v) for k, v in tolerance.items()}),
        recipe=table["recipe"],
        seed=table["seed"],
        license=table["license"],
        description=table["description"],
        source=path,
    )


def parse_catalog(text: str, path: Path) -> list[PretrainedEntry]:
    """Validate catalogue ``text`` as read from ``path`` (used to resolve and report)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{path}: invalid TOML: {e}") from None
    except RecursionError:
        raise CatalogError(f"{path}: invalid TOML: nested too deeply") from None
    schema = data.get("schema")
    if type(schema) is not int or schema != SCHEMA:  # not True, not 1.0
        raise CatalogError(f"{path}: 'schema = {SCHEMA}' is required (found {data.get('schema')!r})")
    if unknown := sorted(set(data) - {"schema", "models"}):
        raise CatalogError(f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise CatalogError(f"{path}: 'models' must be a table of [models.NAME] tables")
    return [_entry(name, table, path) for name, table in models.items()]


def load_catalog(path: Path) -> list[PretrainedEntry]:
    """Read and validate one catalogue file."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogError(f"{path}: cannot read catalogue: {e}") from None
    return parse_catalog(text, path)
