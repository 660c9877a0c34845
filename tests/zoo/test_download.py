"""zoo.download: atomic, hash-checked, offline-aware downloads, tested on file:// URLs."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from zoo import download as dl
from zoo.errors import IntegrityError, OfflineError, UsageError, ZooError

PAYLOAD = b"zoo " * 100_000  # 400 kB: spans several 1 MiB-or-less reads
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)


def leftovers(folder):
    """Temp files a download may have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


class FakeResponse(io.BytesIO):
    """Stands in for urlopen's response: a body, headers, and optionally a failure mid-body."""

    def __init__(self, body: bytes, length: int | None = None, fail_after: int | None = None):
        super().__init__(body)
        self.headers = {} if length is None else {"Content-Length": str(length)}
        self.fail_after = fail_after

    def read(self, size=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 1000) if size and size > 0 else size)

    read1 = read  # the downloader reads with read1 (one recv at most) when the response has it


def test_sha256_file_matches_hashlib(source):
    assert dl.sha256_file(source) == PAYLOAD_SHA


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    dl.atomic_write_bytes(target, b"old")
    assert dl.atomic_write_bytes(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert leftovers(target.parent) == []
    # Same mode as a file created with open(), not mkstemp's 0600.
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert target.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_download_file_url_with_matching_hash(tmp_path, source):
    dest = tmp_path / "out" / "payload.bin"
    assert dl.download(source.as_uri(), dest, sha256=PAYLOAD_SHA.upper()) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == []


def test_download_without_hash(tmp_path, source):
    dest = tmp_path / "payload.bin"
    dl.download(source.as_uri(), dest)
    assert dest.read_bytes() == PAYLOAD


def test_hash_mismatch_names_url_and_both_hashes_and_leaves_nothing(tmp_path, source):
    dest = tmp_path / "out" / "payload.bin"
    wrong = "0" * 64
    with pytest.raises(IntegrityError) as info:
        dl.download(source.as_uri(), dest, sha256=wrong, what="the payload")
    message = str(info.value)
    assert source.as_uri() in message and wrong in message and PAYLOAD_SHA in message
    assert "the payload" in message
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_failed_download_keeps_previous_file(tmp_path, source):
    dest = tmp_path / "payload.bin"
    dest.write_bytes(b"previous")
    with pytest.raises(IntegrityError):
        dl.download(source.as_uri(), dest, sha256="0" * 64)
    assert dest.read_bytes() == b"previous"


@pytest.mark.parametrize("scheme", ["https://example.org/x.bin", "http://example.org/x.bin", "file:///x.bin"])
def test_offline_refuses_before_any_attempt(tmp_path, monkeypatch, scheme):
    def no_network(*args, **kwargs):
        raise AssertionError("urlopen must not be called offline")

    monkeypatch.setattr(dl, "_open", no_network)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    dest = tmp_path / "x.bin"
    with pytest.raises(OfflineError) as info:
        dl.download(scheme, dest, what="a test file")
    assert scheme in str(info.value) and "a test file" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_scheme_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="ftp://example.org/x"):
        dl.download("ftp://example.org/x", tmp_path / "x")


def test_missing_file_url_is_one_line_zoo_error(tmp_path):
    url = (tmp_path / "absent.bin").as_uri()
    with pytest.raises(ZooError) as info:
        dl.download(url, tmp_path / "out.bin")
    assert type(info.value) is ZooError
    assert url in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("error", [TimeoutError("timed out"), OSError("network is unreachable")])
def test_network_errors_become_zoo_errors(tmp_path, monkeypatch, error):
    def failing(url, timeout):
        assert timeout == dl.TIMEOUT_S
        raise error

    monkeypatch.setattr(dl, "_open", failing)
    with pytest.raises(ZooError, match="https://example.org/x.bin.*" + str(error)):
        dl.download("https://example.org/x.bin", tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_error_mid_body_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_open", lambda url, timeout: FakeResponse(PAYLOAD, fail_after=5000))
    with pytest.raises(ZooError, match="connection reset"):
        dl.download("https://example.org/x.bin", tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_body_shorter_than_content_length_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "_open", lambda url, timeout: FakeResponse(PAYLOAD, length=len(PAYLOAD) + 1))
    with pytest.raises(ZooError, match="cut short"):
        dl.download("https://example.org/x.bin", tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_removes_temp_file(tmp_path, monkeypatch):
    class Interrupting(FakeResponse):
        def read(self, size=-1):
            raise KeyboardInterrupt

        read1 = read

    monkeypatch.setattr(dl, "_open", lambda url, timeout: Interrupting(PAYLOAD))
    with pytest.raises(KeyboardInterrupt):
        dl.download("https://example.org/x.bin", tmp_path / "x.bin")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_deadline_that_is_not_a_positive_number_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("ZOO_DOWNLOAD_DEADLINE", value)
    with pytest.raises(UsageError, match=f"ZOO_DOWNLOAD_DEADLINE={value!r}"):
        dl.deadline_s()


@pytest.mark.parametrize("value, limit", [("", dl.DEFAULT_LIMIT), ("1048576", 1 << 20), ("1.5K", 1536), ("2GiB", 2 << 30)])
def test_download_settings_read_the_environment(monkeypatch, value, limit):
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD", value)
    monkeypatch.setenv("ZOO_DOWNLOAD_DEADLINE", "0.5")
    assert dl.size_limit() == limit and dl.deadline_s() == 0.5
