"""When ``zoo train`` joins a multi-process run on its own: only when a launcher started several processes."""

from __future__ import annotations

import pytest

from zoo import distributed
from zoo.errors import UsageError

CLUSTER = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NODELIST", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS")


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    for name in CLUSTER:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    "env,several",
    [
        ({}, False),
        ({"SLURM_JOB_ID": "7"}, False),  # an interactive allocation: one process
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "1"}, False),
        ({"OMPI_COMM_WORLD_SIZE": "8"}, True),
        ({"TPU_WORKER_HOSTNAMES": "t0"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ],
)
def test_launcher_detection(monkeypatch, env, several):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed._launched_as_several_processes() is several


def test_one_process_does_nothing(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    distributed.initialize(None, None, None)
    assert calls == []  # an interactive allocation is one process: jax.distributed is left alone


def test_several_processes_join_with_the_preemption_service_off(monkeypatch):
    """JAX's preemption service takes SIGTERM at the C level; zoo.stopping must see it instead."""
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(distributed, "_native_stdout_to_stderr", lambda: None)
    names = ("jax_enable_preemption_service", "jax_cpu_collectives_implementation")
    previous = {name: getattr(jax.config, name) for name in names}
    try:
        distributed.initialize("127.0.0.1:1234", 2, 1)
        assert calls == [{"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}]
        assert jax.config.jax_enable_preemption_service is False
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)


@pytest.mark.parametrize(
    "args,needle",
    [
        (("127.0.0.1:1", None, 0), "go together"),
        ((None, 2, None), "go together"),
        (("127.0.0.1:1", 2, 2), "--process-id 2 must be below --num-processes 2"),
    ],
)
def test_flag_errors(args, needle):
    with pytest.raises(UsageError, match=needle):
        distributed.initialize(*args)
