"""``train.optimizer=muon``: Muon on the weights a model marks as matrices, AdamW on everything else.

References are independent of optax's code: numpy's SVD for what Muon's update must be
(the gradient's singular vectors, its singular values pushed towards 1), and NAdam's
first step, a multiple of the sign of the gradient.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_one_line_error, run_main

import zoo
from zoo.errors import ZooError
from zoo.matrices import MATRIX_INPUTS, MatrixMarkError, matrix_inputs
from zoo.training import TrainConfig, make_optimizer
from zoo_gpt import model as gpt_model

LR = 0.01
TINY_GPT = {"layers": 1, "width": 32, "heads": 2, "context": 16}


def first_update(params: dict, grads: dict, matrices: dict, **train) -> dict:
    tx = make_optimizer(TrainConfig(optimizer="muon", learning_rate=LR, **train), matrices=matrices)
    updates, _ = tx.update(grads, tx.init(params), params)
    return {k: np.asarray(v) for k, v in updates.items()}


def test_muon_orthogonalises_the_marked_matrix_and_adam_steps_the_rest():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((16, 8)).astype(np.float32) * np.linspace(0.1, 3.0, 8, dtype=np.float32)  # spread singular values
    params = {"w": jnp.zeros((16, 8)), "b": jnp.zeros(8), "embedding": jnp.zeros((5, 8))}
    grads = {"w": jnp.asarray(g), "b": jnp.asarray(rng.standard_normal(8), jnp.float32), "embedding": jnp.ones((5, 8))}
    updates = first_update(params, grads, {("w",): (0,)})
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    # In the gradient's singular basis Muon's step is diagonal and descends...
    projected = u.T @ updates["w"] @ vt.T
    diagonal = np.diag(projected)
    assert np.all(diagonal < 0)
    assert np.abs(projected - np.diag(diagonal)).max() < 1e-3 * np.abs(diagonal).max()
    # ...with the singular values evened out: 30x apart in the gradient, within 2x in the step.
    assert s.max() / s.min() > 20 and np.abs(diagonal).max() / np.abs(diagonal).min() < 2
    # Scaled to AdamW's typical RMS (0.2 of an orthogonal step of RMS 1 / sqrt(min side) * sqrt(max side)).
    assert 0.1 * LR < np.sqrt(np.mean(updates["w"] ** 2)) < 0.3 * LR
    # Unmarked parameters: Adam with Nesterov momentum (NAdam, as optax's Muon pairs it), whose first
    # step is -lr * (1 + b1 / (1 + b1)) * sign(gradient): the bias-corrected moment plus its look-ahead.
    nadam_first = LR * (1 + 0.9 / 1.9)
    np.testing.assert_allclose(updates["b"], -nadam_first * np.sign(np.asarray(grads["b"])), rtol=1e-4)
    np.testing.assert_allclose(updates["embedding"], -nadam_first * np.ones((5, 8)), rtol=1e-4)


def test_muon_treats_several_input_axes_as_one():
    """An ``(H, K, D)`` output projection with input axes (0, 1) is orthogonalised as one ``(H*K, D)`` matrix."""
    g = np.random.default_rng(1).standard_normal((2, 4, 6)).astype(np.float32)
    updates = first_update({"out": jnp.zeros((2, 4, 6))}, {"out": jnp.asarray(g)}, {("out",): (0, 1)})
    as_matrix = first_update({"m": jnp.zeros((8, 6))}, {"m": jnp.asarray(g.reshape(8, 6))}, {("m",): (0,)})
    np.testing.assert_allclose(updates["out"].reshape(8, 6), as_matrix["m"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("inputs", [(), (2,), (0, 1), (0, 0)])
def test_a_mark_must_name_some_but_not_all_axes(inputs):
    class Holder(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros((3, 4)), **{MATRIX_INPUTS: inputs})

    with pytest.raises(MatrixMarkError, match="must name some but not all of its 2 axes"):
        matrix_inputs(nnx.state(Holder()))


def test_muon_for_a_plugin_that_marks_no_matrix_is_a_one_line_error(tmp_path):
    code, _, err = run_main(["train", "mlp", "--steps", "1", "--batch-size", "8", "--workdir", str(tmp_path), "--set", "train.optimizer=muon"])
    assert code == 2
    assert_one_line_error(err, "train.optimizer=muon: plugin 'mlp' marks none of the parameters it trains as a matrix")


def test_a_mark_that_does_not_fit_its_weight_names_the_plugin(monkeypatch, tmp_path):
    original = gpt_model._param
    monkeypatch.setattr(gpt_model, "_param", lambda *a, inputs=None, **k: original(*a, inputs=(5,) if inputs else None, **k))
    with pytest.raises(ZooError, match=r"plugin 'gpt': blocks/0/attention/\w+: matrix_inputs=\(5,\)"):
        zoo.train("gpt", dataset="shakespeare", workdir=tmp_path, steps=1, batch_size=8, progress=False, settings=TINY_GPT, train_data=zoo.data.synthetic("shakespeare", 8))
