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

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from zoo.data import cache_dir as dataset_cache_dir
from zoo.data import idx
from zoo.download import sha256_file
from zoo.errors import IntegrityError, ZooError

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


def default_cache_dir() -> Path:
    return dataset_cache_dir(NAME)


def _files() -> idx.IdxFiles:
    """The pinned files, built from the module constants at call time (tests monkeypatch them)."""
    return idx.IdxFiles("Fashion-MNIST", NAME, IDX_SHA256, SPLIT_FILES, SPLIT_SIZES, len(CLASSES))


def is_cached() -> bool:
    """Whether all four files are present (no hashing: ``load`` verifies)."""
    return _files().present(default_cache_dir())


def load(split: str, cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Verified arrays of one split: ``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}``."""
    return _files().load(default_cache_dir() if cache_dir is None else Path(cache_dir), split)


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
                    files[name] = idx.inflate(tar.extractfile(member), path)
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
            _files().store(cache, name, files[name], f"{deb.name} (inflated)")


# --- fetch -----------------------------------------------------------------------------


def fetch(cache_dir: Path | None = None, *, mirrors: Sequence[str] = MIRRORS, debian: bool = True) -> Path:
    """Make the cache hold all four verified IDX files; return the cache folder.

    Sources, tried in order for the files still missing: the mirrors, then Debian's
    package. See ``IdxFiles.fetch`` for what is kept and what is raised.
    """
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    files = _files()
    sources = files.mirror_sources(cache, mirrors)
    if debian:
        sources.append((f"Debian package {DEB_PACKAGE} {DEB_VERSION}", partial(_from_debian, cache)))
    return files.fetch(cache, sources)


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random images and labels with the real data's keys, shapes and dtypes."""
    return _files().synthetic(n, seed)
