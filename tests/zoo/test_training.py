"""zoo.training: objectives, options, safety and observability of the shared loop.

Most tests drive a tiny deterministic two-part model (``Toy``: ``a`` then ``b``)
through ``training.Run(...).fit`` with a ``zoo.Plugin`` built from callables, and
check the loop against an eager single-device reference computed here with
optax. The VAE is used where the plugin matters (EMA through ``zoo.load``,
bf16, evaluation and checkpoint ranking). Everything runs on the 8 CPU devices
the conftest sets up (the default mesh is ``data=8``).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import zoo
import zoo.data
from zoo import checkpoint, registry, sharding, training
from zoo.checkpoint import CheckpointError, StepDirectory
from zoo.config import make_config
from zoo.data.loader import ArrayLoader
from zoo.errors import UsageError, ZooError
from zoo.training import CustomStep, Group, Groups, Loss, NonFiniteLoss, TrainConfig
from zoo.training.config import random_stream

# =========================================================================== a toy plugin


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    features: int = 4


class Toy(nnx.Module):
    """x (B, 4) -> a: Linear(4, 4), tanh -> b: Linear(4, 1)."""

    def __init__(self, cfg: ToyConfig, rngs: nnx.Rngs):
        self.a = nnx.Linear(cfg.features, cfg.features, rngs=rngs)
        self.b = nnx.Linear(cfg.features, 1, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def build_toy(cfg: ToyConfig, rngs: nnx.Rngs) -> Toy:
    return Toy(cfg, rngs)


def mse(model, batch, key):
    """Deterministic (ignores ``key``), so every way of computing a step must agree."""
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


def mse_plus_decay(model, batch, key):
    """A second loss for group ``b``: also depends on ``a``, so update order matters."""
    return mse(model, batch, key) + 0.05 * jnp.sum(model.b.kernel[...] ** 2), {"decay": jnp.sum(model.b.kernel[...] ** 2)}


TOY = zoo.Plugin(
    name="toy",
    api=1,
    summary="two linear layers",
    config=ToyConfig,
    variants={"base": {}},
    build=build_toy,
    train=lambda run: run.fit(Loss(mse)),
    sample=lambda model, key, n: np.zeros((n, 1)),
)


def toy_data(n: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (np.sin(x).sum(axis=1, keepdims=True) + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    return {"x": x, "y": y}


SGD = {"optimizer": "sgd", "b1": 0.0, "learning_rate": 0.1}


def toy_run(workdir: Path, data=None, plugin=TOY, **train) -> training.Run:
    train = {"steps": 6, "batch_size": 16, "seed": 0, **train}
    return training.Run(
        plugin=plugin, variant="base", config=ToyConfig(), train=TrainConfig(**train), dataset="toy",
        workdir=workdir, train_data=data if data is not None else toy_data(), progress=False,
    )


# =========================================================================== reading runs back


def restore_item(workdir: Path, item: str = "model", step: int | None = None) -> dict[str, np.ndarray]:
    """A checkpoint item of ``workdir`` (newest step by default) as ``{"a/kernel": np.ndarray}``."""
    store = StepDirectory(Path(workdir) / "checkpoints")
    step = store.latest() if step is None else step
    replicated = sharding.replicated(sharding.make_mesh())
    stored = checkpoint.stored_tree(store.path(step), item)
    target: dict = {}
    for path, meta in stored.items():
        node = target
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=replicated)
    restored = checkpoint.restore(store.path(step), {item: target})[item]
    return {p: np.asarray(v) for p, v in checkpoint.tree_paths(restored).items()}


def metrics_lines(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def init_params(seed: int = 0) -> dict[str, dict]:
    """The toy's initial parameters as the loop creates them (same build, the seed's ``init`` stream)."""
    model = build_toy(ToyConfig(), nnx.Rngs(random_stream(seed, "init")))
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def flat(params: dict) -> dict[str, np.ndarray]:
    return {p: np.asarray(v) for p, v in checkpoint.tree_paths(params).items()}


def reference_sgd(data, steps: int, schedule: list[tuple[str, ...]], losses: dict, lr: float = 0.1, batch_size: int = 16):
    """Eager, one device: step ``s`` updates the groups ``schedule[s]`` in order, each seeing the newest parameters."""
    graphdef, _ = nnx.split(build_toy(ToyConfig(), nnx.Rngs(0)))
    params = jax.tree.map(jnp.asarray, init_params())
    loader = ArrayLoader(data, batch_size, seed=0)
    for s in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(loader).items()}
        for g in schedule[s]:
            def loss_of(p_g, g=g):
                out = losses[g](nnx.merge(graphdef, {**params, g: p_g}), batch, None)
                return out[0] if isinstance(out, tuple) else out

            grads = jax.grad(loss_of)(params[g])
            params = {**params, g: jax.tree.map(lambda p, d: p - lr * d, params[g], grads)}
    return flat(params)


def assert_params_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol=1e-5, atol=1e-6):
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_allclose(got[path], want[path], rtol=rtol, atol=atol, err_msg=path)


# =========================================================================== optimizer and schedules


def lr_sequence(cfg: TrainConfig, steps: int) -> np.ndarray:
    """The learning rate at each step, read off SGD (no momentum) updates of a gradient of 1."""
    tx = training.make_optimizer(cfg)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    rates = []
    for _ in range(steps):
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        rates.append(-float(updates["w"]))
    return np.asarray(rates)


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(steps=100, schedule="cosine", warmup_steps=10, learning_rate=0.5, final_lr_fraction=0.1, optimizer="sgd", b1=0.0)
    lr = lr_sequence(cfg, 101)
    np.testing.assert_allclose(lr[[0, 5, 10]], [0.0, 0.25, 0.5], rtol=1e-6, atol=1e-7)  # linear warmup from 0
    # cosine from the peak to peak * final_lr_fraction over the remaining 90 steps
    expected = 0.05 + 0.45 * 0.5 * (1 + np.cos(np.pi * (np.arange(10, 101) - 10) / 90))
    np.testing.assert_allclose(lr[10:], expected, rtol=1e-5)
    assert lr[100] == pytest.approx(0.05, rel=1e-6)
    assert np.all(np.diff(lr[:11]) > 0) and np.all(np.diff(lr[10:]) <= 1e-7)


def test_warmup_then_constant_and_plain_constant():
    warm = lr_sequence(TrainConfig(warmup_steps=4, learning_rate=0.2, optimizer="sgd", b1=0.0), 8)
    np.testing.assert_allclose(warm, [0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lr_sequence(TrainConfig(learning_rate=0.2, optimizer="sgd", b1=0.0), 3), [0.2] * 3, rtol=1e-6)


def test_group_learning_rate_overrides_the_peak():
    tx = training.make_optimizer(TrainConfig(learning_rate=0.2, optimizer="sgd", b1=0.0), learning_rate=0.03)
    updates, _ = tx.update({"w": jnp.ones(())}, tx.init({"w": jnp.zeros(())}), {"w": jnp.zeros(())})
    assert float(updates["w"]) == pytest.approx(-0.03)


def test_grad_clip_bounds_the_global_norm():
    tx = training.make_optimizer(TrainConfig(grad_clip=1.0, learning_rate=1.0, optimizer="sgd", b1=0.0))
    params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    big, _ = tx.update({"a": jnp.array([3.0, 0.0]), "b": jnp.array(4.0)}, tx.init(params), params)
    np.testing.assert_allclose([*np.asarray(big["a"]), float(big["b"])], [-0.6, 0.0, -0.8], rtol=1e-6)
    small, _ = tx.update({"a": jnp.array([0.3, 0.0]), "b": jnp.array(0.4)}, tx.init(params), params)
    np.testing.assert_allclose([*np.asarray(small["a"]), float(small["b"])], [-0.3, 0.0, -0.4], rtol=1e-6)


def test_grad_clip_in_the_loop(tmp_path):
    """With SGD at lr 1 and grad_clip c, one step moves the parameters by exactly c (the gradient is larger)."""
    clip = 1e-3
    data = toy_data()
    first = {k: jnp.asarray(v) for k, v in next(ArrayLoader(data, 16, seed=0)).items()}
    graphdef, _ = nnx.split(build_toy(ToyConfig(), nnx.Rngs(0)))
    grads = jax.grad(lambda p: mse(nnx.merge(graphdef, p), first, None))(jax.tree.map(jnp.asarray, init_params()))
    assert float(optax.tree.norm(grads)) > 100 * clip  # so the clip is what limits the step

    toy_run(tmp_path, data, steps=1, optimizer="sgd", b1=0.0, learning_rate=1.0, grad_clip=clip).fit(Loss(mse))
    after, before = restore_item(tmp_path), flat(init_params())
    moved = math.sqrt(sum(float(np.sum((after[p] - before[p]) ** 2)) for p in before))
    assert moved == pytest.approx(clip, rel=1e-3)


# =========================================================================== Loss, grad_accum, CustomStep


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The toy, Loss(mse), SGD, batch 64, 5 steps: the reference for grad_accum and CustomStep."""
    workdir = tmp_path_factory.mktemp("plain")
    result = toy_run(workdir, steps=5, batch_size=64, **SGD).fit(Loss(mse))
    return workdir, result


