"""Which weights are matrices: the ``nnx.Param`` mark ``train.optimizer=muon`` reads.

A model marks a weight with the axes its layer contracts with the input
(``nnx.Param(w, matrix_inputs=(0,))`` for ``x @ w``; ``(0, 1)`` for an ``(H, K, D)``
attention output). Muon orthogonalises such a weight's update as one matrix, inputs by
the other axes; unmarked parameters (embeddings, norms, biases) train with AdamW.
Light on purpose: a model module imports it, and loading a model must not load the loop.
"""

from __future__ import annotations

from flax import nnx

from zoo import paths

MATRIX_INPUTS = "matrix_inputs"
"""The ``nnx.Param`` metadata key of the mark."""


class MatrixMarkError(ValueError):
    """A parameter's mark does not fit its shape (a plugin's mistake: the loop names the plugin)."""


def matrix_inputs(state: nnx.State) -> dict[tuple, tuple[int, ...]]:
    """``{path: input axes}`` of the parameters marked with ``MATRIX_INPUTS``, checked against their shapes."""
    marked = {}
    for path, variable in nnx.to_flat_state(state):
        inputs = variable.get_metadata().get(MATRIX_INPUTS)
        if inputs is None:
            continue
        inputs, ndim = tuple(inputs), len(variable.shape)
        if not inputs or len(set(inputs)) != len(inputs) or not all(0 <= a < ndim for a in inputs) or len(inputs) == ndim:
            raise MatrixMarkError(f"{paths.name(path)}: {MATRIX_INPUTS}={inputs} must name some but not all of its {ndim} axes")
        marked[tuple(path)] = inputs
    return marked
