"""A workdir belongs to one run (issue 10 §3-§5, §7, §8; issue 6 §3): one trainer at a time, the
checkpoint's own record decides what may resume, the cosine schedule keeps its horizon, and bad
values are one line before anything compiles.

A tiny deterministic toy (``Toy``: ``x (B, 4) -> Linear -> tanh -> Linear``) trains through
``zoo.training.Run(...).fit``; the VAE plugin is used where the plugin path matters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
import zoo.data
from zoo import sharding
from zoo.errors import UsageError, ZooError
from zoo.training import Loss, Run, TrainConfig
from zoo.training import lock as workdir_lock
from zoo.training.config import random_stream


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    features: int = 4


class Toy(nnx.Module):
    def __init__(self, cfg: ToyConfig, rngs: nnx.Rngs):
        self.a = nnx.Linear(cfg.features, cfg.features, rngs=rngs)
        self.b = nnx.Linear(cfg.features, 1, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def mse(model, batch, key):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


TOY = zoo.Plugin(
    name="toy", api=1, summary="two linear layers", config=ToyConfig, variants={"base": {}},
    build=lambda cfg, rngs: Toy(cfg, rngs), train=lambda run: run.fit(Loss(mse)),
    sample=lambda model, key, n: np.zeros((n, 1)),
)


def toy_data(n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "y": np.sin(x).sum(axis=1, keepdims=True).astype(np.float32)}


def toy_run(workdir: Path, **train) -> Run:
    train = {"steps": 4, "batch_size": 16, "optimizer": "sgd", "b1": 0.0, "learning_rate": 0.1, **train}
    return Run(plugin=TOY, variant="base", config=ToyConfig(), train=TrainConfig(**train), dataset="toy",
               workdir=workdir, train_data=toy_data(), progress=False)


def fit(workdir: Path, **train):
    return toy_run(workdir, **train).fit(Loss(mse))


# --------------------------------------------------------------------------- values refused up front


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("seed", -1, "seed must be in [0, 2**32)"),
        ("seed", 2**70, "seed must be in [0, 2**32)"),
        ("learning_rate", math.nan, "learning_rate must be positive and finite"),
        ("learning_rate", math.inf, "learning_rate must be positive and finite"),
        ("grad_clip", -1.0, "grad_clip must be positive"),
        ("weight_decay", -0.1, "weight_decay must be finite and at least 0"),
        ("warmup_steps", -5, "warmup_steps must be finite and at least 0"),
        ("schedule_steps", 0, "schedule_steps must be at least 1"),
    ],
)
def test_senseless_training_values_are_usage_errors(field, value, needle):
    with pytest.raises(UsageError) as error:
        TrainConfig(**{field: value})
    assert needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--seed", str(2**70)], ["--workdir", ""]])
def test_cli_refuses_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys, args):
    from zoo.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "vae", "--steps", "1", *(["--workdir", str(tmp_path / "w")] if "--workdir" not in args else []), *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("zoo: error:"), err
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "w"]) and not (tmp_path / "w" / "checkpoints").exists()


def test_a_repeated_mesh_axis_is_refused():
    with pytest.raises(UsageError, match="names 'data' twice"):
        sharding.parse_mesh("data=1,data=8")


def test_a_model_that_does_not_fit_the_data_is_one_line_naming_the_plugin(tmp_path):
    """Caught by tracing the step on the abstract batch; the corrected rerun in the same workdir then trains."""
    data = zoo.data.synthetic("mnist", 64)
    with pytest.raises(ZooError) as error:
        zoo.train("vae", workdir=tmp_path, settings={"image_shape": "(1,1,1)"}, train_data=data, progress=False, steps=2, batch_size=8)
    message = str(error.value)
    assert error.value.exit_code == 2 and "'vae'" in message and "does not fit dataset 'mnist'" in message
    assert "\n" not in message
    assert not (tmp_path / "run.json").exists()  # a failed start leaves nothing that blocks the rerun
    result = zoo.train("vae", workdir=tmp_path, train_data=data, progress=False, steps=2, batch_size=8)
    assert result.step == 2 and result.resumed_from is None


# --------------------------------------------------------------------------- random streams


def test_init_and_step_streams_never_share_a_key():
    """The initialiser's keys (nnx.Rngs over the init stream) and every step's key are all distinct."""
    rngs = nnx.Rngs(random_stream(0, "init"))
    init_keys = {tuple(np.asarray(jax.random.key_data(rngs.params())).tolist()) for _ in range(64)}
    step = random_stream(0, "step")
    step_keys = {tuple(np.asarray(jax.random.key_data(jax.random.fold_in(step, k))).tolist()) for k in range(64)}
    assert len(init_keys) == len(step_keys) == 64 and not init_keys & step_keys


# --------------------------------------------------------------------------- one trainer per workdir


def test_a_second_trainer_is_told_who_holds_the_workdir(tmp_path):
    fd = workdir_lock._acquire(tmp_path)  # as a running trainer would hold it
    try:
        with pytest.raises(workdir_lock.WorkdirBusy, match=r"in use by another zoo train \(pid \d+ on "):
            fit(tmp_path)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        import os

        os.close(fd)
    assert fit(tmp_path).step == 4  # released: the workdir trains


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    (tmp_path / workdir_lock.LOCK_FILE).write_text("pid 999999 on a-host-long-gone\n")
    assert fit(tmp_path).step == 4
    assert fit(tmp_path, steps=6).step == 6  # and the lock was released when the first fit returned


# --------------------------------------------------------------------------- what may resume


def test_resume_trusts_the_checkpoint_not_run_json(tmp_path):
    fit(tmp_path, batch_size=16)
    (tmp_path / "run.json").unlink()
    with pytest.raises(UsageError, match=r"holds a different run \(train.batch_size: workdir 16, now 32\)"):
        fit(tmp_path, batch_size=32, steps=6)


def test_a_step_copied_from_another_run_is_refused(tmp_path):
    fit(tmp_path / "mine", steps=2)
    fit(tmp_path / "other", steps=4)  # the same description, another run
    shutil.copytree(tmp_path / "other" / "checkpoints" / "4", tmp_path / "mine" / "checkpoints" / "4")
    with pytest.raises(ZooError, match=r"checkpoints/4 belongs to another run"):
        fit(tmp_path / "mine", steps=6)
    assert (tmp_path / "mine" / "checkpoints" / "2").is_dir()  # nothing was pruned


@pytest.mark.parametrize("content", ["[1, 2]", '{"train": 5, "config": {}}'])
def test_a_run_json_that_is_not_a_description_is_one_line(tmp_path, content):
    fit(tmp_path)
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(ZooError, match="is not a run description") as error:
        fit(tmp_path, steps=6)
    assert "\n" not in str(error.value)


def test_run_json_records_what_the_run_now_is(tmp_path, capsys):
    first = fit(tmp_path, steps=4)
    record = json.loads((tmp_path / "run.json").read_text())
    assert (record["train"]["steps"], record["step"], record["resumed_from"]) == (4, 4, None)
    longer = fit(tmp_path, steps=6)
    record2 = json.loads((tmp_path / "run.json").read_text())
    assert (record2["train"]["steps"], record2["step"], record2["resumed_from"]) == (6, 6, 4)
    assert record2["run_id"] == record["run_id"] and longer.resumed_from == 4 and first.resumed_from is None


def test_steps_below_those_done_are_said(tmp_path, capsys):
    fit(tmp_path, steps=4)
    capsys.readouterr()
    result = fit(tmp_path, steps=2)
    assert result.step == 4
    assert "already at step 4, past steps=2: nothing to train" in capsys.readouterr().err


# --------------------------------------------------------------------------- the cosine horizon

COSINE = {"schedule": "cosine", "optimizer": "adam", "learning_rate": 0.05}


def test_extending_a_cosine_run_is_refused_with_the_way_to_do_it(tmp_path):
    fit(tmp_path, steps=4, **COSINE)
    with pytest.raises(UsageError, match=r"cosine schedule ends at step 4.*--set train.schedule_steps=4") as error:
        fit(tmp_path, steps=8, **COSINE)
    assert "\n" not in str(error.value)


def test_an_extended_cosine_run_equals_an_uninterrupted_run_of_the_final_length(tmp_path):
    """With the horizon kept (schedule_steps=4), 4 steps then 4 more are bitwise 8 steps in one go."""
    fit(tmp_path / "extended", steps=4, **COSINE)
    extended = fit(tmp_path / "extended", steps=8, schedule_steps=4, **COSINE)
    straight = fit(tmp_path / "straight", steps=8, schedule_steps=4, **COSINE)
    assert extended.resumed_from == 4 and extended.params_digest == straight.params_digest
    longer_schedule = fit(tmp_path / "longer", steps=8, **COSINE)  # the horizon does change the run
    assert longer_schedule.params_digest != straight.params_digest


def test_a_cosine_run_resumed_within_its_horizon_keeps_it(tmp_path):
    """Stopping early (steps=2 of a 6-step schedule) and going on to 4 equals 4 steps of the 6-step schedule."""
    fit(tmp_path / "b", steps=2, schedule_steps=6, **COSINE)
    resumed = fit(tmp_path / "b", steps=4, **COSINE)  # schedule_steps taken from the checkpoint's record
    assert resumed.params_digest == fit(tmp_path / "c", steps=4, schedule_steps=6, **COSINE).params_digest
    assert resumed.params_digest != fit(tmp_path / "d", steps=4, **COSINE).params_digest  # not the 4-step schedule
