"""Errors a user can cause, each with the exit code the CLI returns for it.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``;
anything that is not a ``ZooError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """A failure the user can act on: bad data, a corrupt checkpoint, a failed run."""

    exit_code = 1


class UsageError(ZooError):
    """The command or call itself is wrong: bad option, bad value, unknown name."""

    exit_code = 2


class UnknownName(UsageError, LookupError):
    """A name that names nothing; the message offers the closest known names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(set(known))
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        message = f"unknown {kind} {name!r}"
        if close:
            message += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif known:
            message += f"; known: {', '.join(known[:20])}" + (" ..." if len(known) > 20 else "")
        super().__init__(message)
        self.name = name


class IntegrityError(ZooError):
    """Bytes on disk or over the wire do not match their pinned sha256."""


class OfflineError(ZooError):
    """``ZOO_OFFLINE=1`` forbids the download that would be needed."""
