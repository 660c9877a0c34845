"""``train.freeze``: parameters a run leaves exactly as they started (a new head on a frozen backbone).

``train.freeze`` is ``backbone`` (every trained parameter except those under the
plugin's ``replaceable`` prefixes: the head ``--init-from`` re-initialises) or a
comma-separated list of patterns over "/"-joined parameter paths, each matching
as a path prefix (``blocks`` freezes ``blocks/0/attn/kernel``) or as an fnmatch
glob (``blocks/*/attn/*``; ``*`` crosses "/" too).

The loop moves frozen parameters out of the trained groups into the state's
``rest``, with the batch statistics (``ModelDef.freeze``). So no gradient is
computed for them, they have no optimizer state (Adam's two moments would triple
a frozen backbone's memory for nothing), the global-norm clip and the weight
decay see the trained parameters only, and nothing writes them: they stay
bitwise what they were. Masking the updates instead (``optax.masked``) would
still differentiate the whole model and add a zero update to each frozen value,
which turns a stored -0.0 into +0.0.

This module is light (no JAX): ``TrainConfig`` checks the syntax with it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from zoo import paths
from zoo.errors import UsageError

BACKBONE = "backbone"
SHOWN = 6  # trained paths the start-up line names before "and N more"


def patterns(spec: str) -> tuple[str, ...]:
    """``"blocks/*, tokens"`` -> ``("blocks/*", "tokens")``; an empty pattern is a UsageError."""
    items = tuple(p.strip() for p in spec.split(","))
    if not all(items):
        raise UsageError(
            f"train.freeze={spec!r} has an empty pattern; give `backbone` or comma-separated parameter paths or globs"
        )
    return items


def _examples(names: Iterable[str], n: int = 4) -> str:
    ordered = sorted(names)
    return ", ".join(ordered[:n]) + (", ..." if len(ordered) > n else "")


def _backbone(names: Iterable[str], plugin: Any) -> set[str]:
    """Every name outside the plugin's replaceable prefixes."""
    if not plugin.replaceable:
        raise UsageError(
            f"train.freeze=backbone: plugin {plugin.name!r} declares no replaceable head; "
            "name the parameters to freeze instead (train.freeze=PATH-OR-GLOB,...)"
        )
    return {n for n in names if not plugin.replaces(n)}


def frozen_paths(spec: str, trainable: Iterable[tuple], plugin: Any) -> frozenset[tuple]:
    """The paths among ``trainable`` (tuples, as ``ModelDef.groups`` holds them) that ``spec`` freezes.

    ``plugin`` gives its name (for messages) and ``replaceable`` (for ``backbone``).
    A pattern matching nothing, and a spec freezing everything, are UsageErrors:
    the first is a typo, the second a run that would train nothing.
    """
    names = {paths.name(p): p for p in trainable}
    if spec.strip() == BACKBONE:
        chosen = _backbone(names, plugin)
    else:
        chosen = set()
        for pattern in patterns(spec):
            hit = {n for n in names if paths.under(n, pattern) or fnmatch.fnmatchcase(n, pattern)}
            if not hit:
                raise UsageError(
                    f"train.freeze: {pattern!r} matches no parameter of plugin {plugin.name!r} "
                    f"(a path prefix or glob over paths such as {_examples(names)})"
                )
            chosen |= hit
    if chosen == set(names):
        raise UsageError(
            f"train.freeze={spec} freezes all {len(names)} parameter arrays of plugin {plugin.name!r}; nothing would train"
        )
    return frozenset(names[n] for n in chosen)


def describe(spec: str, frozen: Mapping[str, int], trained: Mapping[str, int]) -> str:
    """The start-up line: how much is frozen, and what trains. Values are each array's size.

    ``freeze backbone: 24 of 26 parameter arrays frozen (812,000 of 850,000 values); training head/kernel, head/bias``
    """
    arrays, values = len(frozen) + len(trained), sum(frozen.values()) + sum(trained.values())
    names = sorted(trained)
    shown = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
    return (
        f"freeze {spec}: {len(frozen)} of {arrays} parameter arrays frozen "
        f"({sum(frozen.values()):,} of {values:,} values); training {shown}"
    )
