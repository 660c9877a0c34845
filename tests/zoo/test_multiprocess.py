"""Several processes, one run (jax.distributed over gloo on CPU), through the real ``zoo train`` CLI.

Two processes with 2 CPU devices each join with ``--coordinator 127.0.0.1:PORT
--num-processes 2 --process-id I`` and train the dense VAE on a 4-device mesh
whose parameters are split across both processes (``fsdp=4``); one process with
4 devices trains the same run. They must agree, and only process 0 may write the
run's files. A driver swaps MNIST for synthetic images (offline) and records
which process opens which of the run's files for writing.

Stop agreement (DESIGN.md: every stop/save/skip is agreed by all processes): a
signal sent to one process, or to both at different moments, stops both after
the same step with one checkpoint, and the same command then resumes exactly.
Per-process batches follow the mesh: with the batch split over fewer shards than
processes (``tensor=4``), each process feeds the rows its devices hold.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time

import pytest
from fixtures_checkpoints import subprocess_env

from zoo.checkpoint import StepDirectory

N, STEPS, BATCH, EVERY, LOG_EVERY, MESH = 128, 6, 16, 3, 2, "fsdp=4"

DRIVER = """
import builtins, io, json, os, sys
import zoo.data
data = zoo.data.synthetic("mnist", {n})
zoo.data.load = lambda name, split="train": data  # offline: synthetic images in place of MNIST
delay = float(os.environ.get("ZOO_TEST_BATCH_DELAY", "0"))
if delay:  # slow the loader so a signal can land mid-run
    import time
    from zoo.data import loader
    _next = loader.ArrayLoader.__next__
    def slow(self):
        time.sleep(delay)
        return _next(self)
    loader.ArrayLoader.__next__ = slow

workdir = os.path.realpath(os.environ["ZOO_TEST_WORKDIR"])
writes = []
def record(file):
    path = os.path.realpath(os.fspath(file))
    if path.startswith(workdir) and any(w in path for w in ("metrics.jsonl", "run.json", "MANIFEST.json", "tfevents")):
        writes.append(os.path.relpath(path, workdir))
real_open = io.open
def watched_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax") and isinstance(file, (str, os.PathLike)):
        record(file)
    return real_open(file, mode, *args, **kwargs)
builtins.open = io.open = watched_open
real_replace = os.replace
def watched_replace(src, dst, *args, **kwargs):  # atomic writes land by renaming a temporary file
    record(dst)
    return real_replace(src, dst, *args, **kwargs)
os.replace = watched_replace

import zoo.api
real_train = zoo.api.train
def train(*args, **kwargs):  # the topology, read while the run is still joined
    import jax
    result = real_train(*args, **kwargs)
    facts.update(process=jax.process_index(), processes=jax.process_count(),
                 devices=jax.device_count(), local=jax.local_device_count())
    return result
zoo.api.train = train
facts = {{"writes": writes}}
def report():
    with real_open(os.environ["ZOO_TEST_REPORT"], "w") as f:
        json.dump(facts, f)
import atexit
atexit.register(report)

from zoo.cli import main
main(sys.argv[1:])
""".format(n=N)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(workdir, *extra: str, mesh: str = MESH, steps: int = STEPS, every: int = EVERY) -> list[str]:
    return [
        sys.executable, "-c", DRIVER, "train", "vae", "--steps", str(steps), "--batch-size", str(BATCH),
        "--checkpoint-every", str(every), "--set", f"train.log_every={LOG_EVERY}", "--mesh", mesh,
        "--workdir", str(workdir), "--json", "--quiet", *extra,
    ]


def launch(workdir, report, devices: int, *extra: str, delay: float = 0.0, **options) -> subprocess.Popen:
    env = subprocess_env(devices=devices, ZOO_TEST_WORKDIR=workdir, ZOO_TEST_REPORT=report, ZOO_TEST_BATCH_DELAY=delay)
    return subprocess.Popen(command(workdir, *extra, **options), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def launch_pair(workdir, reports, **options) -> list[subprocess.Popen]:
    """Two processes of 2 CPU devices each, joined into one run."""
    port = free_port()
    return [
        launch(workdir, reports / f"report{i}.json", 2, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
               "--process-id", str(i), **options)
        for i in range(2)
    ]


def communicate(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """Exit code, stdout, stderr; a process still running after ``timeout`` is killed and fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process hung for {timeout}s: {err[-3000:]}")
    return proc.returncode, out, err


def finish(proc: subprocess.Popen, report) -> tuple[dict, dict]:
    code, out, err = communicate(proc)
    assert code == 0, err[-4000:]
    return json.loads(out), json.loads(report.read_text())


