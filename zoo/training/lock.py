"""One trainer per workdir: an exclusive ``flock`` on ``WORKDIR/.lock`` for the whole run.

Two ``zoo train`` into one workdir used to race on Orbax's temporary folders (tracebacks,
a hang, pruned checkpoints). The lock file holds the holder's pid and host for the
message the second trainer gets. ``flock`` belongs to the open file, so the kernel
drops it when the holder exits in any way (SIGKILL included): a lock left by a dead
process is never in force, whatever the file still says. With several processes,
process 0 locks for the run and all agree on the outcome.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from zoo import stopping
from zoo.errors import ZooError

LOCK_FILE = ".lock"


class WorkdirBusy(ZooError):
    """Another process is training in this workdir."""


def _acquire(workdir: Path) -> int:
    """An open descriptor holding the lock; WorkdirBusy naming the holder if another has it."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
        os.close(fd)
        raise WorkdirBusy(f"{workdir} is in use by another zoo train ({holder}); wait for it to finish or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold the workdir's lock while the block runs (process 0 takes it; every process learns the outcome)."""
    import jax

    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = _acquire(Path(workdir))
        except (WorkdirBusy, OSError) as e:
            error = e
    if stopping.agree(1 if error is not None else 0):  # a collective: the others must not run on alone
        if fd is not None:
            os.close(fd)
        raise error if error is not None else WorkdirBusy(f"process 0 could not lock {workdir}")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing drops the flock; the file stays, harmlessly
