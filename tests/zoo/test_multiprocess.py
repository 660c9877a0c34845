"""Several processes, one run (jax.distributed over gloo on CPU), through the real ``zoo train`` CLI.

Two processes with 2 CPU devices each join with ``--coordinator 127.0.0.1:PORT
--num-processes 2 --process-id I`` and train the dense VAE on a 4-device mesh
whose parameters are split across both processes (``fsdp=4``); one process with
4 devices trains the same run. They must agree, and only process 0 may write the
run's files. A driver swaps MNIST for synthetic images (offline) and records
which process opens which of the run's files for writing.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys

import pytest
from fixtures_checkpoints import subprocess_env

from zoo.checkpoint import StepDirectory

N, STEPS, BATCH, EVERY, LOG_EVERY, MESH = 128, 6, 16, 3, 2, "fsdp=4"

DRIVER = """
import builtins, io, json, os, sys
import zoo.data
data = zoo.data.synthetic("mnist", {n})
zoo.data.load = lambda name, split="train": data  # offline: synthetic images in place of MNIST

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


def command(workdir, *extra: str) -> list[str]:
    return [
        sys.executable, "-c", DRIVER, "train", "vae", "--steps", str(STEPS), "--batch-size", str(BATCH),
        "--checkpoint-every", str(EVERY), "--set", f"train.log_every={LOG_EVERY}", "--mesh", MESH,
        "--workdir", str(workdir), "--json", "--quiet", *extra,
    ]


def launch(workdir, report, devices: int, *extra: str) -> subprocess.Popen:
    env = subprocess_env(devices=devices, ZOO_TEST_WORKDIR=workdir, ZOO_TEST_REPORT=report)
    return subprocess.Popen(command(workdir, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, report) -> tuple[dict, dict]:
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out), json.loads(report.read_text())


@pytest.mark.slow
def test_two_processes_match_one_and_only_process_0_writes(tmp_path):
    port = free_port()
    shared = tmp_path / "two"
    procs = [
        launch(shared, tmp_path / f"report{i}.json", 2, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i))
        for i in range(2)
    ]
    single = launch(tmp_path / "one", tmp_path / "report-one.json", 4)
    try:
        (out0, facts0), (out1, facts1) = (finish(p, tmp_path / f"report{i}.json") for i, p in enumerate(procs))
        one, facts_one = finish(single, tmp_path / "report-one.json")
    finally:  # a failed process leaves its peer waiting on the coordinator
        for proc in (*procs, single):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

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
