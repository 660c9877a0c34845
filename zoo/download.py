"""The zoo's one downloader: streamed, hashed while writing, atomic, offline-aware.

Every URL the zoo fetches (dataset mirrors, remote checkpoints) comes through
:func:`download`, so each honours ``ZOO_OFFLINE`` the same way and never leaves
a partial file behind. (Package-index sources go through pip, which checks the
pinned hash itself; they honour ``ZOO_OFFLINE`` in their own module.)

Every download is bounded: by the size a catalogue states, else by
``ZOO_MAX_DOWNLOAD`` (default 4 GiB); by ``ZOO_DOWNLOAD_DEADLINE`` seconds for the
whole transfer (default 2 h) and ``TIMEOUT_S`` per read. A redirect from https to
plain http is refused. Progress goes to stderr: a bar on a terminal, two plain
lines otherwise.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from zoo import env
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError
from zoo.memory import human_bytes

CHUNK = 1 << 20  # 1 MiB: large enough to stream fast, small enough to bound memory
SCHEMES = ("https://", "http://", "file://")
TIMEOUT_S = 30
"""Seconds one read may wait for bytes (a stalled server)."""
DEFAULT_LIMIT = 4 << 30
"""Bytes one download may bring without a stated size: 4 GiB, a generous bound on an endless body."""
DEFAULT_DEADLINE_S = 2 * 3600.0
"""Seconds one whole download may take: 4 GiB at 1 MB/s, with room; a trickling server ends here."""
STALE_AFTER_S = 24 * 3600.0
"""Temporaries of another host older than this are reclaimed: no fetch runs that long."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so big files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def current_umask() -> int:
    """The process umask (the mode bits new files and folders lose)."""
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, Path]:
    """An open temp file in ``path``'s folder, so ``os.replace`` onto ``path`` is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    # mkstemp creates the file 0600; give the final file the mode open() would have.
    os.chmod(tmp, 0o666 & ~current_umask())
    return fd, Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    try:
        fd, tmp = _temp_beside(path)
    except OSError as e:  # name the file the caller asked for, not our temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _one_line(error: BaseException) -> str:
    """A short, single-line reason for a network or file error."""
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        reason = str(error.reason)
    else:
        reason = str(error) or type(error).__name__
    return " ".join(reason.split())


# --------------------------------------------------------------------------- bounds


def _positive(text: str) -> float:
    """``text`` as a finite number above zero; ValueError otherwise."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _parse_bytes(text: str) -> int:
    """``"4G"`` -> 4 GiB; ``"500M"``, ``"1048576"`` (binary units, case-insensitive)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if text and text[-1] in _UNITS:
        scale, text = 1 << _UNITS[text[-1]], text[:-1]
    return int(_positive(text) * scale)


_UNITS = {"K": 10, "M": 20, "G": 30, "T": 40}


def _setting(name: str, default: Any, parse: Callable[[str], Any], expected: str) -> Any:
    """``parse`` of the environment variable ``name``, ``default`` if unset; UsageError saying ``expected`` if unparsable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} {expected}") from None


def size_limit() -> int:
    """The most bytes one download may bring (``ZOO_MAX_DOWNLOAD``, default 4 GiB)."""
    return _setting("ZOO_MAX_DOWNLOAD", DEFAULT_LIMIT, _parse_bytes, "is not a size (e.g. 8G, 500M, 1048576)")


