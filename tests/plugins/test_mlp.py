"""The MLP plugin: the layer shapes of each variant, dropout's two modes, learning MNIST."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo import classify


@pytest.mark.parametrize(
    "variant,widths",
    [("2-layer", (784, 800, 10)), ("3-layer", (784, 512, 512, 10)), ("5-layer", (784, 1024, 1024, 1024, 1024, 10))],
)
def test_variant_layer_shapes(variant, widths):
    abstract = nnx.eval_shape(lambda: zoo.build("mlp", variant))
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    expected = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        expected |= {f"layers/{i}/kernel": (a, b), f"layers/{i}/bias": (b,)}
    assert shapes == expected


def test_dropout_only_in_training():
    model = zoo.build("mlp", "3-layer")
    x = jnp.asarray(np.random.default_rng(0).random((4, 28, 28, 1)), jnp.float32)
    a, b = model(x, train=True, key=jax.random.key(0)), model(x, train=True, key=jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x), model(x, train=False))
    undropped = zoo.build("mlp", "2-layer")  # no dropout: training and inference agree
    np.testing.assert_allclose(undropped(x, train=True, key=jax.random.key(0)), undropped(x), rtol=1e-6)


def test_logits_are_the_head_of_the_features():
    model = zoo.build("mlp", "3-layer")
    x = jnp.asarray(np.random.default_rng(0).random((3, 28, 28, 1)), jnp.float32)
    h = np.maximum(np.asarray(x).reshape(3, -1) @ model.layers[0].kernel[...] + model.layers[0].bias[...], 0)
    h = np.maximum(h @ model.layers[1].kernel[...] + model.layers[1].bias[...], 0)  # numpy forward pass
    np.testing.assert_allclose(model.features(x), h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model(x), h @ model.layers[2].kernel[...] + model.layers[2].bias[...], rtol=1e-4, atol=1e-4)


def test_config_is_checked():
    with pytest.raises(zoo.UsageError, match="hidden widths must be positive"):
        zoo.build("mlp", "2-layer", hidden=(0,))


@pytest.mark.mnist
@pytest.mark.slow
def test_learns_mnist(tmp_path):
    """300 steps of the 3-layer MLP: test accuracy on 2000 images above 93%."""
    test = zoo.data.load("mnist", "test")
    subset = {k: v[:2000] for k, v in test.items()}
    zoo.train("mlp", variant="3-layer", workdir=tmp_path, steps=300, batch_size=128, progress=False)
    assert classify.evaluate(zoo.load(tmp_path).model, subset, robust_examples=0)["accuracy"] > 0.93


def test_predict_with_an_attack_writes_the_triptych(tmp_path, capsys):
    """`zoo predict mlp-mnist --attack fgsm --out adv.png` on a drawn "1": the PNG holds the input, an image
    within eps of it, and the perturbation (grey 128 where nothing moved), each a 28x28 panel."""
    from PIL import Image

    from zoo import cli

    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 13:15] = 255  # a vertical stroke
    Image.fromarray(digit).save(tmp_path / "one.png")
    out = tmp_path / "adv.png"
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["predict", "mlp-mnist", "--input", str(tmp_path / "one.png"), "--attack", "fgsm", "--eps", "0.1", "--out", str(out)])
    assert exit_code.value.code == 0
    assert "-> attacked:" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("L")).astype(int)
    panels = [grid[2:30, 2 + 30 * i : 30 + 30 * i] for i in range(3)]  # 2-pixel padding around 28x28 panels
    np.testing.assert_array_equal(panels[0], digit)
    assert np.abs(panels[1] - digit).max() <= 26  # eps 0.1 of 255, plus rounding
    moved = panels[1] != digit
    assert moved.any() and np.all(np.abs(panels[2][~moved] - 128) <= 1)
