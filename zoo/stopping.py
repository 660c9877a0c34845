"""Stop requests: Ctrl-C and SIGTERM become flags the training loop reads, agreed by every process.

A signal never interrupts the loop where it happens to land. The handler only
records it; the loop reads the record at its sync points (``agree``: one tiny
all-gather of the flags when several processes run), so every process stops
after the same step, saves the same checkpoint and exits with the same code:
130 for Ctrl-C, 143 for SIGTERM (how clusters preempt jobs). A second Ctrl-C
aborts at once without saving, except inside ``protected()`` (a checkpoint being
written), where it waits for the write to finish.

``zoo train`` installs the handlers first thing (``catching()``), before JAX is
imported, so a Ctrl-C during start-up is recorded rather than lost in whatever
library code it lands in. This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from zoo.errors import ZooError

SIGNAL_FLAGS = {signal.SIGINT: 1, signal.SIGTERM: 2}
"""Each stop signal's bit in the flags that processes OR together."""


class Interrupted(ZooError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): every process saved the same step; the same command resumes."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """The stop signals this process received (bit flags) and whether a save is under way."""

    def __init__(self) -> None:
        self.flags = 0
        self.saving = False
        self.depth = 0  # nested catching() blocks; only the outermost installs handlers
        self.previous: dict[int, object] = {}

    def handle(self, signum: int, frame: object) -> None:
        bit = SIGNAL_FLAGS[signum]
        if self.flags & bit and signum == signal.SIGINT and not self.saving:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now, unsaved
        if not self.flags:
            action = "Ctrl-C again to abort without saving" if signum == signal.SIGINT else "then exiting"
            print(f"zoo: stopping after the current step and saving a checkpoint ({action})", file=sys.stderr, flush=True)
        self.flags |= bit

    def exit_code(self, flags: int) -> int:
        """143 if any process got SIGTERM, else 130."""
        return 128 + (signal.SIGTERM if flags & SIGNAL_FLAGS[signal.SIGTERM] else signal.SIGINT)


REQUESTS = StopRequests()


@contextlib.contextmanager
def catching() -> Iterator[StopRequests]:
    """Record SIGINT and SIGTERM in ``REQUESTS`` while the block runs (main thread only; re-entrant).

    The outermost block starts with no request recorded and restores the previous handlers.
    """
    if REQUESTS.depth == 0:
        if threading.current_thread() is not threading.main_thread():  # signals go to the main thread
            yield REQUESTS
            return
        REQUESTS.flags = 0
        REQUESTS.previous = {s: signal.signal(s, REQUESTS.handle) for s in SIGNAL_FLAGS}
    REQUESTS.depth += 1
    try:
        yield REQUESTS
    finally:
        REQUESTS.depth -= 1
        if REQUESTS.depth == 0:
            for s, handler in REQUESTS.previous.items():
                signal.signal(s, handler)


def ignore_from_now_on() -> None:
    """Ignore stop signals for the rest of this process: its exit code is already decided.

    For a process on its way out after an agreed stop. Another process's Ctrl-C (a
    terminal delivers it to each process at its own moment) can land here during the
    exit, in the distributed shutdown; with the default handler back in place it would
    kill the process by SIGINT instead of letting it exit 130 with its checkpoint saved.
    """
    if threading.current_thread() is threading.main_thread():
        for s in SIGNAL_FLAGS:
            signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A block (a checkpoint write) that a second Ctrl-C does not cut short."""
    REQUESTS.saving = True
    try:
        yield
    finally:
        REQUESTS.saving = False


def agree(flags: int) -> int:
    """The OR of every process's ``flags``, the same on all (a collective: all processes must call it).

    One process returns ``flags`` unchanged without touching a device.
    """
    import jax

    if jax.process_count() == 1:
        return flags
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray([flags], np.int32))
    return int(np.bitwise_or.reduce(np.ravel(gathered)))
