"""The DCGAN plugin: shapes, and a training step that updates exactly the intended parameters per group."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

import zoo
from zoo import sharding, training
from zoo_gan import model as gan_model
from zoo_gan import train as gan_train

TINY = {"latent_dim": 8, "generator_channels": (8, 4), "discriminator_channels": (4, 8)}


def build_tiny():
    with nnx.use_eager_sharding(False):  # unsharded: no mesh needed outside the loop
        return gan_model.build(gan_model.GANConfig(**TINY), nnx.Rngs(0))


def test_shapes_and_ranges():
    model = build_tiny()
    images = model.generate(jax.random.key(0), 5)
    assert images.shape == (5, 28, 28, 1)
    assert -1.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert model.discriminator(images).shape == (5,)
    samples = gan_model.sample(model, jax.random.key(0), 3)
    assert samples.shape == (3, 28, 28, 1) and samples.min() >= 0.0 and samples.max() <= 1.0


def test_sampling_uses_running_averages_so_each_image_ignores_its_batch():
    """In inference BatchNorm must not mix images: the first image is the same alone or among others."""
    model = build_tiny()
    z = jax.random.normal(jax.random.key(1), (6, TINY["latent_dim"]))
    np.testing.assert_allclose(model.generator(z[:1]), model.generator(z)[:1], atol=1e-6)


def _flat(variables) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v) for p, v in traverse_util.flatten_dict(variables).items()}


def _param_paths(module: nnx.Module, prefix: str) -> set[str]:
    """Independent reference: the Param paths of one sub-module, read from nnx directly."""
    return {f"{prefix}/" + "/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _step(objective: training.Groups):
    """The loop's own pure step for ``objective`` on the tiny DCGAN, its initial state and a batch."""
    cfg = training.TrainConfig(batch_size=8, optimizer="adam", learning_rate=1e-2, b1=0.5)
    model_def = training.ModelDef.create(build_tiny, sharding.make_mesh(), [g.params for g in objective.groups])
    ctx = training.StepContext(model_def, tuple(training.make_optimizer(cfg, g.learning_rate) for g in objective.groups), cfg)
    state = ctx.init_state(model_def.init(build_tiny))
    step = jax.jit(training.make_train_step(ctx, objective))
    batch = {k: jnp.asarray(v) for k, v in zoo.data.synthetic("mnist", 8, seed=0).items()}
    return model_def, state, lambda s: step(s, batch, jax.random.key(0))


def _changed(model_def, before, after) -> set[str]:
    a = _flat(model_def.combine(before.params, before.rest))
    b = _flat(model_def.combine(after.params, after.rest))
    return {p for p in a if not np.array_equal(a[p], b[p])}


def test_the_two_groups_are_exactly_the_discriminator_and_generator_parameters():
    model = build_tiny()
    model_def, _, _ = _step(gan_train.OBJECTIVE)
    disc, gen = ({"/".join(map(str, p)) for p in group} for group in model_def.groups)
    assert disc == _param_paths(model.discriminator, "discriminator")
    assert gen == _param_paths(model.generator, "generator")
    assert [g.name for g in gan_train.OBJECTIVE.groups] == ["disc", "gen"]


@pytest.mark.parametrize("group", [0, 1])
def test_each_group_alone_changes_only_its_own_parameters(group):
    """One group's step: all its parameters move, none of the other network's; BatchNorm statistics follow G."""
    model = build_tiny()
    own, other = [("discriminator", model.discriminator), ("generator", model.generator)][:: 1 if group == 0 else -1]
    model_def, state, step = _step(training.Groups((gan_train.OBJECTIVE.groups[group],)))
    after, metrics = step(jax.tree.map(jnp.copy, state))
    changed = _changed(model_def, state, after)
    assert np.isfinite(float(metrics["loss"]))
    assert _param_paths(own[1], own[0]) <= changed
    assert not changed & _param_paths(other[1], other[0])
    # the generator ran in training mode in both losses: its running averages moved, nothing else did
    stats = {p for p in changed if "/mean" in p or "/var" in p}
    assert stats and all(p.startswith("generator/") for p in stats)
    assert changed == _param_paths(own[1], own[0]) | stats


def test_alternating_steps_update_the_discriminator_then_the_generator():
    model = build_tiny()
    disc, gen = _param_paths(model.discriminator, "discriminator"), _param_paths(model.generator, "generator")
    model_def, state, step = _step(training.Groups(gan_train.OBJECTIVE.groups, alternate=True))
    first, _ = step(jax.tree.map(jnp.copy, state))
    second, _ = step(jax.tree.map(jnp.copy, first))
    assert _changed(model_def, state, first) & (disc | gen) == disc
    assert _changed(model_def, first, second) & (disc | gen) == gen


def test_the_full_step_updates_the_discriminator_first_then_the_generator():
    """Both groups move each step; the discriminator's update is the one it makes alone (it goes first)."""
    model = build_tiny()
    disc, gen = _param_paths(model.discriminator, "discriminator"), _param_paths(model.generator, "generator")
    model_def, state, step = _step(gan_train.OBJECTIVE)
    both, metrics = step(jax.tree.map(jnp.copy, state))
    assert disc | gen <= _changed(model_def, state, both)
    assert {"disc/loss", "gen/loss", "disc/p_real", "disc/p_fake", "loss"} <= set(metrics)

    alone_def, alone_state, alone_step = _step(training.Groups((gan_train.OBJECTIVE.groups[0],)))
    alone, _ = alone_step(alone_state)
    full, only_disc = _flat(model_def.combine(both.params, {})), _flat(alone_def.combine(alone.params, {}))
    for path in disc:
        np.testing.assert_allclose(full[path], only_disc[path], rtol=1e-6, err_msg=path)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"image_shape": (30, 30, 1)}, "divisible by 4"),
        ({"generator_channels": (8,)}, "generator_channels must be tuple[int, int]"),  # the field's type
        ({"generator_channels": (8, 0)}, "two positive widths"),  # the plugin's own check
        ({"latent_dim": 0}, "latent_dim and kernel must be positive"),
    ],
)
def test_config_is_checked_before_any_build(overrides, needle):
    with pytest.raises(zoo.UsageError, match=re.escape(needle)):
        zoo.build("gan", "tiny", **overrides)
