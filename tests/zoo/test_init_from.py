"""``--init-from NAME``: start training from a pretrained model's weights.

Matching variables are restored; variables whose shapes differ are re-initialised
only where the plugin declares them replaceable (a new head), and the run says which.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx

import zoo
import zoo.data
from zoo import checkpoint, registry, training
from zoo.config import make_config
from zoo_vae.train import negative_elbo

TINY = dict(steps=1, batch_size=8, optimizer="sgd", b1=0.0, learning_rate=1e-12, progress=False)


def flat(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in checkpoint.tree_paths(nnx.to_pure_dict(nnx.state(model))).items()}


def test_init_from_restores_every_matching_variable(tmp_path):
    data = zoo.data.synthetic("mnist", 64)
    zoo.train("vae", workdir=tmp_path, init_from="vae-mnist", train_data=data, eval_data=data, **TINY)
    started, pretrained = flat(zoo.load(tmp_path).model), flat(zoo.load("vae-mnist").model)
    assert started.keys() == pretrained.keys()
    for path in pretrained:  # one SGD step at 1e-12 moves nothing visible
        np.testing.assert_allclose(started[path], pretrained[path], rtol=0, atol=1e-6, err_msg=path)
    scratch = flat(zoo.build("vae", "dense-20"))
    assert not np.allclose(scratch["encoder/hidden/kernel"], started["encoder/hidden/kernel"])


def test_a_mismatch_the_plugin_does_not_allow_is_a_usage_error(tmp_path):
    data = zoo.data.synthetic("mnist", 64)
    with pytest.raises(zoo.UsageError, match="does not declare these replaceable") as error:
        zoo.train("vae", workdir=tmp_path, init_from="vae-mnist", settings={"latent_dim": "16"}, train_data=data, **TINY)
    lines = str(error.value).splitlines()[1:]
    assert lines == [
        "  decoder/hidden/kernel: model (16, 128), checkpoint (20, 128)",
        "  encoder/stats/bias: model (32,), checkpoint (40,)",
        "  encoder/stats/kernel: model (128, 32), checkpoint (128, 40)",
    ]


def test_declared_replaceable_variables_are_reinitialised_and_reported(tmp_path, capsys):
    plugin = dataclasses.replace(registry.get_plugin("vae"), replaceable=("encoder/stats", "decoder/hidden"))
    data = zoo.data.synthetic("mnist", 64)
    run = training.Run(
        plugin=plugin, variant="dense-20", config=make_config(plugin, "dense-20", {"latent_dim": 16}),
        train=training.TrainConfig(steps=1, batch_size=8, optimizer="sgd", b1=0.0, learning_rate=1e-12),
        dataset="mnist", workdir=tmp_path, init_from="vae-mnist", train_data=data, progress=False,
    )
    run.fit(training.Loss(negative_elbo))
    message = capsys.readouterr().err
    assert "init-from vae-mnist: restored 5 variables, re-initialised" in message
    assert "encoder/stats/kernel" in message and "decoder/hidden/kernel" in message
    started, pretrained = flat(zoo.load(tmp_path).model), flat(zoo.load("vae-mnist").model)
    np.testing.assert_allclose(started["decoder/logits/kernel"], pretrained["decoder/logits/kernel"], atol=1e-6)
    assert started["encoder/stats/kernel"].shape == (128, 32)


def test_an_unknown_name_fails_before_anything_compiles(tmp_path):
    with pytest.raises(zoo.UsageError, match="did you mean 'vae-mnist'"):
        zoo.train("vae", workdir=tmp_path, init_from="vae-mnsit", train_data=zoo.data.synthetic("mnist", 8), **TINY)
    assert not tmp_path.joinpath("run.json").exists()


def test_a_workdir_works_as_init_from_too(tmp_path):
    """README: a workdir works wherever a name does. Its newest step's weights start the new run."""
    data = zoo.data.synthetic("mnist", 64)
    zoo.train("vae", workdir=tmp_path / "first", train_data=data, steps=2, batch_size=8, progress=False)
    zoo.train("vae", workdir=tmp_path / "second", init_from=str(tmp_path / "first"), train_data=data, **TINY)
    started, source = flat(zoo.load(tmp_path / "second").model), flat(zoo.load(tmp_path / "first").model)
    for path in source:
        np.testing.assert_allclose(started[path], source[path], rtol=0, atol=1e-6, err_msg=path)


def test_init_from_restores_into_the_runs_shardings(tmp_path):
    """Each restored variable lands in the sharding the fresh one had, not as a full copy per device."""
    from zoo import pretrained, sharding

    mesh = sharding.make_mesh({"fsdp": 8})
    plugin = registry.get_plugin("vae")
    model_def = training.ModelDef.create(lambda: zoo.build("vae", "dense-20"), mesh, [nnx.Param])
    fresh = model_def.init(lambda: zoo.build("vae", "dense-20"))
    started = pretrained.init_from("vae-mnist", plugin, fresh)
    fresh_flat, started_flat = checkpoint.tree_paths(fresh), checkpoint.tree_paths(started)
    split = [p for p, v in fresh_flat.items() if not v.sharding.is_fully_replicated]
    assert split, "fsdp=8 splits some of the dense VAE's kernels"
    for path, value in fresh_flat.items():
        assert started_flat[path].sharding == value.sharding, path


def test_build_with_a_seed_is_the_model_a_run_with_that_seed_starts_from(tmp_path):
    """``zoo.build(seed=s)`` and ``zoo train --seed s`` draw from the same ``init`` stream: one step at
    learning rate 1e-12 moves nothing visible, so the trained run still equals the build, and another seed does not."""
    data = zoo.data.synthetic("mnist", 64)
    zoo.train("vae", workdir=tmp_path, seed=7, train_data=data, eval_data=data, **TINY)
    started, built, other = flat(zoo.load(tmp_path).model), flat(zoo.build("vae", seed=7)), flat(zoo.build("vae", seed=8))
    assert started.keys() == built.keys()
    for path in built:
        np.testing.assert_allclose(started[path], built[path], rtol=0, atol=1e-6, err_msg=path)
    assert not np.allclose(other["encoder/hidden/kernel"], built["encoder/hidden/kernel"])


def test_a_run_started_from_pretrained_weights_records_them_and_its_recipe_says_so(tmp_path):
    import json

    from zoo import publish

    data = zoo.data.synthetic("mnist", 64)
    zoo.train("vae", workdir=tmp_path, init_from="vae-mnist", train_data=data, eval_data=data, **TINY)
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["init_from"] == "vae-mnist"
    assert "--init-from vae-mnist" in publish.recipe(meta, {})
    exported = publish.export(tmp_path, tmp_path / "exported", measure=False)  # what zoo export prints
    assert "--init-from vae-mnist" in exported.recipe and exported.meta["init_from"] == "vae-mnist"
    with pytest.raises(zoo.UsageError, match="init_from: workdir 'vae-mnist', now None"):  # not the same run
        zoo.train("vae", workdir=tmp_path, train_data=data, eval_data=data, **(TINY | {"steps": 2}))