def deadline_s() -> float:
    """The most seconds one whole download may take (``ZOO_DOWNLOAD_DEADLINE``, default 2 h)."""
    return _setting("ZOO_DOWNLOAD_DEADLINE", DEFAULT_DEADLINE_S, _positive, "must be a positive number of seconds")


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follow redirects, except from https to anything that is not https."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if req.full_url.startswith("https://") and not newurl.startswith("https://"):
            raise ZooError(f"refusing to follow a redirect from {req.full_url} to {newurl}: it leaves https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_open = urllib.request.build_opener(_NoDowngrade()).open
"""``_open(url, timeout=...)``: urlopen with https downgrades refused (tests replace it)."""


# --------------------------------------------------------------------------- progress


class _Progress:
    """A progress bar on a terminal (redrawn at most 10 times a second); plain lines otherwise."""

    def __init__(self, what: str, url: str, total: int | None, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.what, self.total, self.done, self.drawn = what, total, 0, 0.0
        size = f" ({human_bytes(total)})" if total else ""
        if not self.tty:
            print(f"downloading {what}{size} from {url}", file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.drawn >= 0.1:
            self.drawn = now
            self._draw()

    def _draw(self) -> None:
        if self.total:
            filled = int(30 * min(self.done / self.total, 1.0))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {human_bytes(self.done)} of {human_bytes(self.total)}"
        else:
            bar = human_bytes(self.done)
        print(f"\r{self.what}: {bar}", end="", file=self.stream, flush=True)

    def finish(self, ok: bool) -> None:
        if self.tty:
            self._draw()
            print(file=self.stream, flush=True)
        elif ok:
            print(f"downloaded {self.what}: {human_bytes(self.done)}", file=self.stream, flush=True)


# --------------------------------------------------------------------------- the downloader


def _expected_length(response: Any, url: str, what: str, limit: int, size: int | None) -> int | None:
    """The announced body length, refused at once when it breaks ``limit`` or the stated ``size``."""
    announced = response.headers.get("Content-Length")
    if announced is None:
        return None
    length = int(announced)  # ValueError: a malformed header, reported as such by the caller
    if size is not None and length != size:
        raise IntegrityError(f"{what} from {url} is {length} bytes, but its catalogue entry says {size}")
    if length > limit:
        raise ZooError(f"{what} from {url} is {human_bytes(length)}, over the {human_bytes(limit)} limit (ZOO_MAX_DOWNLOAD)")
    return length


def _stream(response: Any, out: IO[bytes], digest: Any, url: str, what: str, limit: int, progress: _Progress) -> int:
    """Copy the body to ``out`` until it ends, refusing once it passes ``limit`` bytes or the deadline."""
    read = getattr(response, "read1", response.read)  # read1: one recv at most, so the deadline is checked often
    deadline = time.monotonic() + deadline_s()
    received = 0
    while chunk := read(CHUNK):
        received += len(chunk)
        if received > limit:
            raise ZooError(f"{what} from {url} is larger than the {human_bytes(limit)} limit; stopped there")
        if time.monotonic() > deadline:
            raise ZooError(f"{what} from {url} took longer than {deadline_s():g} s (ZOO_DOWNLOAD_DEADLINE); stopped")
        digest.update(chunk)
        out.write(chunk)
        progress.advance(len(chunk))
    return received


def download(
    url: str, dest: str | os.PathLike, *, sha256: str | None = None, what: str = "", size: int | None = None
) -> Path:
    """Fetch ``url`` (https, http or file) to ``dest`` atomically; return ``dest``.

    The body is hashed while it is written to a temp file beside ``dest``; only a
    complete body whose sha256 matches ``sha256`` (when given) is renamed into
    place, so ``dest`` is never partial. ``what`` names the thing in messages.
    ``size`` (bytes, when a catalogue states it) must be the body's exact length;
    without it, a body may not exceed ``size_limit()``. The whole transfer must
    finish within ``deadline_s()``, each read within ``TIMEOUT_S``; a redirect
    from https to http is refused.

    Raises ``OfflineError`` before any attempt when ``ZOO_OFFLINE`` is set,
    ``IntegrityError`` on a hash or size mismatch and ``ZooError`` on network failure.
    """
    dest = Path(dest)
    what = what or dest.name
    if not url.startswith(SCHEMES):
        raise UsageError(f"cannot download {what} from {url}: only {', '.join(SCHEMES)} URLs are supported")
    if env.offline():
        # file:// counts too: offline means "touch nothing outside", and a
        # uniform rule is easier to reason about than a per-scheme one.
        raise OfflineError(f"ZOO_OFFLINE is set; not downloading {what} from {url} to {dest}")
    limit = size if size is not None else size_limit()
    deadline_s()  # a malformed setting fails before any byte moves

    fd, tmp = _temp_beside(dest)
    digest = hashlib.sha256()
    progress, done = None, False
    try:
        with os.fdopen(fd, "wb") as out, _open(url, timeout=TIMEOUT_S) as response:
            expected_len = _expected_length(response, url, what, limit, size)
            progress = _Progress(what, url, expected_len or size)
            received = _stream(response, out, digest, url, what, limit, progress)
        # A dropped connection can end the body early without an exception.
        if expected_len is not None and received != expected_len:
            raise ZooError(f"download of {what} from {url} was cut short: {received} of {expected_len} bytes")
        if size is not None and received != size:
            raise IntegrityError(f"{what} from {url} is {received} bytes, but its catalogue entry says {size}")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise IntegrityError(f"{what} from {url} has sha256 {actual}, expected {sha256.lower()}")
        os.replace(tmp, dest)
        done = True
    except (OSError, http.client.HTTPException, ValueError) as error:
        # URLError and timeouts are OSErrors; HTTPException covers e.g. IncompleteRead;
        # ValueError covers a malformed URL or Content-Length.
        tmp.unlink(missing_ok=True)
        raise ZooError(f"could not download {what} from {url}: {_one_line(error)}") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if progress is not None:
            progress.finish(ok=done)
    return dest


# --------------------------------------------------------------------------- stale temporaries


def owned_temp_prefix(base: str) -> str:
    """A temp-name prefix recording this process, so a later run can tell a dead one's leftovers."""
    return f"{base}-{os.getpid()}@{socket.gethostname()}~"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def reclaim_stale(folder: Path, base: str, *, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete temporaries named by ``owned_temp_prefix(base)`` whose process is gone (or that are old).

    A fetch killed midway (SIGKILL, a power cut) cannot clean up after itself;
    the next fetch into the same cache does. A live process's temporaries are kept;
    on another host (a shared cache) only age tells, so those older than
    ``max_age_s`` go.
    """
    pattern = re.compile(rf"^{re.escape(base)}-(\d+)@([^~/]*)~")
    host, removed = socket.gethostname(), []
    for child in folder.iterdir() if folder.is_dir() else ():
        match = pattern.match(child.name)
        if not match:
            continue
        try:
            age = time.time() - child.lstat().st_mtime
        except FileNotFoundError:  # its owner just finished
            continue
        dead = match.group(2) == host and not _alive(int(match.group(1)))
        if dead or age > max_age_s:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed
