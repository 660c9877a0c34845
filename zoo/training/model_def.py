"""``ModelDef``: a model as a static graph plus where each variable lives and which group trains it.

Variables travel as pure nested dicts (``nnx.to_pure_dict``) keyed by tuples of
path parts; ``flatten``/``unflatten`` convert between nested and flat forms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from zoo import memory, sharding
from zoo.matrices import matrix_inputs


def flatten(tree: Mapping) -> dict[tuple, Any]:
    """Nested dict -> ``{("encoder", "hidden", "kernel"): leaf}``."""
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def unflatten(flat: Mapping[tuple, Any]) -> dict:
    """The inverse of ``flatten``."""
    return traverse_util.unflatten_dict(dict(flat)) if flat else {}


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A model as a static ``graphdef`` plus where each variable lives.

    Variables travel as pure nested dicts (``nnx.to_pure_dict``); ``groups[i]`` is
    the set of variable paths group ``i`` trains; every other variable (batch
    statistics, frozen parameters) is "rest". ``frozen`` names the parameters
    ``train.freeze`` moved to the rest.
    """

    graphdef: Any
    abstract: dict  # pure dict of ShapeDtypeStruct
    shardings: dict  # pure dict of NamedSharding
    groups: tuple[frozenset, ...]
    frozen: frozenset = frozenset()
    matrix_inputs: Mapping[tuple, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    """Path -> input axes of each parameter the model marks as a matrix (``zoo.matrices``); Muon's."""

    @classmethod
    def create(cls, build: Callable[[], nnx.Module], mesh: jax.sharding.Mesh, filters: Sequence[Any]) -> ModelDef:
        with nnx.use_eager_sharding(False):
            model = nnx.eval_shape(build)
        graphdef, state = nnx.split(model)
        memory.check_parameters(state, "the model")  # before anything allocates: one line, not a hang
        claimed: set[tuple] = set()
        groups = []
        for f in filters:
            _, chosen, _ = nnx.split(model, f, ...)
            found = frozenset(flatten(nnx.to_pure_dict(chosen))) - claimed
            claimed |= found
            groups.append(found)
        return cls(graphdef, nnx.to_pure_dict(state), sharding.state_shardings(state, mesh), tuple(groups), matrix_inputs=matrix_inputs(state))

    def partition(self, variables: Mapping) -> tuple[tuple[dict, ...], dict]:
        """All variables -> (one dict per group, the rest)."""
        flat = flatten(variables)
        parts = tuple(unflatten({p: flat[p] for p in group}) for group in self.groups)
        claimed = self.trained
        return parts, unflatten({p: v for p, v in flat.items() if p not in claimed})

    @property
    def trained(self) -> frozenset:
        """Every path some group trains."""
        return frozenset().union(*self.groups)

    def freeze(self, paths: frozenset) -> ModelDef:
        """This model with ``paths`` moved out of every group into the rest, where nothing trains them.

        No gradient, optimizer state or update then exists for them (``zoo.training.freeze``).
        """
        return dataclasses.replace(self, groups=tuple(g - paths for g in self.groups), frozen=self.frozen | paths)

    def cast_frozen(self, rest: Mapping, dtype: Any) -> Mapping:
        """``rest`` with its floating frozen parameters in ``dtype``: under bf16 they compute like trained ones."""
        if not self.frozen:
            return rest
        flat = flatten(rest)
        for p in self.frozen:
            if jnp.issubdtype(flat[p].dtype, jnp.floating):
                flat[p] = flat[p].astype(dtype)
        return unflatten(flat)

    def keep_frozen(self, new_rest: Mapping, old_rest: Mapping) -> Mapping:
        """``new_rest`` (after a forward pass) with the frozen parameters of ``old_rest``: nothing writes them."""
        if not self.frozen:
            return new_rest
        flat, old = flatten(new_rest), flatten(old_rest)
        flat.update({p: old[p] for p in self.frozen})
        return unflatten(flat)

    def combine(self, params: Sequence[Mapping], rest: Mapping) -> dict:
        flat = flatten(rest)
        for part in params:
            flat.update(flatten(part))
        return unflatten(flat)

    @property
    def targets(self) -> dict:
        """Restore targets for every variable: shapes, dtypes and the shardings wanted now."""
        return sharding.abstract(self.abstract, self.shardings)

    def merge(self, variables: Mapping) -> nnx.Module:
        return nnx.merge(self.graphdef, dict(variables))

    def init(self, build: Callable[[], nnx.Module]) -> dict:
        """Run ``build`` on the devices, each variable created in its sharding."""

        def create():
            with nnx.use_eager_sharding(False):
                return nnx.to_pure_dict(nnx.state(build()))

        return jax.jit(create, out_shardings=self.shardings)()
