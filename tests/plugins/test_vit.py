"""The ViT plugin: patches, attention against a hand-written reference, logical axes, learning."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo import classify, sharding
from zoo_vit import model as vit_model


def test_shapes_and_the_head_reads_the_class_token():
    model = zoo.build("vit", "tiny")
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, 16)
    np.testing.assert_allclose(model(x), model.head(model.features(x)), rtol=1e-6)


def test_patches_are_the_image_tiles_in_row_major_order():
    model = zoo.build("vit", "tiny", image_shape=(28, 14, 2))
    x = np.arange(2 * 28 * 14 * 2, dtype=np.float32).reshape(2, 28, 14, 2)
    patches = np.asarray(model.patches(jnp.asarray(x)))
    p = 7
    assert patches.shape == (2, 4 * 2, p * p * 2)
    for i in range(4):
        for j in range(2):
            np.testing.assert_array_equal(patches[:, i * 2 + j], x[:, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(2, -1))


def test_attention_matches_a_hand_written_softmax_attention():
    """The jax.nn.dot_product_attention path against numpy: softmax(q k^T / sqrt(d)) v per head."""
    attention = zoo.build("vit", "tiny").blocks[0].attention
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 16)))

    def project(layer, x):  # (B, T, D) @ (D, H, K) + (H, K)
        return np.einsum("btd,dhk->bthk", x, np.asarray(layer.kernel[...])) + np.asarray(layer.bias[...])

    q, k, v = (project(layer, x) for layer in (attention.query, attention.key, attention.value))
    scores = np.einsum("bqhk,bthk->bhqt", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhqt,bthk->bqhk", weights, v)
    expected = np.einsum("bqhk,hkd->bqd", heads, np.asarray(attention.out.kernel[...])) + np.asarray(attention.out.bias[...])
    np.testing.assert_allclose(attention(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)


def test_heads_and_mlp_are_split_over_the_tensor_axis():
    """Under a data=4, tensor=2 mesh: whole heads per shard, the MLP column- then row-split."""
    model = zoo.build("vit", "tiny")
    mesh = sharding.make_mesh({"data": 4, "tensor": 2})
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: vit_model.build(model.config, nnx.Rngs(0)))
    specs = sharding.state_shardings(nnx.state(abstract), mesh)
    block = specs["blocks"][0]
    for name in ("query", "key", "value"):
        assert block["attention"][name]["kernel"].spec == jax.sharding.PartitionSpec(None, "tensor", None)
    assert block["attention"]["out"]["kernel"].spec == jax.sharding.PartitionSpec("tensor", None, None)
    assert block["mlp"]["up"]["kernel"].spec == jax.sharding.PartitionSpec(None, "tensor")
    assert block["mlp"]["down"]["kernel"].spec == jax.sharding.PartitionSpec("tensor", None)
    assert set(specs["positions"].spec) <= {None}  # embed maps to fsdp, absent here: replicated


def test_tensor_parallel_forward_equals_the_single_device_one():
    model = zoo.build("vit", "tiny", seed=3)
    x = jax.random.uniform(jax.random.key(2), (8, 28, 28, 1))
    expected = np.asarray(model(x))
    mesh = sharding.make_mesh({"data": 4, "tensor": 2})
    graphdef, state = nnx.split(model)
    shardings = sharding.state_shardings(state, mesh)
    placed = jax.device_put(nnx.to_pure_dict(state), shardings)

    @jax.jit
    def forward(variables, x):
        return nnx.merge(graphdef, variables)(x)

    with jax.set_mesh(mesh):
        got = forward(placed, jax.device_put(x, sharding.batch_sharding(mesh)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_learns_a_separable_toy_task(tmp_path):
    """A horizontal bar vs a vertical bar, in noise: 40 steps take accuracy from chance to near 1."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256).astype(np.int32)
    images = rng.integers(0, 60, (256, 28, 28, 1)).astype(np.uint8)
    images[labels == 0, 12:16, :] += 150
    images[labels == 1, :, 12:16] += 150
    data = {"image": images, "label": labels}
    untrained = classify.evaluate(zoo.build("vit", "tiny"), data, robust_examples=0)["accuracy"]
    zoo.train("vit", variant="tiny", steps=40, batch_size=32, learning_rate=3e-3, workdir=tmp_path,
              train_data=data, eval_data=data, progress=False)
    trained = classify.evaluate(zoo.load(tmp_path).model, data, robust_examples=0)["accuracy"]
    assert untrained < 0.7 and trained > 0.95, (untrained, trained)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"patch": 5}, "patch 5 must divide"),
        ({"width": 18, "heads": 4}, "multiple of heads"),
        ({"depth": 0}, "must be positive"),
    ],
)
def test_config_is_checked_before_any_build(overrides, needle):
    with pytest.raises(zoo.UsageError, match=re.escape(needle)):
        zoo.build("vit", "tiny", **overrides)
