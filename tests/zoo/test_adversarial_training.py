"""Adversarial training in the shared loop changes what the loss is fed, and nothing else.

The pure training step of the residual CNN (BatchNorm: the attack's forward passes
must not leak into the running statistics) runs on a batch that also carries an
untouched copy of the pixels under "clean"; the loss reports how far the pixels it
sees are from that copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo import classify, sharding, training
from zoo.attacks import Attack
from zoo.config import make_config
from zoo.training import Loss, TrainConfig


def seeing_loss(model, batch, key):
    """The classifier loss, plus what the pixels it is fed look like against the clean copy."""
    loss, metrics = classify.cross_entropy(model, batch, key)
    pixels, clean = batch["image"].astype(jnp.float32), batch["clean"].astype(jnp.float32)
    return loss, metrics | {"moved": jnp.max(jnp.abs(pixels - clean)), "low": pixels.min(), "high": pixels.max()}


def one_step(**adversarial):
    """One jitted step of cnn/resnet from a fixed initial state -> (new state, metrics)."""
    cfg = TrainConfig(batch_size=8, learning_rate=1e-2, **adversarial)
    plugin = zoo.registry.get_plugin("cnn")
    config = make_config(plugin, "resnet")
    build = lambda: plugin.resolve("build")(config, nnx.Rngs(0))  # noqa: E731
    model_def = training.ModelDef.create(build, sharding.make_mesh(), [nnx.Param])
    tx = training.make_optimizer(cfg)
    ctx = training.StepContext(model_def, (tx,), cfg)
    state = ctx.init_state(model_def.init(build))
    step = jax.jit(training.make_train_step(ctx, Loss(seeing_loss, inputs=classify.PIXELS)))
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    batch = {"image": images, "label": np.arange(8, dtype=np.int32), "clean": images.copy()}
    return step(state, batch, jax.random.key(0))


def flat(tree):
    return {"/".join(map(str, k)): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_zero_eps_is_the_clean_step():
    """With eps 0 the attack cannot move a pixel: parameters, optimizer state, BatchNorm statistics
    and every metric must match the clean step, although the attack ran 3 forward passes in training mode."""
    clean_state, clean_metrics = one_step()
    adv_state, adv_metrics = one_step(adversarial="pgd", adversarial_eps=0.0, adversarial_steps=3)
    for a, b in ((clean_state.params, adv_state.params), (clean_state.rest, adv_state.rest), (clean_state.opt, adv_state.opt)):
        fa, fb = flat(a), flat(b)
        assert fa.keys() == fb.keys()
        for k in fa:
            np.testing.assert_allclose(fa[k], fb[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for k in clean_metrics:
        np.testing.assert_allclose(clean_metrics[k], adv_metrics[k], rtol=1e-6, err_msg=k)
    assert float(adv_metrics["moved"]) == 0.0


@pytest.mark.parametrize("kind", ["fgsm", "pgd"])
def test_the_loss_sees_attacked_pixels_inside_the_ball(kind):
    _, clean = one_step()
    _, attacked = one_step(adversarial=kind, adversarial_eps=0.1, adversarial_steps=3)
    assert 0.0 < float(attacked["moved"]) <= 25.5 + 1e-3  # eps 0.1 of the 0..255 range; the clean copy untouched
    assert float(attacked["low"]) >= 0.0 and float(attacked["high"]) <= 255.0
    assert float(attacked["loss"]) > float(clean["loss"])


def test_a_loss_without_declared_inputs_is_refused():
    cfg = TrainConfig(batch_size=8, adversarial="pgd")
    plugin = zoo.registry.get_plugin("cnn")
    config = make_config(plugin, "resnet")
    build = lambda: plugin.resolve("build")(config, nnx.Rngs(0))  # noqa: E731
    model_def = training.ModelDef.create(build, sharding.make_mesh(), [nnx.Param])
    ctx = training.StepContext(model_def, (training.make_optimizer(cfg),), cfg)
    with pytest.raises(zoo.UsageError, match="declaring its attackable inputs"):
        training.make_train_step(ctx, Loss(seeing_loss))


def test_config_fills_in_the_attack_and_checks_it():
    assert TrainConfig().adversarial_attack is None
    assert TrainConfig(adversarial="pgd").adversarial_attack == Attack("pgd", 0.1, 7)
    assert TrainConfig(adversarial="fgsm", adversarial_eps=0.3).adversarial_attack == Attack("fgsm", 0.3, 7)
    with pytest.raises(zoo.UsageError, match="eps is a fraction"):
        TrainConfig(adversarial="pgd", adversarial_eps=2.0)
