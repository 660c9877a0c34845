"""The CNN plugin: parameter counts by hand, BatchNorm's two modes, the loop carrying batch statistics, learning MNIST."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo import classify


def parameter_count(plugin: str, variant: str) -> int:
    abstract = nnx.eval_shape(lambda: zoo.build(plugin, variant))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def test_parameter_counts_by_hand():
    conv = lambda k, a, b, bias=True: k * k * a * b + (b if bias else 0)  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731  scale and shift; the running statistics are not parameters
    lenet = conv(5, 1, 20) + conv(5, 20, 50) + (7 * 7 * 50 * 500 + 500) + (500 * 10 + 10)
    assert parameter_count("cnn", "lenet") == lenet
    stem = conv(3, 1, 32, False) + bn(32)
    block_32 = 2 * (conv(3, 32, 32, False) + bn(32))
    block_64 = conv(3, 32, 64, False) + bn(64) + conv(3, 64, 64, False) + bn(64) + conv(1, 32, 64, False) + bn(64)
    assert parameter_count("cnn", "resnet") == stem + block_32 + block_64 + (64 * 10 + 10)


@pytest.mark.parametrize("variant", ["lenet", "resnet"])
def test_logits_are_the_head_of_the_features(variant):
    model = zoo.build("cnn", variant)
    x = jnp.asarray(np.random.default_rng(0).random((3, 28, 28, 1)), jnp.float32)
    features = model.features(x)
    assert model(x).shape == (3, 10) and features.ndim == 2
    np.testing.assert_allclose(model(x), model.logits(features), rtol=1e-5, atol=1e-5)


def test_batchnorm_uses_batch_statistics_only_in_training():
    """Training mode: an example's logits depend on its batch companions, and the running averages move.
    Inference: they do not, and nothing moves."""
    model = zoo.build("cnn", "resnet")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((4, 28, 28, 1)), jnp.float32)
    other = x.at[1:].set(jnp.asarray(rng.random((3, 28, 28, 1)), jnp.float32))
    before = np.asarray(model.stem_norm.mean[...]).copy()
    np.testing.assert_allclose(model(x)[0], model(other)[0], rtol=1e-6)
    np.testing.assert_array_equal(model.stem_norm.mean[...], before)
    assert not np.allclose(model(x, train=True)[0], model(other, train=True)[0], atol=1e-4)
    assert not np.allclose(model.stem_norm.mean[...], before)


def test_the_loop_carries_batch_statistics(tmp_path):
    """One step on 8 copies of one image (so the batch is known whatever the shuffle) with a learning
    rate too small to move the kernel: the stem's running mean must be momentum 0.9 applied to
    the batch mean of the stem convolution, recomputed here from the loaded kernel."""
    image = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 1), dtype=np.uint8)
    data = {"image": np.repeat(image, 8, axis=0), "label": np.full(8, 3, np.int32)}
    zoo.train(
        "cnn", variant="resnet", workdir=tmp_path, steps=1, batch_size=8, train_data=data, eval_data=data,
        settings={"train.learning_rate": "1e-12"}, progress=False,
    )  # fmt: skip
    model = zoo.load(tmp_path).model
    x = jnp.asarray(image, jnp.float32) / 255.0
    kernel = np.asarray(model.stem.kernel[...])
    conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = 0.1 * np.asarray(conv).mean(axis=(0, 1, 2))  # 0.9 * 0 (initial) + 0.1 * batch mean
    np.testing.assert_allclose(model.stem_norm.mean[...], expected, rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training():
    model = zoo.build("cnn", "lenet")
    x = jnp.asarray(np.random.default_rng(0).random((2, 28, 28, 1)), jnp.float32)
    a = model(x, train=True, key=jax.random.key(0))
    b = model(x, train=True, key=jax.random.key(1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(x), model(x))


@pytest.mark.parametrize(
    "overrides,needle",
    [({"channels": ()}, "channels must be"), ({"dropout": 1.0}, "dropout must be"), ({"image_shape": (2, 2, 1)}, "too small")],
)
def test_config_is_checked(overrides, needle):
    with pytest.raises(zoo.UsageError, match=needle):
        zoo.build("cnn", "resnet", **overrides)


@pytest.mark.mnist
@pytest.mark.slow
def test_learns_mnist(tmp_path):
    """150 steps of the residual CNN on real MNIST: test accuracy on 1000 images from ~10% to above 90%."""
    test = zoo.data.load("mnist", "test")
    subset = {k: v[:1000] for k, v in test.items()}
    zoo.train("cnn", variant="resnet", workdir=tmp_path, steps=150, batch_size=64, progress=False)
    metrics = classify.evaluate(zoo.load(tmp_path).model, subset, robust_examples=0)
    assert metrics["accuracy"] > 0.9
