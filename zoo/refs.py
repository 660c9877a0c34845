"""References into third-party code, and calls whose failures name their owner.

Plugins and datasets name their code as ``"module:attribute"`` strings, resolved
on first use, so discovering them imports nothing heavy. A function resolved
here is wrapped so that what it raises names its owner (``plugin 'vae'``,
``dataset 'mnist'``) and the function (``build``, ``load``...) in one line,
instead of a traceback that never says whose code failed: a ``ZooError`` keeps
its class and exit code with the owner prefixed, anything else becomes a
``PluginError``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from zoo.errors import ZooError

Ref = str | Callable[..., Any] | type
"""A ``"module:attribute"`` string resolved lazily, or the object itself."""

INTERRUPTED_EXIT_CODES = (130, 143)
"""A stop by Ctrl-C or SIGTERM is nobody's failure: such errors pass through unprefixed."""


class PluginError(ZooError):
    """Code of a plugin or dataset raised something other than a ``ZooError``, or returned
    something the core cannot use. The message names the owner and the function;
    ``__cause__`` keeps the original for ``--debug``.
    """


def ref_problem(field: str, ref: Any) -> str | None:
    """What is wrong with the shape of reference ``field`` (None if nothing), importing nothing."""
    if isinstance(ref, str):
        if ref.count(":") != 1 or not all(ref.split(":")):
            return f"{field} must be 'module:attribute', got {ref!r}"
        return None
    if not callable(ref):
        return f"{field} must be 'module:attribute' or a callable"
    return None


def resolve(ref: Ref, owner: str, field: str) -> Any:
    """Import and return the object behind ``ref``; a ``ZooError`` naming ``owner`` if it is not there."""
    if not isinstance(ref, str):
        return ref
    module_name, attr = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a module that raises on import is the owner's failure, whatever it raises
        raise ZooError(f"{owner}: cannot import {module_name} for {field}: {_one_line(e)}") from e
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as e:
            raise ZooError(f"{owner}: {ref} does not exist ({field})") from e
    return target


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (JAX's messages run to dozens of lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def as_plugin_error(error: Exception, owner: str, field: str) -> ZooError:
    """The one-line error the user sees for ``error`` raised inside ``owner``'s ``field``.

    A ``ZooError`` raised on purpose keeps its class (``except UsageError`` still
    catches it), exit code and message, prefixed with its owner; anything else
    becomes a ``PluginError``.
    """
    named = isinstance(error, PluginError) or getattr(error, "owner", None) is not None
    if named or (isinstance(error, ZooError) and error.exit_code in INTERRUPTED_EXIT_CODES):
        return error  # already names its owner (a dataset failing inside a plugin's train), or a stop
    if isinstance(error, ZooError):
        # A copy made without __init__: subclasses such as UnknownName take other arguments.
        prefixed = type(error).__new__(type(error))
        prefixed.__dict__.update(vars(error))
        prefixed.args, prefixed.owner = (f"{owner} {field}: {error}",), owner
        return prefixed
    return PluginError(f"{owner} {field} raised {_one_line(error)} (run with --debug for the traceback)")


def guard(fn: Callable[..., Any], owner: str, field: str, check: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """``fn`` such that what it raises names ``owner`` and ``field``.

    ``check(result, *args, **kwargs)`` validates and normalises the result; it
    raises ``ValueError`` with a message naming the offending key or value.
    """

    @functools.wraps(fn)  # keeps the signature and annotations that option parsing reads
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever the owner's code raises is reported as its failure
            raise as_plugin_error(e, owner, field) from e
        if check is None:
            return result
        try:
            return check(result, *args, **kwargs)
        except ValueError as e:
            raise PluginError(f"{owner} {field} returned {e}") from None

    return guarded
