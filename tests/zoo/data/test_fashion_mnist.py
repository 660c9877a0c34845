"""Fashion-MNIST: load, the two sources (mirrors, Debian's package) and their failures, on tiny IDX files built here.

The pins are monkeypatched to the hashes of the tiny files; nothing touches the network.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import zoo.data
from zoo.data import fashion_mnist as fm
from zoo.data import idx
from zoo.data.idx import idx_bytes
from zoo.errors import IntegrityError, OfflineError, ZooError

N = {"train": 6, "test": 4}


@pytest.fixture
def tiny(monkeypatch, tmp_path) -> dict[str, bytes]:
    """Four tiny IDX files, pinned, and the cache pointed into tmp_path."""
    rng = np.random.default_rng(0)
    files = {}
    for split, (images, labels) in fm.SPLIT_FILES.items():
        files[images] = idx_bytes(rng.integers(0, 256, (N[split], 28, 28), dtype=np.uint8))
        files[labels] = idx_bytes(rng.integers(0, 10, N[split]).astype(np.uint8))
    monkeypatch.setattr(fm, "IDX_SHA256", {name: hashlib.sha256(data).hexdigest() for name, data in files.items()})
    monkeypatch.setattr(fm, "SPLIT_SIZES", N)
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    return files


def serve_mirror(folder: Path, files: dict[str, bytes]) -> str:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    return folder.as_uri() + "/"


def test_fetch_from_a_mirror_then_load(tiny, tmp_path):
    mirror = serve_mirror(tmp_path / "mirror", tiny)
    cache = fm.fetch(mirrors=(mirror,), debian=False)
    assert cache == zoo.data.cache_dir("fashion-mnist")
    train = fm.load("train")
    assert train["image"].shape == (6, 28, 28, 1) and train["image"].dtype == np.uint8
    assert train["label"].dtype == np.int32
    expected = np.frombuffer(tiny["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(6, 28, 28, 1)
    np.testing.assert_array_equal(train["image"], expected)


def test_a_mirror_serving_other_bytes_is_refused_and_the_next_source_used(tiny, tmp_path):
    bad = {name: data[:-1] + bytes([data[-1] ^ 1]) for name, data in tiny.items()}
    good = serve_mirror(tmp_path / "good", tiny)
    fm.fetch(mirrors=(serve_mirror(tmp_path / "bad", bad), good), debian=False)
    assert fm.load("test")["label"].shape == (4,)


def test_every_source_failing_is_one_error_naming_each(tiny, tmp_path):
    bad = {name: data[:-1] + bytes([data[-1] ^ 1]) for name, data in tiny.items()}
    with pytest.raises(ZooError, match="could not fetch fashion-mnist") as error:
        fm.fetch(mirrors=(serve_mirror(tmp_path / "bad", bad),), debian=False)
    assert "has sha256" in str(error.value)
    assert not list(zoo.data.cache_dir("fashion-mnist").iterdir())  # nothing unverified was cached


def test_a_corrupted_cache_is_caught_on_load(tiny, tmp_path):
    fm.fetch(mirrors=(serve_mirror(tmp_path / "mirror", tiny),), debian=False)
    path = zoo.data.cache_dir("fashion-mnist") / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1] + b"\x09")
    with pytest.raises(IntegrityError, match="zoo data fetch fashion-mnist"):
        fm.load("test")


def test_offline_refuses_before_any_attempt(tiny, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="ZOO_OFFLINE"):
        fm.fetch()


def fake_deb(folder: Path, files: dict[str, bytes]) -> Path:
    """A real .deb (built by dpkg-deb) holding the files where Debian's package puts them."""
    root = folder / "pkg"
    data = root / fm.DEB_FOLDER
    data.mkdir(parents=True)
    for name, content in files.items():
        (data / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\nMaintainer: test <t@example.org>\nDescription: test\n"
    )
    deb = folder / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (Debian tools)")


@needs_dpkg
def test_debian_package_source(tiny, tmp_path, monkeypatch):
    deb = fake_deb(tmp_path / "build", tiny)
    monkeypatch.setattr(fm, "DEB_SHA256", hashlib.sha256(deb.read_bytes()).hexdigest())
    monkeypatch.setattr(fm, "_apt_download", lambda folder: Path(shutil.copy(deb, folder)))
    fm.fetch(mirrors=(), debian=True)
    np.testing.assert_array_equal(fm.load("test")["label"], np.frombuffer(tiny["t10k-labels-idx1-ubyte"], np.uint8, offset=8))


@needs_dpkg
def test_a_debian_package_with_another_hash_is_never_unpacked(tiny, tmp_path, monkeypatch):
    deb = fake_deb(tmp_path / "build", tiny)
    monkeypatch.setattr(fm, "_apt_download", lambda folder: Path(shutil.copy(deb, folder)))
    unpacked = []
    monkeypatch.setattr(fm, "idx_files_from_deb", lambda path: unpacked.append(path) or {})
    with pytest.raises(ZooError, match="expected 39e172fe"):
        fm.fetch(mirrors=(), debian=True)
    assert unpacked == []


def test_inflating_refuses_a_bomb():
    with pytest.raises(ZooError, match="inflates past 1000 bytes"):
        idx.inflate(io.BytesIO(gzip.compress(b"\0" * 5000)), "bomb.gz", max_bytes=1000)


def test_registered_like_any_dataset():
    declared = zoo.data.get("fashion-mnist")
    assert declared.classes[0] == "T-shirt/top" and len(declared.classes) == 10
    batch = zoo.data.synthetic("fashion-mnist", 5)
    assert batch["image"].shape == (5, 28, 28, 1) and batch["label"].max() < 10