def test_loss_objective_matches_an_eager_single_device_reference(plain_run):
    workdir, result = plain_run
    assert_params_close(restore_item(workdir), _reference_one_group(toy_data(), 5, batch_size=64))
    assert result.step == 5 and math.isfinite(result.loss)


def _reference_one_group(data, steps, batch_size):
    graphdef, _ = nnx.split(build_toy(ToyConfig(), nnx.Rngs(0)))
    params = jax.tree.map(jnp.asarray, init_params())
    loader = ArrayLoader(data, batch_size, seed=0)
    for _ in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(loader).items()}
        grads = jax.grad(lambda p: mse(nnx.merge(graphdef, p), batch, None))(params)
        params = jax.tree.map(lambda p, d: p - 0.1 * d, params, grads)
    return flat(params)


def test_grad_accum_matches_one_big_batch(plain_run, tmp_path):
    workdir, result = plain_run
    accumulated = toy_run(tmp_path, steps=5, batch_size=64, grad_accum=4, **SGD).fit(Loss(mse))
    assert accumulated.loss == pytest.approx(result.loss, rel=1e-5)
    assert_params_close(restore_item(tmp_path), restore_item(workdir), rtol=1e-5)
    # the per-step losses logged agree too
    np.testing.assert_allclose(
        [m["loss"] for m in metrics_lines(tmp_path)], [m["loss"] for m in metrics_lines(workdir)], rtol=1e-5
    )


