"""Fashion-MNIST: 60k train / 10k test 28x28 greyscale clothes in 10 classes (Xiao et al., 2017).

The cache holds the four uncompressed IDX files under ``$ZOO_HOME/data/fashion-mnist``,
each pinned by sha256 and re-verified on every load. They come from the first
source that works, in order:

1. the upstream ``*.gz`` files on each of ``MIRRORS`` (for machines with web access);
2. Debian's package ``dataset-fashion-mnist`` (pinned version and sha256), fetched
   with ``apt-get download`` and unpacked with ``dpkg-deb`` in a temporary folder;
   nothing is installed. Its ``.gz`` files are re-compressed, so only the inflated
   IDX bytes are compared with the pins (they match upstream's).

Tests monkeypatch ``IDX_SHA256``, ``SPLIT_SIZES`` and ``DEB_SHA256``; every function
reads them at call time for that reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from zoo import env
from zoo.data import cache_dir as dataset_cache_dir
from zoo.data.mnist import parse_idx
from zoo.download import atomic_write_bytes, download, sha256_file
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

NAME = "fashion-mnist"

# sha256 of the uncompressed IDX files (upstream's and Debian's inflate to these bytes).
IDX_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Base URLs serving upstream's `<name>.gz` files, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

DEB_PACKAGE = "dataset-fashion-mnist"
DEB_VERSION = "0.0~git20200523.55506a9-1"
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
DEB_FOLDER = "usr/share/datasets/fashion-mnist/"
APT_TIMEOUT_S = 900
MAX_IDX_BYTES = 64 << 20  # the largest file is 47 MB; refuse to inflate past this


def default_cache_dir() -> Path:
    return dataset_cache_dir(NAME)


# --- the cache -----------------------------------------------------------------


def _check_sha256(data: bytes | bytearray, name: str, origin: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != IDX_SHA256[name]:
        raise IntegrityError(f"Fashion-MNIST {name} from {origin} has sha256 {actual}, expected {IDX_SHA256[name]}")


def _store(cache: Path, name: str, data: bytes, origin: str) -> None:
    """Verify one IDX file against its pin, then write it into the cache atomically."""
    _check_sha256(data, name, origin)
    atomic_write_bytes(cache / name, data)


def _missing(cache: Path) -> list[str]:
    return [n for n in IDX_SHA256 if not (cache / n).is_file() or sha256_file(cache / n) != IDX_SHA256[n]]


def is_cached() -> bool:
    """Whether all four files are present (no hashing: ``load`` verifies)."""
    return all((default_cache_dir() / n).is_file() for n in IDX_SHA256)


def _read_verified(path: Path) -> bytearray:
    if not path.is_file():
        raise ZooError(f"Fashion-MNIST file {path} is missing; run `zoo data fetch {NAME}`")
    data = bytearray(path.read_bytes())  # a bytearray, so the parsed arrays are writable
    try:
        _check_sha256(data, path.name, str(path))
    except IntegrityError as error:
        raise IntegrityError(f"{error}; run `zoo data fetch {NAME}` to replace it") from None
    return data


def load(split: str, cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Verified arrays of one split: ``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}``."""
    if split not in SPLIT_FILES:
        raise UsageError(f"unknown {NAME} split {split!r}; valid: {', '.join(SPLIT_FILES)}")
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    images_name, labels_name = SPLIT_FILES[split]
    images = parse_idx(_read_verified(cache / images_name), str(cache / images_name))
    labels = parse_idx(_read_verified(cache / labels_name), str(cache / labels_name))
    n = SPLIT_SIZES[split]
    if images.shape != (n, 28, 28) or labels.shape != (n,) or labels.max(initial=0) >= len(CLASSES):
        raise ZooError(f"{NAME} {split}: images {images.shape}, labels {labels.shape}; expected {n} of 28x28, labels 0..9")
    return {"image": images[..., None], "label": labels.astype(np.int32)}


