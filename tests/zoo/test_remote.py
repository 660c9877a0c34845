"""Remote checkpoints over real HTTP (a server on 127.0.0.1 started here): the fault matrix.

Each fault (404, 500, a truncated body, the wrong archive, a stalled server, a
zip bomb, an endless or trickling body) must give one clear line and leave
nothing in ``$ZOO_HOME``; a good archive is fetched once and a second load makes
no request. Issue 7 §5 and issue 10 §2.
"""

from __future__ import annotations

import http.server
import io
import os
import socket
import subprocess
import threading
import time
import urllib.request
import zipfile
from collections import Counter

import numpy as np
import pytest
from fixtures_checkpoints import NAME, isolated_env, tiny_zoo, use_catalog, write_catalog  # noqa: F401

import zoo
from zoo import checkpoint, download, env, publish, remote
from zoo.errors import IntegrityError, ZooError


class Server:
    """A local HTTP server; ``routes`` maps a path to a handler ``(request_handler) -> None``."""

    def __init__(self):
        self.routes, self.hits = {}, Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.hits[self.path] += 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def body(data: bytes, length: int | None = None):
    def send(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.end_headers()
        handler.wfile.write(data)

    return send


def status(code: int):
    return lambda handler: handler.send_error(code)


def endless(handler, pause: float = 0.0, chunk: bytes = b"\0" * 65536):
    """A body with no Content-Length that never ends (until the client hangs up)."""
    handler.send_response(200)
    handler.end_headers()
    while True:
        handler.wfile.write(chunk)
        if pause:
            handler.wfile.flush()
            time.sleep(pause)


def stall(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    handler.wfile.write(b"PK")
    handler.wfile.flush()
    time.sleep(5)


@pytest.fixture(scope="module")
def archives(tiny_zoo, tmp_path_factory) -> dict[str, bytes]:
    """The good archive of tiny_zoo's export, another checkpoint's, and a zip bomb of the good one."""
    root = tmp_path_factory.mktemp("archives")
    publish.write_archive(tiny_zoo.checkpoint, root / "good.zip", "tiny")
    other = root / "other"
    checkpoint.save(other, {"model": {"w": np.ones(3, np.float32)}}, {"step": 1}, portable=True)
    publish.write_archive(other, root / "other.zip", "tiny")
    bomb = io.BytesIO()
    biggest = max((p for p in tiny_zoo.checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with zipfile.ZipFile(root / "good.zip") as good, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in good.infolist():
            data = good.read(info)
            if info.filename.endswith(biggest.relative_to(tiny_zoo.checkpoint).as_posix()):
                data = b"\0" * (64 << 20)  # 64 MiB of zeros: about 64 kB compressed
            zf.writestr(info.filename, data)
    return {"good": (root / "good.zip").read_bytes(), "other": (root / "other.zip").read_bytes(), "bomb": bomb.getvalue()}


def catalog_for(tmp_path, monkeypatch, url: str, sha256: str, size: int | None = None):
    path = write_catalog(tmp_path / "remote.toml", url, sha256)
    if size is not None:
        path.write_text(path.read_text().replace(f'sha256 = "{sha256}"', f'sha256 = "{sha256}"\nsize = {size}'))
    use_catalog(monkeypatch, path)


def home_is_clean() -> bool:
    """Nothing partial in $ZOO_HOME: no checkpoint folder, no temporary, no archive."""
    home = env.home()
    return not home.exists() or [p for p in home.rglob("*") if not p.is_dir()] == [] and not [
        p for p in (home / "checkpoints").glob("*") if p.is_dir()
    ]


def digest_of(loaded) -> str:
    from flax import nnx

    return checkpoint.params_digest(nnx.to_pure_dict(nnx.state(loaded.model)))


def test_a_good_archive_is_fetched_once_with_progress_and_a_second_load_asks_nothing(
    tmp_path, monkeypatch, server, archives, tiny_zoo, capsys
):
    server.routes["/good.zip"] = body(archives["good"])
    catalog_for(tmp_path, monkeypatch, server.url("/good.zip"), tiny_zoo.sha256, size=len(archives["good"]))
    first = zoo.load(NAME)
    assert digest_of(first) == tiny_zoo.digest and server.hits["/good.zip"] == 1
    progress = capsys.readouterr().err
    assert f"downloading checkpoint {NAME}" in progress and "downloaded" in progress  # plain lines: not a terminal
    second = zoo.load(NAME)
    assert server.hits["/good.zip"] == 1 and digest_of(second) == tiny_zoo.digest
    cache = env.home() / "checkpoints"
    assert [p.name for p in cache.iterdir()] == [first.checkpoint.name]


FAULTS = {
    "404": (lambda a: status(404), "HTTP 404"),
    "500": (lambda a: status(500), "HTTP 500"),
    "truncated": (lambda a: body(a["good"][: len(a["good"]) // 2], length=len(a["good"])), "cut short|IncompleteRead|incomplete"),
    "wrong archive": (lambda a: body(a["other"]), "pinned"),
    "not a zip": (lambda a: body(b"<html>hello</html>"), "not a readable zip"),
    "stalled": (lambda a: stall, "timed out"),
    "zip bomb": (lambda a: body(a["bomb"]), "expands beyond"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, server, archives, tiny_zoo, fault):
    route, message = FAULTS[fault]
    server.routes["/ckpt.zip"] = route(archives)
    monkeypatch.setattr(download, "TIMEOUT_S", 0.5)
    catalog_for(tmp_path, monkeypatch, server.url("/ckpt.zip"), tiny_zoo.sha256)
    started = time.monotonic()
    with pytest.raises(ZooError, match=message) as error:
        zoo.load(NAME)
    assert "\n" not in str(error.value)
    assert time.monotonic() - started < 30
    assert home_is_clean(), sorted(map(str, env.home().rglob("*")))


def test_a_zip_bomb_writes_no_more_than_the_manifest_allows(tmp_path, monkeypatch, server, archives, tiny_zoo):
    """The bomb's member claims 64 MiB; extraction stops one byte past the manifest's size for it."""
    server.routes["/bomb.zip"] = body(archives["bomb"])
    catalog_for(tmp_path, monkeypatch, server.url("/bomb.zip"), tiny_zoo.sha256)
    written = []
    real = remote._copy_bounded

    def spy(source, dest, bound, what):
        try:
            return real(source, dest, bound, what)
        finally:
            written.append(dest.stat().st_size if dest.exists() else 0)

    monkeypatch.setattr(remote, "_copy_bounded", spy)
    with pytest.raises(IntegrityError, match="expands beyond"):
        zoo.load(NAME)
    biggest = max(p.stat().st_size for p in tiny_zoo.checkpoint.rglob("*") if p.is_file())
    assert max(written) <= biggest  # nowhere near the 64 MiB it would expand to
    assert home_is_clean()


def test_an_endless_body_stops_at_the_limit(tmp_path, monkeypatch, server, tiny_zoo):
    server.routes["/endless"] = endless
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD", "2M")
    catalog_for(tmp_path, monkeypatch, server.url("/endless"), tiny_zoo.sha256)
    with pytest.raises(ZooError, match=r"larger than the 2\.0 MiB limit"):
        zoo.load(NAME)
    assert home_is_clean()


def test_a_stated_size_is_the_bound(tmp_path, monkeypatch, server, archives, tiny_zoo):
    """A catalogue's `size` refuses a longer body at once, whatever the generous default says."""
    server.routes["/ckpt.zip"] = body(archives["good"])
    catalog_for(tmp_path, monkeypatch, server.url("/ckpt.zip"), tiny_zoo.sha256, size=len(archives["good"]) - 1)
    with pytest.raises(IntegrityError, match="catalogue entry says"):
        zoo.load(NAME)
    server.routes["/endless"] = endless
    catalog_for(tmp_path, monkeypatch, server.url("/endless"), tiny_zoo.sha256, size=100_000)
    with pytest.raises(ZooError, match="larger than"):
        zoo.load(NAME)
    assert home_is_clean()


def test_a_trickling_body_meets_the_overall_deadline(tmp_path, monkeypatch, server, tiny_zoo):
    """Bytes arrive within every per-read timeout, but the whole download has a deadline."""
    server.routes["/trickle"] = lambda h: endless(h, pause=0.05, chunk=b"\0")
    monkeypatch.setenv("ZOO_DOWNLOAD_DEADLINE", "1")
    catalog_for(tmp_path, monkeypatch, server.url("/trickle"), tiny_zoo.sha256)
    started = time.monotonic()
    with pytest.raises(ZooError, match="took longer than 1 s"):
        zoo.load(NAME)
    assert time.monotonic() - started < 10
    assert home_is_clean()


def test_temporaries_of_a_killed_fetch_are_reclaimed_by_the_next(tmp_path, monkeypatch, server, archives, tiny_zoo):
    cache = env.home() / "checkpoints"
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names no process: a fetch that was killed
    dead = cache / f".fetch-{finished.pid}@{socket.gethostname()}~x1"
    alive = cache / f"{download.owned_temp_prefix('.fetch')}x2"  # this process: still fetching
    for folder in (dead, alive):
        (folder / "unpacked").mkdir(parents=True)
        (folder / "checkpoint.zip").write_bytes(b"\0" * 1000)
    server.routes["/good.zip"] = body(archives["good"])
    catalog_for(tmp_path, monkeypatch, server.url("/good.zip"), tiny_zoo.sha256)
    zoo.load(NAME)
    assert not dead.exists() and alive.exists()


def test_an_old_temporary_of_another_host_is_reclaimed(tmp_path):
    old = tmp_path / ".fetch-1@elsewhere~abc"
    old.mkdir()
    os.utime(old, (0, 0))
    recent = tmp_path / ".fetch-1@elsewhere~def"
    recent.mkdir()
    assert download.reclaim_stale(tmp_path, ".fetch") == [old]
    assert recent.exists()


def test_a_redirect_from_https_to_http_is_refused():
    handler = download._NoDowngrade()
    request = urllib.request.Request("https://example.org/ckpt.zip")
    with pytest.raises(ZooError, match="leaves https"):
        handler.redirect_request(request, None, 302, "Found", {}, "http://example.org/ckpt.zip")
    assert handler.redirect_request(request, None, 302, "Found", {}, "https://cdn.example.org/x.zip") is not None


def test_a_plain_http_redirect_is_followed(tmp_path, server):
    """Only the downgrade is refused: http -> http (here, on loopback) still works."""

    def moved(handler):
        handler.send_response(302)
        handler.send_header("Location", server.url("/payload"))
        handler.end_headers()

    server.routes["/moved"] = moved
    server.routes["/payload"] = body(b"x" * 10)
    assert download.download(server.url("/moved"), tmp_path / "p").read_bytes() == b"x" * 10


def test_the_progress_bar_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = download._Progress("thing", "https://example.org/t", 2048, stream)
    progress.advance(1024)
    progress.finish(ok=True)
    text = stream.getvalue()
    assert "\r" in text and "[###############...............] 1.0 KiB of 2.0 KiB" in text and text.endswith("\n")


@pytest.mark.parametrize("value", ["lots", "-1", "0", "nanG"])
def test_a_malformed_limit_is_one_line(tmp_path, monkeypatch, value):
    monkeypatch.setenv("ZOO_MAX_DOWNLOAD", value)
    with pytest.raises(ZooError, match="ZOO_MAX_DOWNLOAD"):
        download.download((tmp_path / "x").as_uri(), tmp_path / "y")


def test_catalogue_plain_http_only_on_loopback(tmp_path, tiny_zoo):
    from zoo.catalog import CatalogError, load_catalog

    for url in ("http://127.0.0.1:8000/x.zip", "http://localhost/x.zip", "http://[::1]:80/x.zip"):
        write_catalog(tmp_path / "ok.toml", url, tiny_zoo.sha256)
        assert load_catalog(tmp_path / "ok.toml")[0].checkpoint == url
    write_catalog(tmp_path / "bad.toml", "http://example.org/x.zip", tiny_zoo.sha256)
    with pytest.raises(CatalogError, match="loopback"):
        load_catalog(tmp_path / "bad.toml")
