"""MNIST-format datasets: four IDX files, each pinned by sha256, in a cache folder.

MNIST and Fashion-MNIST share everything but their pins and their fallback
source: the IDX format, the cache (verified on every load), the upstream
``*.gz`` mirrors, and the fetch that tries each source in turn for the files
still missing. ``IdxFiles`` holds that shared part; a dataset module builds
one from its module constants at call time (its tests monkeypatch them).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tempfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from zoo import env
from zoo.download import atomic_write_bytes, download, sha256_file
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only type these datasets use
MAX_IDX_BYTES = 64 << 20  # the largest file is 47 MB; refuse to inflate past this
IMAGE_SIDE = 28

Source = tuple[str, Callable[[Iterable[str]], None]]
"""A fetch source: its label in messages, and a function caching the verified files it is given the names of."""


# --- the format --------------------------------------------------------------------


def parse_idx(data: bytes | bytearray | memoryview, name: str = "IDX data") -> np.ndarray:
    """Decode an unsigned-byte IDX file into a uint8 array of the dims its header gives.

    Layout: magic ``00 00 08 ndim``, then ``ndim`` big-endian uint32 dims, then the
    bytes. The result is a view on ``data`` (writable only if ``data`` is).
    ``name`` names the file in the ``ZooError`` raised for malformed input.
    """
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0 or view[1] != 0 or view[2] != IDX_UBYTE or view[3] == 0:
        raise ZooError(f"{name}: not an unsigned-byte IDX file (magic {bytes(view[:4]).hex() or 'missing'})")
    ndim = view[3]
    header_len = 4 + 4 * ndim
    if len(view) < header_len:
        raise ZooError(f"{name}: truncated IDX header ({len(view)} bytes, need {header_len})")
    dims = tuple(int(d) for d in np.frombuffer(view, ">u4", count=ndim, offset=4))
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(view) != expected_len:
        raise ZooError(f"{name}: IDX dims {dims} need {expected_len} bytes, file has {len(view)}")
    return np.frombuffer(view, np.uint8, offset=header_len).reshape(dims)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array of any rank >= 1 as an IDX file (big-endian header)."""
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"IDX encoding takes a uint8 array of rank >= 1, got {array.dtype} rank {array.ndim}")
    magic = bytes((0, 0, IDX_UBYTE, array.ndim))
    return magic + np.asarray(array.shape, ">u4").tobytes() + np.ascontiguousarray(array).tobytes()