def _inflate(stream: io.IOBase | Path, what: str) -> bytes:
    """Gunzip a file or stream, refusing corrupt input and anything larger than a Fashion-MNIST file."""
    try:
        with gzip.open(stream, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ZooError(f"{what} is not a valid gzip file: {error}") from None
    if len(data) > MAX_IDX_BYTES:
        raise ZooError(f"{what} inflates past {MAX_IDX_BYTES} bytes; not a Fashion-MNIST file")
    return data


# --- source 1: upstream .gz files ------------------------------------------------


def _from_mirror(base: str, cache: Path, names: Iterable[str]) -> None:
    base = base.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="zoo-fashion-") as tmp:
        for name in names:
            url = base + name + ".gz"
            gz = download(url, Path(tmp) / f"{name}.gz", what=f"{NAME} {name}.gz")
            _store(cache, name, _inflate(gz, f"{name}.gz"), url)


# --- source 2: Debian's package ------------------------------------------------------


def _run(command: list[str], cwd: Path, what: str) -> bytes:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, timeout=APT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ZooError(f"{what} failed: {error}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise ZooError(f"{what} failed: {lines[-1] if lines else f'exit code {result.returncode}'}")
    return result.stdout


def _apt_download(folder: Path) -> Path:
    """``apt-get download`` the pinned package version into ``folder``; return the .deb."""
    _run(["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"], folder, f"apt-get download {DEB_PACKAGE}")
    debs = sorted(folder.glob("*.deb"))
    if len(debs) != 1:
        raise ZooError(f"apt-get download {DEB_PACKAGE} left {len(debs)} .deb files, expected 1")
    return debs[0]


def idx_files_from_deb(deb: Path) -> dict[str, bytes]:
    """The inflated IDX files (bytes by name) inside the package's data archive, via ``dpkg-deb``."""
    archive = _run(["dpkg-deb", "--fsys-tarfile", str(deb)], deb.parent, f"dpkg-deb on {deb.name}")
    files = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                path = member.name.removeprefix("./")
                name = path.removeprefix(DEB_FOLDER).removesuffix(".gz")
                if path.startswith(DEB_FOLDER) and name in IDX_SHA256 and member.isfile():
                    files[name] = _inflate(tar.extractfile(member), path)
    except tarfile.TarError as error:
        raise ZooError(f"{deb.name}: unreadable data archive: {error}") from None
    if missing := sorted(set(IDX_SHA256) - set(files)):
        raise ZooError(f"{deb.name} lacks {', '.join(missing)} under {DEB_FOLDER}")
    return files


def _from_debian(cache: Path, names: Iterable[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="zoo-fashion-") as tmp:
        deb = _apt_download(Path(tmp))
        actual = sha256_file(deb)
        if actual != DEB_SHA256:  # checked before dpkg-deb parses a single byte of it
            raise IntegrityError(f"{deb.name} has sha256 {actual}, expected {DEB_SHA256}")
        files = idx_files_from_deb(deb)
        for name in names:
            _store(cache, name, files[name], f"{deb.name} (inflated)")


# --- fetch -----------------------------------------------------------------------------


def fetch(cache_dir: Path | None = None, *, mirrors: Sequence[str] = MIRRORS, debian: bool = True) -> Path:
    """Make the cache hold all four verified IDX files; return the cache folder.

    Files already present and matching their pins are kept; each source is tried in
    turn for the files still missing. ``OfflineError`` under ``ZOO_OFFLINE`` if
    anything is missing; one ``ZooError`` listing every source's failure if none
    completes the cache.
    """
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    missing = _missing(cache)
    if not missing:
        return cache
    sources = [(f"mirror {base}", partial(_from_mirror, base, cache)) for base in mirrors]
    if debian:
        sources.append((f"Debian package {DEB_PACKAGE} {DEB_VERSION}", partial(_from_debian, cache)))
    if env.offline():
        raise OfflineError(
            f"ZOO_OFFLINE is set; {NAME} needs {', '.join(missing)}; run `zoo data fetch {NAME}` with network access first"
        )
    cache.mkdir(parents=True, exist_ok=True)
    failures = []
    for label, source in sources:
        try:
            source(missing)
        except ZooError as error:
            failures.append(f"{label}: {error}")
        missing = _missing(cache)
        if not missing:
            return cache
    raise ZooError(f"could not fetch {NAME} into {cache}; " + ("; ".join(failures) or "no sources configured"))


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random images and labels with the real data's keys, shapes and dtypes."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
        "label": rng.integers(0, len(CLASSES), n).astype(np.int32),
    }
