"""Refuse, before allocating, what cannot fit: a model's parameters, a sample's outputs.

Without this, ``--set latent_dim=99999999999`` (154 TB of parameters, measured
with ``nnx.eval_shape``) hung while XLA tried to allocate, and ``zoo sample --n
10000000`` (31 GB of images on a 24 GB machine) died in a native abort. Sizes
come from abstract shapes, so checking costs a trace, not an allocation.

What is counted: parameter bytes (the optimizer and activations need more, so
passing is necessary, not sufficient) and output bytes. What is available: the
accelerators' free memory (``memory_stats``), or on CPU the host's available RAM.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from typing import Any

from zoo.errors import ZooError


class OutOfMemory(ZooError):
    """A build or a sample would need more memory than the devices have."""


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``, ``1.5e12`` -> ``"1.4 TiB"`` (binary units; every byte count the zoo prints)."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} PiB"


def host_available_bytes() -> int | None:
    """The host's available RAM (Linux ``MemAvailable``, else free pages), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes() -> tuple[int | None, str]:
    """(bytes the local devices can still hold, where they are), or (None, ...) when nobody says."""
    import jax

    devices = jax.local_devices()
    stats = [d.memory_stats() for d in devices]  # None on CPU
    if all(s and "bytes_limit" in s for s in stats):
        free = sum(s["bytes_limit"] - s.get("bytes_in_use", 0) for s in stats)
        return free, f"{len(devices)} {devices[0].platform} device(s)"
    return host_available_bytes(), "host memory"


def tree_bytes(tree: Any) -> int:
    """Bytes of every leaf with a shape and a dtype (arrays or ``ShapeDtypeStruct``s)."""
    import jax
    import numpy as np

    return sum(
        math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    )


def check_fits(nbytes: int, what: str) -> None:
    """OutOfMemory naming ``what`` and both sizes when ``nbytes`` exceeds what is available."""
    free, where = available_bytes()
    if free is not None and nbytes > free:
        raise OutOfMemory(f"{what} would need {human_bytes(nbytes)}, more than the {human_bytes(free)} available in {where}")


def check_parameters(abstract_state: Any, what: str) -> None:
    """Refuse a model whose parameters (an abstract state, from ``nnx.eval_shape``) cannot fit."""
    check_fits(tree_bytes(abstract_state), f"the parameters of {what}")


def check_sample(sample: Callable[..., Any], model: Any, key: Any, n: int, options: dict[str, Any], what: str) -> None:
    """Refuse ``sample(model, key, n, **options)`` (a plugin's sample) when its outputs cannot fit.

    The outputs' shapes come from ``nnx.eval_shape`` over the plugin's own function
    (unwrapped from the guard that names the plugin in errors). A sampler that
    leaves JAX (``np.asarray`` inside, or texts) cannot be traced, so it is run,
    guarded, for one sample, and its bytes are scaled by ``n``: outputs have one
    row per sample.
    """
    from flax import nnx

    own = inspect.unwrap(sample)
    try:
        nbytes = tree_bytes(nnx.eval_shape(lambda m: own(m, key, n, **options), model))
    except Exception:  # noqa: BLE001 - not traceable; the guarded run below reports real errors, naming the plugin
        if n <= 1:
            return
        nbytes = tree_bytes(sample(model, key, 1, **options)) * n
    check_fits(nbytes, f"{n} samples of {what}")
