"""Exact resume (DESIGN.md, The shared loop): a killed or interrupted run, restarted, ends bitwise where
an uninterrupted one does; ``steps_per_call`` fusion changes nothing.

The real ``zoo`` CLI runs in subprocesses through a small driver that swaps the
MNIST loader for 256 synthetic images (so the tests run offline and fast) and,
when asked, slows the data loader down so a signal lands mid-run. Every run
uses the conftest's 8 CPU devices, like the in-process reference.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_checkpoints import subprocess_env

import zoo
import zoo.data
from zoo.checkpoint import StepDirectory
from zoo.training import Interrupted

N, STEPS, BATCH, EVERY = 256, 8, 16, 2

DRIVER = """
import os, sys, time
import zoo.data
data = zoo.data.synthetic("mnist", {n})
delay = float(os.environ.get("ZOO_TEST_BATCH_DELAY", "0"))
def load(name, split="train"):  # offline: synthetic images in place of MNIST
    if delay and not hasattr(load, "slowed"):  # slow the loader so a signal can land mid-run
        # patched here, not at the top: the loader imports JAX, and `zoo train` loads no JAX
        # before its signal handlers are in; a driver that did would test another start-up
        from zoo.data import loader
        _next = loader.ArrayLoader.__next__
        def slow(self):
            time.sleep(delay)
            return _next(self)
        loader.ArrayLoader.__next__ = slow
        load.slowed = True
    return data
zoo.data.load = load
if os.environ.get("ZOO_TEST_SIGNAL_AT_EXIT"):  # another process's Ctrl-C landing during the exit
    import atexit, signal
    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))
from zoo.cli import main
assert "jax" not in sys.modules, "the driver must start `zoo train` as the CLI does, with no JAX loaded"
main(sys.argv[1:])
""".format(n=N)


def train_args(workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-c", DRIVER, "train", "vae", "--steps", str(STEPS), "--batch-size", str(BATCH),
        "--checkpoint-every", str(EVERY), "--workdir", str(workdir), "--json", "--quiet", *extra,
    ]


def run_cli(workdir: Path, *extra: str) -> dict:
    proc = subprocess.run(train_args(workdir, *extra), capture_output=True, text=True, env=subprocess_env(), timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def start_slow(workdir: Path, *extra: str, delay: float = 0.3) -> subprocess.Popen:
    return subprocess.Popen(
        train_args(workdir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(ZOO_TEST_BATCH_DELAY=delay),
    )


def wait_for_step(proc: subprocess.Popen, workdir: Path, step: int, timeout: float = 400) -> None:
    """Until checkpoint ``step`` is sealed (its MANIFEST written last)."""
    deadline = time.monotonic() + timeout
    while not (workdir / "checkpoints" / str(step) / "MANIFEST.json").exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before checkpoint {step}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint {step} after {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in process (same devices, data and settings as the CLI runs)."""
    data = zoo.data.synthetic("mnist", N)
    workdir = tmp_path_factory.mktemp("reference")
    return zoo.train(
        "vae", workdir=workdir, train_data=data, eval_data=data, progress=False,
        steps=STEPS, batch_size=BATCH, checkpoint_every=EVERY,
    )


# =========================================================================== steps_per_call


def test_fused_steps_are_bitwise_identical(reference, tmp_path):
    data = zoo.data.synthetic("mnist", N)
    fused = zoo.train(
        "vae", workdir=tmp_path, train_data=data, eval_data=data, progress=False,
        steps=STEPS, batch_size=BATCH, steps_per_call=4, log_every=4,
    )
    assert fused.params_digest == reference.params_digest
    assert fused.loss == reference.loss


def test_resume_with_fused_steps_after_a_crash(reference, tmp_path, monkeypatch):
    """steps_per_call=2: the process dies right after checkpoint 4; the rerun resumes from 4 and matches."""
    data = zoo.data.synthetic("mnist", N)
    options = dict(workdir=tmp_path, train_data=data, eval_data=data, progress=False, steps=STEPS, batch_size=BATCH,
                   checkpoint_every=4, steps_per_call=2)
    real_save = StepDirectory.save

    def save_then_die(self, step, items, meta):
        real_save(self, step, items, meta)
        if step == 4:
            raise KeyboardInterrupt  # anything that is not the loop's own handling
    monkeypatch.setattr(StepDirectory, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        zoo.train("vae", **options)
    monkeypatch.undo()
    assert StepDirectory(tmp_path / "checkpoints").steps() == [4]

    resumed = zoo.train("vae", **options)
    assert resumed.resumed_from == 4 and resumed.step == STEPS
    assert resumed.params_digest == reference.params_digest


# =========================================================================== SIGKILL


@pytest.mark.slow
def test_sigkill_midway_then_restart_is_exact(reference, tmp_path):
    proc = start_slow(tmp_path)
    wait_for_step(proc, tmp_path, EVERY)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = StepDirectory(tmp_path / "checkpoints")
    killed_at = store.latest()
    assert killed_at is not None and killed_at < STEPS, "the kill did not land mid-run"

    result = run_cli(tmp_path)
    assert result["step"] == STEPS and result["resumed_from"] == killed_at  # --json says where it resumed
    assert result["params_digest"] == reference.params_digest
    assert result["loss"] == pytest.approx(reference.loss, rel=0, abs=0)
    assert store.latest() == STEPS


# =========================================================================== Ctrl-C


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_the_rerun_completes(reference, tmp_path):
    """With steps_per_call=2 through the CLI: interrupt, one line, resume, same digest as K=1 uninterrupted."""
    fused = ("--set", "train.steps_per_call=2")
    proc = start_slow(tmp_path, *fused)
    wait_for_step(proc, tmp_path, EVERY)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=400)  # generous: CI machines can be loaded
    assert proc.returncode == Interrupted.exit_code == 130, err[-3000:]
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err  # the notice when the signal lands, then the outcome
    assert lines[0].startswith("zoo: stopping after the current step and saving a checkpoint")
    lines = lines[1:]
    assert "interrupted at step" in lines[0] and "checkpoint saved in" in lines[0] and "rerun to resume" in lines[0]
    saved = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    assert EVERY <= saved < STEPS
    assert str(tmp_path / "checkpoints" / str(saved)) in lines[0]
    assert StepDirectory(tmp_path / "checkpoints").latest() == saved  # sealed and verified

    result = run_cli(tmp_path, *fused)
    assert result["step"] == STEPS
    assert result["params_digest"] == reference.params_digest


