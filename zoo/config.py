"""Model configs: a plugin's frozen dataclass, filled from a named variant and overrides.

``--set latent_dim=16`` arrives as text; it is converted by the field's declared
type, so a typo or a wrong type is a one-line usage error before anything runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from zoo.errors import UnknownName, UsageError
from zoo.plugin import Plugin


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _coerce(text: str, kind: Any, field: str) -> Any:
    """Convert ``text`` to the declared type ``kind`` of ``field``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(text, option, field)
            except UsageError:
                continue
        raise UsageError(f"{field}: cannot read {text!r} as {kind}")
    if origin is typing.Literal:
        for choice in args:  # Literal[1, 2] is set as "1": match the text of each choice
            if str(choice) == text:
                return choice
        raise UsageError(f"{field} must be one of {', '.join(map(str, args))}; got {text!r}")
    if origin is tuple:
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        element = args[0] if args else str
        return tuple(_coerce(p.strip(), element, field) for p in parts)
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        raise UsageError(f"{field} must be {kind.__name__}; got {text!r}") from None
    raise UsageError(f"{field}: values of type {kind} cannot be set from the command line")


def _coerce_value(value: Any, kind: Any, field: str) -> Any:
    """Text is parsed by the declared type; other values pass as given (lists become tuples),
    and the config's own ``__post_init__`` is what checks them."""
    if isinstance(value, str) and kind is not str:
        return _coerce(value, kind, field)
    if isinstance(value, list):
        return tuple(value)
    return value


_UNCHECKED = object()


def _conform(value: Any, kind: Any) -> Any:
    """``value`` as a ``kind`` (lists become tuples, ints widen to float), or ``_UNCHECKED`` if it is not one.

    Types this cannot judge (a class of the plugin's own, a forward reference)
    pass as given: the config's ``__post_init__`` checks those.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if (fitted := _conform(value, option)) is not _UNCHECKED:
                return fitted
        return _UNCHECKED
    if kind is type(None):
        return None if value is None else _UNCHECKED
    if origin is typing.Literal:  # type too: Literal[1] is not met by True or 1.0
        return value if any(value == c and type(value) is type(c) for c in args) else _UNCHECKED
    if origin is tuple or kind is tuple:
        if not isinstance(value, tuple | list):
            return _UNCHECKED
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args or [Any] * len(value))
        if len(kinds) != len(value):
            return _UNCHECKED
        items = tuple(_conform(v, k) for v, k in zip(value, kinds))
        return _UNCHECKED if any(v is _UNCHECKED for v in items) else items
    if kind is bool:
        return value if isinstance(value, bool) else _UNCHECKED
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _UNCHECKED
    if kind is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _UNCHECKED
    if isinstance(kind, type) and origin is None:
        return value if isinstance(value, kind) else _UNCHECKED
    return value


def _type_name(kind: Any) -> str:
    """``int``, ``one of dense, conv``, ``tuple[int, ...]``: how an error names a declared type."""
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    return kind.__name__ if isinstance(kind, type) and typing.get_origin(kind) is None else str(kind).replace("typing.", "")


def fill_dataclass(cls: type, base: Mapping[str, Any], overrides: Mapping[str, Any] | None, what: str) -> Any:
    """``cls(**base, **overrides)`` with every value checked against its field's declared type.

    Text overrides (``--set``) are parsed by that type first; other values (a
    catalogue's TOML, a saved config, Python callers) must already be of it, so
    ``latent_dim = 1.5`` or ``kind = 5`` is one UsageError, not a failure deep in a build.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    values = dict(base)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UnknownName(f"field of {what}", key, fields)
        values[key] = _coerce_value(value, hints[key], key)
    for key in values.keys() & hints.keys():
        fitted = _conform(values[key], hints[key])
        if fitted is _UNCHECKED:
            raise UsageError(f"invalid {what}: {key} must be {_type_name(hints[key])}; got {values[key]!r}")
        values[key] = fitted
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"invalid {what}: {e}") from None


def make_config(plugin: Plugin, variant: str | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The plugin's config dataclass for ``variant`` (default: the first) with ``overrides`` applied."""
    variant = variant or plugin.default_variant
    if variant not in plugin.variants:
        raise UnknownName(f"variant of plugin {plugin.name!r}", variant, plugin.variants)
    return fill_dataclass(plugin.resolve("config"), plugin.variants[variant], overrides, f"{plugin.name} config")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(plugin: Plugin, values: Mapping[str, Any]) -> Any:
    """Rebuild a config saved with ``config_to_dict``."""
    return fill_dataclass(plugin.resolve("config"), {}, values, f"saved {plugin.name} config")


def call_options(fn: Any, given: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Check ``given`` against ``fn``'s keyword options; text values are parsed by their annotations.

    For plugin functions with options after their fixed arguments, such as
    ``sample(model, key, n, *, mode="prior")``: an option it does not take is a
    usage error naming the ones it does.
    """
    parameters = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    options = {n: p for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    hints = typing.get_type_hints(fn)
    out = {}
    for key, value in given.items():
        if key not in options and not accepts_any:
            raise UnknownName(what, key, options) if options else UsageError(f"{what}s: there are none; got {key!r}")
        kind = hints.get(key, str)
        out[key] = _coerce(value, kind, key) if isinstance(value, str) and kind is not str else value
    return out