def kill_all(procs) -> None:
    """A failed process leaves its peer waiting on the coordinator: end every one still running."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def logged_losses(workdir) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_two_processes_match_one_and_only_process_0_writes(tmp_path):
    shared = tmp_path / "two"
    procs = launch_pair(shared, tmp_path)
    single = launch(tmp_path / "one", tmp_path / "report-one.json", 4)
    try:
        (out0, facts0), (out1, facts1) = (finish(p, tmp_path / f"report{i}.json") for i, p in enumerate(procs))
        one, facts_one = finish(single, tmp_path / "report-one.json")
    finally:
        kill_all((*procs, single))

    # The topology really was 2 processes x 2 devices against 1 x 4.
    assert (facts0["process"], facts0["processes"], facts0["devices"], facts0["local"]) == (0, 2, 4, 2)
    assert (facts1["process"], facts1["processes"], facts1["devices"], facts1["local"]) == (1, 2, 4, 2)
    assert (facts_one["processes"], facts_one["devices"]) == (1, 4)

    # Both processes report the same result, and it is the single process's.
    assert out0["step"] == out1["step"] == one["step"] == STEPS
    assert out0["params_digest"] == out1["params_digest"]  # gathered from both processes' shards
    assert out0["loss"] == out1["loss"]
    assert math.isfinite(one["loss"])
    assert out0["loss"] == pytest.approx(one["loss"], rel=1e-5)

    # Only process 0 wrote the run's files (process 1 still wrote its share of the Orbax arrays).
    assert facts1["writes"] == []
    written = set(facts0["writes"])
    assert {"run.json", "metrics.jsonl"} <= written
    assert any(w.endswith("MANIFEST.json") for w in written)
    assert any("tfevents" in w for w in written)

    lines = [json.loads(line) for line in (shared / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))  # written once, not twice
    assert len(list((shared / "tb").glob("events.out.tfevents.*"))) == 1
    store = StepDirectory(shared / "checkpoints")
    assert store.steps() == [EVERY, STEPS]  # sealed (MANIFEST verified) steps
    for step in store.steps():
        files = json.loads((store.path(step) / "MANIFEST.json").read_text())["files"]
        assert any("process_1" in name for name in files)  # process 1's shards are covered by the manifest


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["tensor=4", "fsdp=2,tensor=2", "data=2,tensor=2"])
def test_any_mesh_over_two_processes_matches_one_process(tmp_path, mesh):
    """The batch is split over data x fsdp only; each process feeds the rows its own devices hold."""
    procs = launch_pair(tmp_path / "two", tmp_path, mesh=mesh)
    single = launch(tmp_path / "one", tmp_path / "report-one.json", 4, mesh=mesh)
    try:
        (out0, _), (out1, _) = (finish(p, tmp_path / f"report{i}.json") for i, p in enumerate(procs))
        one, _ = finish(single, tmp_path / "report-one.json")
    finally:
        kill_all((*procs, single))
    assert out0["params_digest"] == out1["params_digest"] and out0["step"] == one["step"] == STEPS
    two_losses, one_losses = logged_losses(tmp_path / "two"), logged_losses(tmp_path / "one")
    assert two_losses.keys() == one_losses.keys() == set(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    for step, loss in one_losses.items():  # the same batches, only reduced in another order
        assert two_losses[step] == pytest.approx(loss, rel=1e-5), step


# --------------------------------------------------------------------------- stops agreed by both processes

SIGNAL_STEPS, SIGNAL_EVERY = 12, 2


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """The params_digest of the signal tests' run, trained by two processes without a stop."""
    root = tmp_path_factory.mktemp("uninterrupted")
    procs = launch_pair(root / "w", root, steps=SIGNAL_STEPS, every=SIGNAL_EVERY)
    try:
        (out0, _), (out1, _) = (finish(p, root / f"report{i}.json") for i, p in enumerate(procs))
    finally:
        kill_all(procs)
    assert out0["params_digest"] == out1["params_digest"]
    return out0["params_digest"]


def wait_for_checkpoint(procs, workdir, step: int, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not (workdir / "checkpoints" / str(step) / "MANIFEST.json").exists():
        if any(p.poll() is not None for p in procs):
            kill_all(procs)
            pytest.fail(f"a process ended before checkpoint {step}: {[p.stderr.read()[-2000:] for p in procs]}")
        if time.monotonic() > deadline:
            kill_all(procs)
            pytest.fail(f"no checkpoint {step} after {timeout}s")
        time.sleep(0.05)


def stop_and_resume(tmp_path, uninterrupted: str, signals: list[tuple[int, int, float]], exit_code: int) -> None:
    """Send ``(process, signal, delay before it)`` in turn once checkpoint 2 is sealed; then check and resume."""
    workdir = tmp_path / "w"
    procs = launch_pair(workdir, tmp_path, steps=SIGNAL_STEPS, every=SIGNAL_EVERY, delay=0.4)
    try:
        wait_for_checkpoint(procs, workdir, SIGNAL_EVERY)
        for process, signum, delay in signals:
            time.sleep(delay)
            procs[process].send_signal(signum)
        results = [communicate(p, timeout=400) for p in procs]
    finally:
        kill_all(procs)
    for code, out, err in results:
        assert code == exit_code, err[-3000:]
        assert out == ""  # no JSON result for a stopped run, and no traceback anywhere
        assert "Traceback" not in err
    stopped_at = {int(err.split("interrupted at step ")[1].split(";")[0]) for _, _, err in results}
    assert len(stopped_at) == 1, stopped_at  # both processes stopped after the same step...
    (step,) = stopped_at
    assert SIGNAL_EVERY <= step < SIGNAL_STEPS
    store = StepDirectory(workdir / "checkpoints")
    assert store.latest() == step  # ...and sealed one checkpoint of it, with nothing half-written beside it
    assert not [p.name for p in store.root.iterdir() if not p.name.isdigit()]

    procs = launch_pair(workdir, tmp_path, steps=SIGNAL_STEPS, every=SIGNAL_EVERY)
    try:
        (out0, _), (out1, _) = (finish(p, tmp_path / f"report{i}.json") for i, p in enumerate(procs))
    finally:
        kill_all(procs)
    assert out0["params_digest"] == out1["params_digest"] == uninterrupted  # the same command resumed exactly


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_exactly(tmp_path, uninterrupted):
    stop_and_resume(tmp_path, uninterrupted, [(1, signal.SIGTERM, 0.0)], exit_code=143)


@pytest.mark.slow
def test_ctrl_c_to_both_at_different_moments_stops_both_once(tmp_path, uninterrupted):
    stop_and_resume(tmp_path, uninterrupted, [(0, signal.SIGINT, 0.0), (1, signal.SIGINT, 0.7)], exit_code=130)