def test_a_signal_landing_during_the_exit_after_a_stop_changes_nothing(tmp_path):
    """After an agreed stop the exit code is decided: a late Ctrl-C (with several processes, a terminal
    reaches each at its own moment) must neither kill the process nor print a traceback on its way out."""
    proc = subprocess.Popen(
        train_args(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(ZOO_TEST_BATCH_DELAY=0.3, ZOO_TEST_SIGNAL_AT_EXIT=1),
    )
    wait_for_step(proc, tmp_path, EVERY)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_the_rerun_completes(reference, tmp_path):
    """SIGTERM (how clusters preempt jobs) is a stop like Ctrl-C, with exit code 143."""
    proc = start_slow(tmp_path)
    wait_for_step(proc, tmp_path, EVERY)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)  # generous: CI machines can be loaded
    assert proc.returncode == 143 and out == "", err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("zoo: interrupted at step")
    saved = StepDirectory(tmp_path / "checkpoints").latest()
    assert saved is not None and EVERY <= saved < STEPS
    result = run_cli(tmp_path)
    assert result["resumed_from"] == saved and result["params_digest"] == reference.params_digest


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.0, 0.5, 2.0])
def test_ctrl_c_during_start_up_is_never_swallowed(tmp_path, after):
    """Wherever ``zoo train`` is in its start-up (joining, loading data, building, compiling) when Ctrl-C
    lands, counted from the moment the CLI starts: exit 130, no result, no traceback."""
    # STARTED is written from inside the CLI's own handling (its click group's main, called in
    # zoo.cli.main's try): written before main(), a Ctrl-C sent the moment it is read could land
    # between the write and main's try, where no program can catch it (seen on a fast host).
    started = (
        "import zoo.cli\n_group_main = zoo.cli.cli.main\n"
        "def started_main(*a, **k):\n    sys.stderr.write('STARTED\\n'); sys.stderr.flush()\n    return _group_main(*a, **k)\n"
        "zoo.cli.cli.main = started_main\nmain(sys.argv[1:])"
    )
    driver = DRIVER.replace("main(sys.argv[1:])", started)
    proc = subprocess.Popen(
        [sys.executable, "-c", driver, *train_args(tmp_path)[3:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=subprocess_env(ZOO_TEST_BATCH_DELAY=0.3),
    )
    assert proc.stderr.readline() == "STARTED\n"
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=400)  # generous: CI machines can be loaded
    assert proc.returncode == 130, err[-3000:]
    assert out == "" and "Traceback" not in err
    assert not (tmp_path / "run.json").exists() or StepDirectory(tmp_path / "checkpoints").latest() is not None


def test_a_workdir_of_another_run_is_refused(reference, tmp_path):
    import shutil

    workdir = Path(shutil.copytree(reference.workdir, tmp_path / "w"))
    data = zoo.data.synthetic("mnist", N)
    with pytest.raises(zoo.UsageError, match=r"holds a different run \(train.batch_size: workdir 16, now 32\)"):
        zoo.train("vae", workdir=workdir, train_data=data, progress=False, steps=STEPS, batch_size=32, checkpoint_every=EVERY)
    # more steps continue the same run
    longer = zoo.train("vae", workdir=workdir, train_data=data, eval_data=data, progress=False, steps=STEPS + 2,
                       batch_size=BATCH, checkpoint_every=EVERY)
    assert longer.resumed_from == STEPS and longer.step == STEPS + 2


def test_settings_that_leave_the_maths_alone_may_change_on_resume(reference, tmp_path):
    """checkpoint_every, log_every, keep, eval_every and steps_per_call do not change a step's result."""
    import shutil

    workdir = Path(shutil.copytree(reference.workdir, tmp_path / "w"))
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # as if killed after checkpoint STEPS - EVERY
    data = zoo.data.synthetic("mnist", N)
    resumed = zoo.train(
        "vae", workdir=workdir, train_data=data, eval_data=data, progress=False, steps=STEPS, batch_size=BATCH,
        checkpoint_every=EVERY * 2, log_every=1, keep=5, steps_per_call=2,
    )
    assert resumed.resumed_from == STEPS - EVERY
    assert resumed.params_digest == reference.params_digest


def test_resume_forgets_the_metrics_a_killed_run_logged_past_its_checkpoint(reference, tmp_path):
    import shutil

    workdir = Path(shutil.copytree(reference.workdir, tmp_path / "w"))
    with open(workdir / "metrics.jsonl", "a") as f:  # logged by a run killed before saving step 99
        f.write(json.dumps({"step": 99, "loss": 1.0}) + "\n" + '{"step": 10')  # and a line cut short
    data = zoo.data.synthetic("mnist", N)
    zoo.train("vae", workdir=workdir, train_data=data, eval_data=data, progress=False, steps=STEPS + 2,
              batch_size=BATCH, checkpoint_every=EVERY, log_every=1)
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps and steps == sorted(steps) and steps[-1] == STEPS + 2