def test_grad_accum_micro_batch_must_divide_the_mesh(tmp_path):
    with pytest.raises(UsageError, match=r"micro-batch size 4 does not divide over the mesh's data x fsdp = 8 shards"):
        toy_run(tmp_path, batch_size=16, grad_accum=4).fit(Loss(mse))
    with pytest.raises(UsageError, match="batch_size 20 is not a multiple of grad_accum 8"):
        TrainConfig(batch_size=20, grad_accum=8)


def test_custom_step_runs_under_the_loop(plain_run, tmp_path):
    """A plain-SGD CustomStep through ``ctx.model``/``ctx.apply_gradients`` equals Loss(mse), and its metrics are logged."""
    calls = []

    def step(ctx, state, batch, key):
        calls.append(1)  # traced once: the loop jits the step
        assert isinstance(ctx, training.StepContext)

        def loss_of(p):
            return mse(ctx.model(state, [p]), batch, key)

        loss, grads = jax.value_and_grad(loss_of)(state.params[0])
        return ctx.apply_gradients(state, 0, grads), {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    workdir, result = plain_run
    custom = toy_run(tmp_path, steps=5, batch_size=64, log_every=1, **SGD).fit(CustomStep(step))
    assert_params_close(restore_item(tmp_path), restore_item(workdir), rtol=1e-6)
    assert custom.loss == pytest.approx(result.loss, rel=1e-6)
    lines = metrics_lines(tmp_path)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    assert all(m["grad_norm"] > 0 for m in lines)
    assert len(calls) == 1


# =========================================================================== Groups


TWO_GROUPS = (Group("a", mse, nnx.PathContains("a")), Group("b", mse_plus_decay, nnx.PathContains("b")))


def test_groups_update_in_order_each_seeing_the_newest_parameters(tmp_path):
    steps = 4
    toy_run(tmp_path, steps=steps, log_every=1, **SGD).fit(Groups(TWO_GROUPS))
    want = reference_sgd(toy_data(), steps, [("a", "b")] * steps, {"a": mse, "b": mse_plus_decay})
    assert_params_close(restore_item(tmp_path), want)
    lines = metrics_lines(tmp_path)
    assert {"a/loss", "b/loss", "b/decay", "loss"} <= set(lines[0])
    for m in lines:  # the total is the sum of the groups' losses
        assert m["loss"] == pytest.approx(m["a/loss"] + m["b/loss"], rel=1e-5)


def test_alternating_groups_change_one_group_per_step(tmp_path):
    steps = 4
    toy_run(tmp_path, steps=steps, checkpoint_every=1, keep=10, log_every=1, **SGD).fit(Groups(TWO_GROUPS, alternate=True))
    want = reference_sgd(toy_data(), steps, [("a",), ("b",)] * 2, {"a": mse, "b": mse_plus_decay})
    assert_params_close(restore_item(tmp_path), want)

    history = [flat(init_params())] + [restore_item(tmp_path, step=s) for s in range(1, steps + 1)]
    for s in range(steps):
        changed = {p.split("/")[0] for p in history[s] if not np.array_equal(history[s][p], history[s + 1][p])}
        assert changed == {"ab"[s % 2]}, f"step {s} changed {changed}"

    lines = metrics_lines(tmp_path)
    for s, m in enumerate(lines):  # only the updated group reports its loss; the other is NaN
        ran, idle = ("a", "b") if s % 2 == 0 else ("b", "a")
        assert math.isfinite(m[f"{ran}/loss"]) and math.isnan(m[f"{idle}/loss"])
        assert m["loss"] == pytest.approx(m[f"{ran}/loss"])


def test_groups_whose_filters_select_nothing_are_refused(tmp_path):
    with pytest.raises(ZooError, match="select no parameters"):
        toy_run(tmp_path).fit(Groups((Group("x", mse, nnx.PathContains("nope")),)))


# =========================================================================== non-finite loss


def poisoned_data(bad_step: int, batch_size: int = 16, value: float = np.nan) -> dict[str, np.ndarray]:
    """Toy data whose first batch containing ``value`` (NaN) is step ``bad_step`` (0-based) of the loop."""
    data = toy_data()
    order = ArrayLoader({"i": np.arange(len(data["x"]))}, batch_size, seed=0)
    batches = [next(order)["i"] for _ in range(bad_step + 1)]
    earlier = set(np.concatenate(batches[:bad_step]).tolist())
    victim = next(i for i in batches[bad_step] if i not in earlier)
    data["x"][victim, 0] = value
    return data


@pytest.mark.parametrize("log_every,steps_per_call", [(1, 1), (100, 1), (1, 2)])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, log_every, steps_per_call):
    run = toy_run(tmp_path, poisoned_data(5), steps=12, checkpoint_every=2, log_every=log_every, steps_per_call=steps_per_call)
    with pytest.raises(NonFiniteLoss) as error:
        run.fit(Loss(mse))
    message = str(error.value)
    assert "non-finite at step 5" in message
    assert f"step 4 in {tmp_path / 'checkpoints' / '4'}" in message
    store = StepDirectory(tmp_path / "checkpoints")
    assert store.steps() == [2, 4]  # nothing at or after the bad step
    assert sorted(p.name for p in store.root.iterdir()) == ["2", "4"]
    assert all(np.all(np.isfinite(v)) for v in restore_item(tmp_path).values())
    assert checkpoint.read_meta(store.path(4))["step"] == 4


def test_a_nonfinite_step_records_the_first_bad_step():
    """The pure step itself: a NaN loss is recorded and the first stays; a NaN gradient under a finite
    loss is not (the loop finds it in the weights: test_nonfinite_weights_under_a_finite_loss_stop_the_run)."""
    cfg = TrainConfig(batch_size=16, **SGD)
    model_def = training.ModelDef.create(lambda: build_toy(ToyConfig(), nnx.Rngs(0)), sharding.make_mesh(), [nnx.Param])
    tx = training.make_optimizer(cfg)
    ctx = training.StepContext(model_def, (tx,), cfg)
    (params,), rest = model_def.partition(model_def.init(lambda: build_toy(ToyConfig(), nnx.Rngs(0))))
    state = training.TrainState(
        step=jnp.int32(0), params=(params,), rest=rest, opt=(tx.init(params),), ema=None, nonfinite_step=jnp.int32(-1)
    )
    step = functools.partial(jax.jit(training.make_train_step(ctx, Loss(mse))), key=jax.random.key(cfg.seed))
    good = {k: jnp.asarray(v[:16]) for k, v in toy_data().items()}
    bad = {**good, "x": good["x"].at[3, 1].set(jnp.nan)}
    # inf saturates tanh: the loss stays finite but the gradient (inf * 0) is NaN
    bad_gradient = {**good, "x": good["x"].at[3, 1].set(jnp.inf)}

    after_good, _ = step(jax.tree.map(jnp.copy, state), good)
    assert (int(after_good.step), int(after_good.nonfinite_step)) == (1, -1)
    assert all(np.all(np.isfinite(v)) for v in flat(after_good.params[0]).values())

    after_bad, metrics = step(after_good, bad)
    assert not np.isfinite(float(metrics["loss"]))
    assert (int(after_bad.step), int(after_bad.nonfinite_step)) == (2, 1)
    after_more, _ = step(after_bad, good)
    assert (int(after_more.step), int(after_more.nonfinite_step)) == (3, 1)  # still the first bad step

    after_inf, metrics = step(jax.tree.map(jnp.copy, state), bad_gradient)
    assert np.isfinite(float(metrics["loss"]))
    assert (int(after_inf.step), int(after_inf.nonfinite_step)) == (1, -1)
    assert not all(np.all(np.isfinite(v)) for v in flat(after_inf.params[0]).values())


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_nonfinite_weights_under_a_finite_loss_stop_the_run(tmp_path, steps_per_call):
    """An inf input at step 5 saturates tanh: a finite loss, a NaN gradient, NaN weights from step 6 on.

    The save at step 6 finds them and refuses; nothing non-finite is ever checkpointed.
    """
    data = poisoned_data(5, value=np.inf)
    run = toy_run(tmp_path, data, steps=12, checkpoint_every=2, log_every=100, steps_per_call=steps_per_call)
    with pytest.raises(NonFiniteLoss, match=r"weights became non-finite between steps 4 and 6 \(the loss stayed finite\)"):
        run.fit(Loss(mse))
    assert StepDirectory(tmp_path / "checkpoints").steps() == [2, 4]
    assert all(np.all(np.isfinite(v)) for v in restore_item(tmp_path).values())


def test_nonfinite_loss_before_any_checkpoint_says_none_was_saved(tmp_path):
    with pytest.raises(NonFiniteLoss, match="non-finite at step 1; stopped. Last good checkpoint: none was saved"):
        toy_run(tmp_path, poisoned_data(1), steps=6, checkpoint_every=3).fit(Loss(mse))
    assert StepDirectory(tmp_path / "checkpoints").steps() == []


# =========================================================================== dispatch ahead


class _CountingLoader(ArrayLoader):
    """Records, at each batch drawn, how many of the loop's calls are dispatched but not finished."""

    def __init__(self, *args, outputs: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.outputs, self.unfinished = outputs, []

    def __next__(self):
        self.unfinished.append(sum(not sums.count["loss"].is_ready() for sums in self.outputs))
        return super().__next__()


@pytest.mark.parametrize(("mesh", "most"), [({"data": 1}, 2), ({}, 0)])
def test_the_loop_dispatches_at_most_two_calls_ahead(tmp_path, monkeypatch, mesh, most):
    """Asynchronous dispatch is bounded: a slow step must not let Python queue dozens of calls.

    Unbounded, the char GPT's loop ran dozens of calls ahead, and a Ctrl-C waited for them
    all. Several host devices (the conftest's 8) run one call at a time: XLA:CPU
    deadlocks when calls with collectives overlap.
    """
    outputs: list = []
    compile_step = training.Loop._compile

    def recording_compile(self, objective):
        step_fn = compile_step(self, objective)

        def call(*args):
            state, sums = step_fn(*args)
            outputs.append(sums)
            return state, sums

        return call

    def slow_mse(model, batch, key):
        # Some milliseconds of work that the metrics keep (no host callback: one makes a call synchronous).
        burn = jax.lax.fori_loop(0, 20, lambda i, y: jnp.tanh(y @ y), jnp.full((256, 256), 0.01) * batch["x"][0, 0])
        return mse(model, batch, key), {"burn": jnp.sum(burn)}

    monkeypatch.setattr(training.Loop, "_compile", recording_compile)
    run = dataclasses.replace(toy_run(tmp_path, steps=20), mesh_shape=mesh)
    loader = _CountingLoader(run.train_data, 16, 0, outputs=outputs)
    run.fit(Loss(slow_mse), loader=loader)
    assert len(loader.unfinished) == 20
    assert max(loader.unfinished) == most


# =========================================================================== failed saves


class _NoSpace:
    def save(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        pass


def test_a_failed_orbax_save_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_checkpointer", lambda *args, **kwargs: _NoSpace())
    with pytest.raises(CheckpointError) as error:
        toy_run(tmp_path, steps=4, checkpoint_every=2).fit(Loss(mse))
    assert isinstance(error.value, ZooError)
    assert "saving checkpoint" in str(error.value) and "No space left on device" in str(error.value)
    assert str(tmp_path / "checkpoints" / "2") in str(error.value)
    assert StepDirectory(tmp_path / "checkpoints").steps() == []


def test_a_failed_manifest_write_is_a_checkpoint_error_and_leaves_no_step(tmp_path, monkeypatch):
    def full_disk(directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_manifest", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device"):
        toy_run(tmp_path, steps=4, checkpoint_every=2).fit(Loss(mse))
    monkeypatch.undo()
    assert StepDirectory(tmp_path / "checkpoints").steps() == []  # the unsealed folder never counts


# =========================================================================== the VAE: EMA, bf16


def vae_data(n: int = 64):
    return zoo.data.synthetic("mnist", n)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ema")
    data = vae_data()
    result = zoo.train(
        "vae", workdir=workdir, train_data=data, eval_data=data, progress=False,
        steps=3, batch_size=16, checkpoint_every=1, keep=5, ema_decay=0.9,
    )
    return workdir, result


def test_ema_is_checkpointed_and_follows_its_recurrence(ema_run):
    workdir, _ = ema_run
    plugin = registry.get_plugin("vae")
    with nnx.use_eager_sharding(False):  # the loop's initial weights: the seed's init stream
        untrained = plugin.resolve("build")(make_config(plugin, "dense-20", {}), nnx.Rngs(random_stream(0, "init")))
    ema = flat(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(untrained, nnx.Param))))
    for step in (1, 2, 3):
        assert (workdir / "checkpoints" / str(step) / "ema").is_dir()
        params, stored_ema = restore_item(workdir, "model", step), restore_item(workdir, "ema", step)
        ema = {p: 0.9 * ema[p] + 0.1 * params[p] for p in params}
        assert_params_close(stored_ema, ema, rtol=1e-5, atol=1e-6)
        assert any(not np.allclose(stored_ema[p], params[p]) for p in params)  # not the raw parameters


