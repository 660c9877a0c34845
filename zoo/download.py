"""The zoo's one downloader: streamed, hashed while writing, atomic, offline-aware.

Every URL the zoo fetches (dataset mirrors, remote checkpoints) comes through
:func:`download`, so each honours ``ZOO_OFFLINE`` the same way and never leaves
a partial file behind. (Package-index sources go through pip, which checks the
pinned hash itself; they honour ``ZOO_OFFLINE`` in their own module.)
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from zoo import env
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

CHUNK = 1 << 20  # 1 MiB: large enough to stream fast, small enough to bound memory
SCHEMES = ("https://", "http://", "file://")
TIMEOUT_S = 30


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so big files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, Path]:
    """An open temp file in ``path``'s folder, so ``os.replace`` onto ``path`` is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    # mkstemp creates the file 0600; give the final file the mode open() would have.
    os.chmod(tmp, 0o666 & ~_umask())
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


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, what: str = "") -> Path:
    """Fetch ``url`` (https, http or file) to ``dest`` atomically; return ``dest``.

    The body is hashed while it is written to a temp file beside ``dest``; only a
    complete body whose sha256 matches ``sha256`` (when given) is renamed into
    place, so ``dest`` is never partial. ``what`` names the thing in messages.

    Raises ``OfflineError`` before any attempt when ``ZOO_OFFLINE`` is set,
    ``IntegrityError`` on a hash mismatch and ``ZooError`` on network failure.
    """
    dest = Path(dest)
    what = what or dest.name
    if not url.startswith(SCHEMES):
        raise UsageError(f"cannot download {what} from {url}: only {', '.join(SCHEMES)} URLs are supported")
    if env.offline():
        # file:// counts too: offline means "touch nothing outside", and a
        # uniform rule is easier to reason about than a per-scheme one.
        raise OfflineError(f"ZOO_OFFLINE is set; not downloading {what} from {url} to {dest}")

    fd, tmp = _temp_beside(dest)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            expected_len = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        # A dropped connection can end the body early without an exception.
        if expected_len is not None and received != int(expected_len):
            raise ZooError(f"download of {what} from {url} was cut short: {received} of {expected_len} bytes")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise IntegrityError(f"{what} from {url} has sha256 {actual}, expected {sha256.lower()}")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as error:
        # URLError and timeouts are OSErrors; HTTPException covers e.g. IncompleteRead;
        # ValueError covers a malformed URL or Content-Length.
        tmp.unlink(missing_ok=True)
        raise ZooError(f"could not download {what} from {url}: {_one_line(error)}") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
