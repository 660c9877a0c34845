"""Meshes and the one table that maps a model's logical axes onto them.

Every mesh has the three axes ``data``, ``fsdp`` and ``tensor`` (size 1 when
unused), so one rules table serves every layout:

- ``data``: batch split, parameters replicated (data parallel);
- ``fsdp``: batch split and parameters split along their ``embed`` dimension
  (fully sharded data parallel); XLA gathers them per layer;
- ``tensor``: hidden widths (``mlp``, ``heads``, ``vocab``) split, batch
  replicated (tensor parallel, Megatron-style for transformer blocks).

Models name axes (``nnx.with_partitioning(init, ("embed", "mlp"))``) and never
mention meshes or device counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zoo.errors import UsageError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),  # model width: what FSDP splits
    ("mlp", "tensor"),  # MLP hidden width: column-then-row tensor parallelism
    ("heads", "tensor"),  # attention heads: each tensor shard owns whole heads
    ("vocab", "tensor"),
    ("kv", None),  # per-head width stays whole
    ("latent", None),  # small bottlenecks are not worth splitting
    ("conv", None),
)
"""Logical axis -> mesh axis (or axes); None or an unknown name replicates."""


def parse_mesh(text: str | None) -> dict[str, int]:
    """``"data=4,tensor=2"`` -> ``{"data": 4, "tensor": 2}``; None or "" -> ``{}``."""
    shape: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        axis, sep, size = part.partition("=")
        axis = axis.strip()
        if not sep or axis not in MESH_AXES:
            raise UsageError(f"--mesh takes AXIS=N[,AXIS=N] with axes {', '.join(MESH_AXES)}; got {part!r}")
        if not size.strip().isdigit() or int(size) < 1:
            raise UsageError(f"--mesh: size of {axis!r} must be a positive integer; got {size!r}")
        if axis in shape:
            raise UsageError(f"--mesh names {axis!r} twice ({text!r}); name each axis once")
        shape[axis] = int(size)
    return shape


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all, every process's).

    Axes left out have size 1, except that with no axes at all every device goes
    on ``data``. A mesh smaller than the device count uses the first devices (one
    process only: a multi-process mesh spans every process's devices).
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"data": len(devices)})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise UsageError(f"unknown mesh axis {sorted(unknown)}; axes are {', '.join(MESH_AXES)}")
    sizes = tuple(shape.get(axis, 1) for axis in MESH_AXES)
    if math.prod(sizes) < len(devices) and jax.process_count() == 1:
        devices = devices[: math.prod(sizes)]  # an explicit smaller mesh: the first devices
    if math.prod(sizes) != len(devices):
        layout = ",".join(f"{a}={n}" for a, n in zip(MESH_AXES, sizes) if n > 1) or "1 device"
        raise UsageError(f"mesh {layout} needs {math.prod(sizes)} devices; there are {len(devices)}")
    # jax.make_mesh orders the devices by the hardware's topology (rings, hosts) rather
    # than by their numbering. Auto: XLA propagates shardings through each op (Explicit
    # rejects contractions over a split dimension).
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def mesh_size(mesh: Mesh, axes: str | Sequence[str]) -> int:
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def partition_spec(logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Map one array's logical axis names to a PartitionSpec on ``mesh``.

    A dimension that the mesh axes do not divide is replicated instead: a 20-d
    latent on 8 devices is cheaper whole than padded.
    """
    if not logical:
        return PartitionSpec()
    rules = dict(RULES)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape):
        target = rules.get(name) if name else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        if axes and size % mesh_size(mesh, axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def map_variables(fn: Callable[[nnx.Variable], Any], state: nnx.State) -> dict:
    """Apply ``fn`` to every Variable of ``state``; return a pure nested dict of the results."""
    return nnx.to_pure_dict(jax.tree.map(lambda v: v.replace(fn(v)), state, is_leaf=_is_variable))


def state_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
    """NamedShardings, as a pure dict shaped like ``nnx.to_pure_dict(state)``."""

    def sharding(v: nnx.Variable) -> NamedSharding:
        logical = v.get_metadata().get("out_sharding") or v.get_metadata().get("sharding_names")
        return NamedSharding(mesh, partition_spec(logical, v.shape, mesh))

    return map_variables(sharding, abstract_state)


def abstract(tree: Any, shardings: Any) -> Any:
    """Restore/compile targets: ``ShapeDtypeStruct`` leaves of ``tree`` carrying ``shardings``."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def on_one_device(model: nnx.Module) -> nnx.Module:
    """``model`` with its arrays on one device, when every one is replicated over several.

    A computation on replicated inputs runs on each of their devices, every one
    repeating all of it: no faster for one that splits nothing (a sample, a
    prediction), and costly where devices share a host's cores (8 CPU devices: about
    6x a GPT sample's time). A model with split arrays, or spread over processes, is
    returned as it is.
    """
    graphdef, state = nnx.split(model)
    arrays = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    if all(len(x.sharding.device_set) == 1 for x in arrays):
        return model
    if not all(x.is_fully_addressable and x.is_fully_replicated for x in arrays):
        return model
    device = min(arrays[0].sharding.device_set, key=lambda d: d.id)
    return nnx.merge(graphdef, jax.device_put(state, device))


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Split dimension ``leading`` (the batch) over ``data`` and ``fsdp``; the rest whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading), BATCH_AXES))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Refuse, before anything compiles, a batch the batch axes cannot split evenly.

    (The split over processes is ``ArrayLoader``'s to check: it cuts the per-process slices.)"""
    shards = mesh_size(mesh, BATCH_AXES)
    if batch_size % shards:
        raise UsageError(
            f"{what} {batch_size} does not divide over the mesh's data x fsdp = {shards} shards; "
            f"use a multiple of {shards}"
        )


def process_rows(sharding: NamedSharding, global_batch: int) -> slice:
    """The rows of a global batch that this process's devices hold under ``sharding`` (batch axis first).

    Processes split the batch only as far as the mesh's batch axes span them: with
    ``tensor=4`` over two processes each holds every row; with ``data=2,tensor=2``,
    each holds half. (JAX places a process's devices in one block of the mesh, so
    its rows are contiguous; anything else is refused rather than mis-fed.)
    """
    shape = (global_batch,)
    starts_stops = {
        (index[0].start or 0, global_batch if index[0].stop is None else index[0].stop)
        for index in sharding.addressable_devices_indices_map(shape).values()
    }
    start, stop = min(a for a, _ in starts_stops), max(b for _, b in starts_stops)
    covered = np.zeros(global_batch, bool)
    for a, b in starts_stops:
        covered[a:b] = True
    if not covered[start:stop].all():
        raise UsageError(f"this process's devices hold non-contiguous rows of the batch under {sharding.spec}; use another --mesh")
    return slice(start, stop)


def put_global_batch(local: Any, sharding: NamedSharding, global_batch: int, leading: int = 0) -> Any:
    """Assemble each process's slice of a batch (numpy) into one global sharded array tree."""

    def put(x: np.ndarray) -> jax.Array:
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        shape = list(x.shape)
        shape[leading] = global_batch
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree.map(put, local)