def test_zoo_load_uses_the_ema_weights(ema_run):
    workdir, _ = ema_run
    loaded = zoo.load(workdir)
    weights = flat(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(loaded.model))))
    ema, raw = restore_item(workdir, "ema"), restore_item(workdir, "model")
    assert weights.keys() == ema.keys()
    for p in ema:
        np.testing.assert_array_equal(weights[p], ema[p])
    assert any(not np.array_equal(weights[p], raw[p]) for p in raw)


def test_bf16_trains_with_float32_master_weights(ema_run, tmp_path):
    _, fp32 = ema_run  # EMA does not change the trajectory: the same run in fp32
    data = vae_data()
    result = zoo.train(
        "vae", workdir=tmp_path, train_data=data, eval_data=data, progress=False,
        steps=3, batch_size=16, precision="bf16",
    )
    assert math.isfinite(result.loss)
    assert result.loss != fp32.loss  # the forward pass really ran in bf16...
    assert result.loss == pytest.approx(fp32.loss, rel=2e-2)  # ...computing the same thing
    folder = StepDirectory(tmp_path / "checkpoints").path(3)
    model_dtypes = {str(m.dtype) for m in checkpoint.stored_tree(folder, "model").values()}
    assert model_dtypes == {"float32"}
    opt = {p: str(m.dtype) for p, m in checkpoint.stored_tree(folder, "train").items() if p.startswith("opt/")}
    assert opt and all(d in ("float32", "int32") for d in opt.values()), opt