def inflate(source: io.IOBase | Path, what: str, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Gunzip a file or stream, refusing corrupt input and anything larger than ``max_bytes``."""
    try:
        with gzip.open(source, "rb") as f:
            data = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ZooError(f"{what} is not a valid gzip file: {error}") from None
    if len(data) > max_bytes:
        raise ZooError(f"{what} inflates past {max_bytes} bytes; not an IDX file of this dataset")
    return data


# --- one dataset's files -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdxFiles:
    """One MNIST-format dataset: its pinned IDX files and what each split holds.

    ``title`` names it in messages ("MNIST"), ``name`` in commands (``zoo data fetch mnist``);
    ``sha256`` pins each uncompressed file; ``split_files`` maps a split to its
    (images, labels) files and ``split_sizes`` to its number of examples.
    """

    title: str
    name: str
    sha256: dict[str, str]
    split_files: dict[str, tuple[str, str]]
    split_sizes: dict[str, int]
    num_classes: int = 10

    def check(self, data: bytes | bytearray, file: str, origin: str) -> None:
        """Raise ``IntegrityError`` unless ``data`` is the pinned content of ``file``."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.sha256[file]:
            raise IntegrityError(f"{self.title} {file} from {origin} has sha256 {actual}, expected {self.sha256[file]}")

    def store(self, cache: Path, file: str, data: bytes, origin: str) -> None:
        """Verify one file's bytes against its pin, then write it into ``cache`` atomically."""
        self.check(data, file, origin)
        atomic_write_bytes(cache / file, data)

    def missing(self, cache: Path) -> list[str]:
        """The files absent from ``cache`` or failing their pin."""
        return [f for f in self.sha256 if not (cache / f).is_file() or sha256_file(cache / f) != self.sha256[f]]

    def present(self, cache: Path) -> bool:
        """Whether every file is in ``cache`` (a cheap check: no hashing; ``load`` verifies)."""
        return all((cache / f).is_file() for f in self.sha256)

    def read_verified(self, path: Path) -> bytearray:
        """A cached file's bytes after checking its pin (a bytearray, so parsed arrays are writable)."""
        if not path.is_file():
            raise ZooError(f"{self.title} file {path} is missing; run `zoo data fetch {self.name}`")
        data = bytearray(path.read_bytes())
        try:
            self.check(data, path.name, str(path))
        except IntegrityError as error:
            raise IntegrityError(f"{error}; run `zoo data fetch {self.name}` to replace it") from None
        return data

    def load(self, cache: Path, split: str) -> dict[str, np.ndarray]:
        """Verified arrays of one split: ``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}``."""
        if split not in self.split_files:
            raise UsageError(f"unknown {self.name} split {split!r}; valid: {', '.join(self.split_files)}")
        images_file, labels_file = self.split_files[split]
        images = parse_idx(self.read_verified(cache / images_file), str(cache / images_file))
        labels = parse_idx(self.read_verified(cache / labels_file), str(cache / labels_file))
        # The hash already pins the content; these checks guard the pins and the parser.
        n = self.split_sizes[split]
        if images.shape != (n, IMAGE_SIDE, IMAGE_SIDE) or labels.shape != (n,):
            raise ZooError(f"{self.title} {split}: images {images.shape} and labels {labels.shape}, expected {n} of 28x28")
        if labels.max(initial=0) >= self.num_classes:
            raise ZooError(f"{self.title} {split}: label {labels.max()} is outside 0..{self.num_classes - 1}")
        return {"image": images[..., None], "label": labels.astype(np.int32)}

    def from_mirror(self, base: str, cache: Path, files: Iterable[str]) -> None:
        """Download ``<base>/<file>.gz`` for each file, verify its inflated bytes, cache it."""
        base = base.rstrip("/") + "/"
        with tempfile.TemporaryDirectory(prefix=f"zoo-{self.name}-") as tmp:
            for file in files:
                url = base + file + ".gz"
                gz = download(url, Path(tmp) / f"{file}.gz", what=f"{self.title} {file}.gz")
                self.store(cache, file, inflate(gz, f"{file}.gz"), url)

    def mirror_sources(self, cache: Path, mirrors: Sequence[str]) -> list[Source]:
        return [(f"mirror {base}", lambda files, base=base: self.from_mirror(base, cache, files)) for base in mirrors]

    def fetch(self, cache: Path, sources: Sequence[Source]) -> Path:
        """Make ``cache`` hold every verified file; return it.

        Files already present and matching their pins are kept. Otherwise each source
        is tried in order for the files still missing, so a source that fails halfway
        still contributes what it verified. Raises ``OfflineError`` if anything is
        missing under ``ZOO_OFFLINE``, and one ``ZooError`` listing every source's
        failure if none completes the cache.
        """
        missing = self.missing(cache)
        if not missing:
            return cache
        if env.offline():
            where = ", ".join(label for label, _ in sources) or "no source"
            raise OfflineError(
                f"ZOO_OFFLINE is set; {self.title} needs {', '.join(missing)} from: {where}; "
                f"run `zoo data fetch {self.name}` with network access first"
            )
        cache.mkdir(parents=True, exist_ok=True)
        failures = []
        for label, source in sources:
            try:
                source(missing)
            except ZooError as error:
                failures.append(f"{label}: {error}")
            missing = self.missing(cache)
            if not missing:
                return cache
        raise ZooError(f"could not fetch {self.name} into {cache}; " + ("; ".join(failures) or "no sources configured"))

    def synthetic(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` random images and labels with the real data's keys, shapes and dtypes."""
        rng = np.random.default_rng(seed)
        return {
            "image": rng.integers(0, 256, (n, IMAGE_SIDE, IMAGE_SIDE, 1), dtype=np.uint8),
            "label": rng.integers(0, self.num_classes, n).astype(np.int32),
        }
