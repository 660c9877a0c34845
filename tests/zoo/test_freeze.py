"""``train.freeze``: fine-tuning with part of the parameters left exactly as they started.

Frozen parameters are compared bitwise with the values the run started from (as the
loop initialised them, or the ``--init-from`` checkpoint), and
the trained ones must have moved. Every run uses the conftest's 8 CPU devices.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from helpers import assert_one_line_error, run_main

import zoo
import zoo.data
from zoo import checkpoint, publish, registry, training
from zoo.config import make_config
from zoo.training.freeze import frozen_paths
from zoo_vae.train import negative_elbo

FAST = dict(steps=3, batch_size=8, progress=False)
VAE_PARAMS = {  # the dense-20 VAE's parameters
    "encoder/hidden/kernel", "encoder/hidden/bias", "encoder/stats/kernel", "encoder/stats/bias",
    "decoder/hidden/kernel", "decoder/hidden/bias", "decoder/logits/kernel", "decoder/logits/bias",
}


def flat(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in checkpoint.tree_paths(nnx.to_pure_dict(nnx.state(model))).items()}


def assert_frozen_and_trained(after: dict, before: dict, frozen: set[str], trained: set[str]) -> None:
    """``frozen`` paths bitwise as before, every ``trained`` path moved."""
    for path in frozen:
        assert after[path].dtype == before[path].dtype and after[path].tobytes() == before[path].tobytes(), path
    for path in trained:
        assert not np.array_equal(after[path], before[path]), f"{path} did not train"


def latest_step(workdir: Path) -> Path:
    store = checkpoint.StepDirectory(workdir / "checkpoints")
    return store.path(store.latest())


@pytest.fixture
def data():
    return zoo.data.synthetic("mnist", 64)


@pytest.fixture
def initial(monkeypatch) -> dict[str, np.ndarray]:
    """The values the test's run starts from, copied as the loop initialises them (before a step donates them).

    The reference for "unchanged": an eager ``zoo.build`` with the run's seed can differ
    from the loop's jitted initialisation in the last bit (the tiny GAN's kernels do).
    """
    seen: dict[str, np.ndarray] = {}
    initialise = training.Loop._initialise

    def recording(self):
        state = initialise(self)
        variables = self.model_def.combine(state.params, state.rest)
        seen.update({k: np.array(v) for k, v in checkpoint.tree_paths(variables).items()})
        return state

    monkeypatch.setattr(training.Loop, "_initialise", recording)
    return seen


# --------------------------------------------------------------------------- what freezes


def test_a_pattern_is_a_path_prefix_or_a_glob():
    plugin = dataclasses.replace(registry.get_plugin("vae"), name="p", replaceable=("head",))
    paths = [("blocks", 0, "kernel"), ("blocks", 1, "kernel"), ("blocks_extra", "kernel"), ("tokens",), ("head", "kernel")]
    assert frozen_paths("blocks", paths, plugin) == {("blocks", 0, "kernel"), ("blocks", 1, "kernel")}
    assert frozen_paths("blocks/*,tokens", paths, plugin) == {("blocks", 0, "kernel"), ("blocks", 1, "kernel"), ("tokens",)}
    assert frozen_paths("blocks*", paths, plugin) == {("blocks", 0, "kernel"), ("blocks", 1, "kernel"), ("blocks_extra", "kernel")}
    assert frozen_paths("*/1/*", paths, plugin) == {("blocks", 1, "kernel")}
    assert frozen_paths("backbone", paths, plugin) == set(paths) - {("head", "kernel")}


# --------------------------------------------------------------------------- what training does


def test_frozen_parameters_stay_bitwise_and_have_no_optimizer_state(tmp_path, data, initial):
    """AdamW with weight decay and a global-norm clip, parameters split over fsdp=8: the encoder stays put."""
    settings = {"train.freeze": "encoder", "train.weight_decay": "0.1", "train.grad_clip": "1.0"}
    zoo.train("vae", workdir=tmp_path, train_data=data, settings=settings, mesh="fsdp=8", **FAST)
    encoder = {p for p in VAE_PARAMS if p.startswith("encoder/")}
    assert_frozen_and_trained(flat(zoo.load(tmp_path).model), initial, encoder, VAE_PARAMS - encoder)
    stored = checkpoint.stored_tree(latest_step(tmp_path), "train")
    assert not [p for p in stored if "encoder" in p], "no optimizer state for a frozen parameter"
    for moment in ("mu", "nu"):  # Adam's moments: exactly the trained parameters
        assert {p.split(f"/{moment}/")[1] for p in stored if f"/{moment}/" in p} == VAE_PARAMS - encoder


def test_backbone_from_pretrained_weights_trains_only_the_replaceable_head(tmp_path, data, capsys):
    plugin = dataclasses.replace(registry.get_plugin("vae"), replaceable=("decoder/logits",))
    run = training.Run(
        plugin=plugin, variant="dense-20", config=make_config(plugin, "dense-20"),
        train=training.TrainConfig(steps=3, batch_size=8, freeze="backbone"),
        dataset="mnist", workdir=tmp_path, init_from="vae-mnist", train_data=data,
    )
    run.fit(training.Loss(negative_elbo))
    head = {"decoder/logits/kernel", "decoder/logits/bias"}
    pretrained = flat(zoo.load("vae-mnist").model)
    assert_frozen_and_trained(flat(zoo.load(tmp_path).model), pretrained, VAE_PARAMS - head, head)
    # 128 * 784 + 784 of 209,464 values train (the dense-20 VAE's 209k parameters)
    line = ("freeze backbone: 6 of 8 parameter arrays frozen (108,328 of 209,464 values); "
            "training decoder/logits/bias, decoder/logits/kernel")
    assert line in capsys.readouterr().err.splitlines()


def test_bf16_micro_batches_and_ema_leave_frozen_parameters_bitwise(tmp_path, data, initial):
    """Under bf16 the frozen weights compute in bf16 too, yet are never written back rounded."""
    settings = {"train.freeze": "decoder/hidden,encoder/stats/*", "train.precision": "bf16",
                "train.grad_accum": "2", "train.ema_decay": "0.5"}
    zoo.train("vae", workdir=tmp_path, train_data=data, settings=settings, **(FAST | {"batch_size": 16}))
    frozen = {"decoder/hidden/kernel", "decoder/hidden/bias", "encoder/stats/kernel", "encoder/stats/bias"}
    assert "ema" in {p.name for p in latest_step(tmp_path).iterdir()}  # zoo.load reads the EMA weights
    assert_frozen_and_trained(flat(zoo.load(tmp_path).model), initial, frozen, VAE_PARAMS - frozen)


def test_groups_keep_their_unfrozen_parameters_and_batch_statistics_still_update(tmp_path, data, initial):
    """The GAN's two groups: a frozen generator layer and its BatchNorm's scale stay; its running statistics move."""
    settings = {"train.freeze": "generator/project,generator/project_norm"}
    zoo.train("gan", variant="tiny", workdir=tmp_path, train_data=data, settings=settings, **FAST)
    frozen = {"generator/project/kernel", "generator/project_norm/scale", "generator/project_norm/bias"}
    moved = {"generator/project_norm/mean", "generator/up1/kernel", "discriminator/down1/kernel"}
    assert_frozen_and_trained(flat(zoo.load(tmp_path).model), initial, frozen, moved)


def test_resume_with_freeze_is_exact_and_recorded(tmp_path, data):
    options = dict(train_data=data, settings={"train.freeze": "encoder/*"}, steps=4, batch_size=8, checkpoint_every=2,
                   progress=False)
    reference = zoo.train("vae", workdir=tmp_path / "reference", **options)
    workdir = Path(shutil.copytree(tmp_path / "reference", tmp_path / "w"))
    shutil.rmtree(workdir / "checkpoints" / "4")  # as if killed after checkpoint 2
    resumed = zoo.train("vae", workdir=workdir, **options)
    assert resumed.resumed_from == 2 and resumed.params_digest == reference.params_digest

    with pytest.raises(zoo.UsageError, match=r"train.freeze: workdir 'encoder/\*', now 'encoder/hidden'"):
        zoo.train("vae", workdir=workdir, **(options | {"settings": {"train.freeze": "encoder/hidden"}}))
    meta = json.loads((workdir / "run.json").read_text())
    assert meta["train"]["freeze"] == "encoder/*"
    recipe = publish.recipe(meta, {})
    assert "--set 'train.freeze=encoder/*'" in recipe
    assert "train.freeze=encoder/*" in publish.recipe_arguments(recipe, "test")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("freeze", "needles"), [
    ("backbone", ["train.freeze=backbone: plugin 'vae' declares no replaceable head"]),
    ("encoder,nomatch", ["'nomatch' matches no parameter of plugin 'vae'", "decoder/hidden/bias"]),
    ("encoder,decoder", ["freezes all 8 parameter arrays of plugin 'vae'; nothing would train"]),
    ("*", ["freezes all 8 parameter arrays"]),
    ("encoder,,decoder", ["has an empty pattern"]),
])
def test_a_freeze_that_cannot_apply_is_one_line_before_anything_runs(tmp_path, data, freeze, needles):
    with pytest.raises(zoo.UsageError) as error:
        zoo.train("vae", workdir=tmp_path, train_data=data, settings={"train.freeze": freeze}, **FAST)
    assert "\n" not in str(error.value)
    for needle in needles:
        assert needle in str(error.value)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "checkpoints").exists()


def test_freezing_a_whole_group_is_refused(tmp_path, data):
    with pytest.raises(zoo.UsageError, match="freezes every parameter of group disc; it would not train"):
        zoo.train("gan", variant="tiny", workdir=tmp_path, train_data=data, settings={"train.freeze": "discriminator"}, **FAST)


def test_the_cli_says_one_line_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # it must fail before any data is needed
    code, out, err = run_main(["train", "vae", "--set", "train.freeze=nomatch", "--workdir", str(tmp_path / "run"),
                               "--steps", "1", "--batch-size", "8", "--quiet"])
    assert code == 2 and out == ""
    assert_one_line_error(err, "'nomatch' matches no parameter of plugin 'vae'")
