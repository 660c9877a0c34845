"""Several processes, one program: ``jax.distributed`` set up before anything touches a device.

Each process runs the same ``zoo train`` command with its own ``--process-id``;
after ``initialize`` every process sees every device, the mesh spans them all, and
each feeds its own slice of the global batch (``zoo.data.loader``).
"""

from __future__ import annotations

import os

from zoo.errors import UsageError, ZooError


def _launched_as_several_processes() -> bool:
    """Whether a cluster launcher started this as one of several processes (which
    ``jax.distributed.initialize()`` then configures from the same variables).

    Being inside a SLURM allocation is not enough: a plain ``zoo train`` in an
    interactive job is one process, and initialising would fail for want of peers.
    """
    env = os.environ

    def count(name: str) -> int:
        value = env.get(name, "")
        return int(value) if value.isdigit() else 0

    return (
        (count("SLURM_NTASKS") > 1 and "SLURM_STEP_NODELIST" in env)  # an srun step of several tasks
        or count("OMPI_COMM_WORLD_SIZE") > 1  # mpirun
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice
        or "JAX_COORDINATOR_ADDRESS" in env  # configured by hand through JAX's own variables
    )


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process run, from explicit flags or the cluster's environment; else nothing.

    On CPU the collectives go through gloo (XLA has no other CPU implementation
    for cross-process communication).
    """
    explicit = (coordinator, num_processes, process_id)
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise UsageError("--coordinator, --num-processes and --process-id go together")
    if coordinator is None and not _launched_as_several_processes():
        return
    if coordinator is not None and process_id >= num_processes:
        raise UsageError(f"--process-id {process_id} must be below --num-processes {num_processes}")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service takes SIGTERM over at the C level, out of Python's sight: with it on,
    # a SIGTERM to one process was swallowed and the run went on to the end. zoo.stopping records
    # SIGTERM itself and every process agrees on the step to stop at (DESIGN: shared loop).
    jax.config.update("jax_enable_preemption_service", False)
    _native_stdout_to_stderr()
    try:
        if coordinator is None:
            jax.distributed.initialize()  # the cluster environment says everything
        else:
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError) as e:  # no coordinator, a refused port, a timeout
        raise ZooError(f"joining the multi-process run failed: {' '.join(str(e).split())}") from e


def _native_stdout_to_stderr() -> None:
    """Send what native code prints on file descriptor 1 to stderr; keep ``sys.stdout`` on the real stdout.

    Gloo prints "[Gloo] Rank 0 is connected to 3 peer ranks..." with std::cout
    whenever it sets up a communicator (lazily, at the first collectives of a
    program), with no switch to turn it off. That broke ``zoo train --json``,
    whose stdout must hold exactly one JSON document. Python's own output
    (click, print) still goes to the original stdout.
    """
    import io
    import sys

    try:
        sys.stdout.flush()
        real_stdout = os.dup(1)
        os.dup2(2, 1)
    except (OSError, AttributeError, ValueError):  # no real descriptors (embedded, captured): leave as is
        return
    previous = sys.stdout
    sys.stdout = io.TextIOWrapper(
        io.FileIO(real_stdout, "w"),
        encoding=getattr(previous, "encoding", None) or "utf-8",
        errors=getattr(previous, "errors", None) or "strict",
        line_buffering=True,
    )