# =========================================================================== observability


def read_events(folder: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the TFRecord event files under ``folder``."""
    from tensorboardX.proto import event_pb2

    found = []
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                found.append((value.tag, event.step, value.simple_value))
    return found


def test_metrics_tensorboard_and_best_checkpoint_retention(tmp_path):
    """metrics.jsonl and TensorBoard get the same numbers; keep=1 keeps the newest and the best."""
    scores = iter([5.0, 1.0, 3.0, 4.0])  # neg_elbo (min is best) at steps 2, 4, 6, 8
    seen = []

    def evaluate(model, data):
        seen.append((type(model).__name__, len(data["image"])))
        return {"neg_elbo": next(scores), "kl": 0.5}

    vae = dataclasses.replace(registry.get_plugin("vae"), evaluate=evaluate)
    data = vae_data()
    run = training.Run(
        plugin=vae, variant="dense-20", config=make_config(vae, "dense-20"),
        train=TrainConfig(steps=8, batch_size=16, checkpoint_every=2, eval_every=2, log_every=2, keep=1),
        dataset="mnist", workdir=tmp_path, train_data=data, eval_data={"image": data["image"][:32]}, progress=False,
    )
    from zoo_vae.train import negative_elbo

    result = run.fit(Loss(negative_elbo))
    assert seen == [("VAE", 32)] * 4

    lines = metrics_lines(tmp_path)
    train_lines = [m for m in lines if "loss" in m]
    eval_lines = [m for m in lines if any(k.startswith("eval/") for k in m)]
    assert [m["step"] for m in train_lines] == [2, 4, 6, 8]
    for m in train_lines:
        assert set(m) == {"step", "loss", "recon", "kl", "steps_per_s"}
        assert math.isfinite(m["loss"]) and m["steps_per_s"] > 0
        assert m["loss"] == pytest.approx(m["recon"] + m["kl"], rel=1e-5)
    assert [(m["step"], m["eval/neg_elbo"], m["eval/kl"]) for m in eval_lines] == [(2, 5.0, 0.5), (4, 1.0, 0.5), (6, 3.0, 0.5), (8, 4.0, 0.5)]
    assert result.metrics == {"neg_elbo": 4.0, "kl": 0.5}

    events = read_events(tmp_path / "tb")
    by_tag: dict[str, dict[int, float]] = {}
    for tag, step, value in events:
        by_tag.setdefault(tag, {})[step] = value
    assert {"train/loss", "train/recon", "train/kl", "train/steps_per_s", "eval/neg_elbo", "eval/kl"} <= set(by_tag)
    assert by_tag["eval/neg_elbo"] == {2: 5.0, 4: 1.0, 6: 3.0, 8: 4.0}
    for m in train_lines:
        assert by_tag["train/loss"][m["step"]] == pytest.approx(m["loss"], rel=1e-6)

    store = StepDirectory(tmp_path / "checkpoints")
    assert store.steps() == [4, 8]  # newest (8) and best by neg_elbo (4)
    assert checkpoint.read_meta(store.path(4))["eval"] == {"neg_elbo": 1.0, "kl": 0.5}


def test_without_a_metric_keep_is_the_newest_only(tmp_path):
    toy_run(tmp_path, steps=8, checkpoint_every=2, keep=2).fit(Loss(mse))
    assert StepDirectory(tmp_path / "checkpoints").steps() == [6, 8]
    assert json.loads((tmp_path / "run.json").read_text())["plugin"] == "toy"


def test_config_validation_messages():
    with pytest.raises(UsageError, match=r"checkpoint_every \(3\) must be a positive multiple of steps_per_call \(2\)"):
        TrainConfig(steps=8, steps_per_call=2, checkpoint_every=3)
    with pytest.raises(UsageError, match=r"steps \(7\) must be a positive multiple of steps_per_call \(2\)"):
        TrainConfig(steps=7, steps_per_call=2)
    with pytest.raises(UsageError, match=r"ema_decay must be in \(0, 1\)"):
        TrainConfig(ema_decay=1.0)


def test_a_custom_step_without_a_loss_metric_is_a_clear_error(tmp_path):
    def step(ctx, state, batch, key):
        return state, {"something": jnp.float32(0)}

    with pytest.raises(ZooError, match=r"must report a 'loss' metric; it reported \['something'\]"):
        toy_run(tmp_path).fit(training.CustomStep(step))


def test_a_mesh_smaller_than_the_machine_uses_the_first_devices():
    mesh = sharding.make_mesh({"data": 2})
    assert mesh.devices.size == 2 and list(mesh.devices.flat) == jax.devices()[:2]
    with pytest.raises(zoo.UsageError, match="needs 16 devices; there are 8"):
        sharding.make_mesh({"data": 16})


def test_keep_must_be_at_least_one():
    with pytest.raises(UsageError, match="keep must be at least 1; got 0"):
        TrainConfig(keep=0)


def test_resuming_where_steps_per_call_does_not_divide_the_step_is_refused(tmp_path):
    toy_run(tmp_path, steps=3, checkpoint_every=3).fit(Loss(mse))
    with pytest.raises(UsageError, match="resumes at step 3, which steps_per_call=2 does not divide"):
        toy_run(tmp_path, steps=8, checkpoint_every=3 * 2, steps_per_call=2).fit(Loss(mse))
    assert StepDirectory(tmp_path / "checkpoints").steps() == [3]


def test_only_a_score_of_the_saved_weights_ranks_them(tmp_path):
    """eval every 3 steps, checkpoints every 2: steps 2 and 4 carry no score; 6 carries step 6's."""
    def evaluate(model, data):
        return {"mse": float(mse(model, data, None))}

    plugin = dataclasses.replace(TOY, evaluate=evaluate, metric=("mse", "min"))
    run = toy_run(tmp_path, plugin=plugin, steps=6, checkpoint_every=2, eval_every=3, keep=10)
    run = dataclasses.replace(run, eval_data=toy_data())
    run.fit(Loss(mse))
    scores = {s: checkpoint.read_meta(tmp_path / "checkpoints" / str(s))["eval"] for s in (2, 4, 6)}
    assert scores[2] == {} and scores[4] == {} and set(scores[6]) == {"mse"}
