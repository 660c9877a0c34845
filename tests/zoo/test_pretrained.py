"""zoo.pretrained and the CLI over it: verified loading by name, shape errors, remote checkpoints, export.

What a user relies on (DESIGN.md, Checkpoints): ``zoo.load(NAME)`` and ``zoo
sample NAME`` refuse a checkpoint with any altered, missing or extra byte before
restoring anything, with one line naming the file; a model that does not fit the
checkpoint is one error listing each parameter with both shapes; a remote
checkpoint is downloaded once, atomically and verified, into ``$ZOO_HOME``, and
an unsafe or mismatched archive leaves nothing behind; ``zoo export`` never
overwrites.

The checkpoint is ``fixtures_checkpoints.tiny_zoo`` (one 4-step training per
session); tests that damage it work on a private copy.
"""

from __future__ import annotations

import shutil
import urllib.request
import zipfile

import pytest
from fixtures_checkpoints import (  # noqa: F401 - fixtures are used by name
    NAME,
    files_of,
    flip_byte,
    isolated_env,
    subprocess_env,
    tiny_zoo,
    use_catalog,
    write_catalog,
    zoo_command,
)

import zoo
import zoo.download
from zoo import checkpoint, env, pretrained, publish, remote
from zoo.checkpoint import MANIFEST, CheckpointError
from zoo.errors import IntegrityError, UsageError, ZooError

SHAPE_LINES = (
    "decoder/hidden/kernel: model (16, 128), checkpoint (20, 128)",
    "encoder/stats/bias: model (32,), checkpoint (40,)",
    "encoder/stats/kernel: model (128, 32), checkpoint (128, 40)",
)


def digest_of(loaded) -> str:
    from flax import nnx

    return checkpoint.params_digest(nnx.to_pure_dict(nnx.state(loaded.model)))


def nothing_may_be_restored(monkeypatch):
    """Any attempt to build the model or read arrays fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a refused checkpoint reached the restore")

    monkeypatch.setattr(pretrained, "_restore_model", forbidden)
    monkeypatch.setattr(checkpoint, "_checkpointer", forbidden)
    monkeypatch.setattr(checkpoint, "stored_tree", forbidden)


def no_network(monkeypatch) -> list:
    """Make every way of downloading fail the test; returns the list of attempts."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(remote, "download", refuse)
    monkeypatch.setattr(zoo.download, "download", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@pytest.fixture
def private(tmp_path, tiny_zoo, monkeypatch):
    """A private copy of the catalogue and checkpoint, registered as ``tiny-vae``."""
    copy = tiny_zoo.copy(tmp_path / "catalog")
    use_catalog(monkeypatch, copy.catalog)
    return copy


# =========================================================================== loading by name


def test_load_by_name_verifies_and_restores_the_trained_parameters(tiny_zoo, monkeypatch):
    use_catalog(monkeypatch, tiny_zoo.catalog)
    loaded = zoo.load(NAME)
    assert loaded.checkpoint == tiny_zoo.checkpoint
    assert loaded.card.sha256 == tiny_zoo.sha256 == checkpoint.manifest_sha256(tiny_zoo.checkpoint)
    assert loaded.config.latent_dim == 20
    assert digest_of(loaded) == tiny_zoo.digest
    assert loaded.sample(2, seed=0).shape == (2, 28, 28, 1)


def test_any_altered_byte_is_refused_by_load_before_any_restore(private, monkeypatch):
    nothing_may_be_restored(monkeypatch)
    names = files_of(private.checkpoint)
    assert MANIFEST in names and any(n.startswith("model/") for n in names)
    for name in names:
        path = private.checkpoint / name
        original = path.read_bytes()
        flip_byte(path)
        with pytest.raises(IntegrityError) as error:
            zoo.load(NAME)
        message = str(error.value)
        assert str(path) in message, f"flipping a byte of {name} gave: {message}"
        assert "\n" not in message
        path.write_bytes(original)


def test_a_missing_file_is_refused_by_load(private, monkeypatch):
    nothing_may_be_restored(monkeypatch)
    victim = private.checkpoint / "meta" / "metadata"
    victim.unlink()
    with pytest.raises(IntegrityError, match="missing") as error:
        zoo.load(NAME)
    assert str(victim) in str(error.value)


def test_an_extra_file_is_refused_by_load(private, monkeypatch):
    nothing_may_be_restored(monkeypatch)
    extra = private.checkpoint / "model" / "0000extra"  # beside the weights, whatever Orbax's layout
    extra.write_bytes(b"not from the save")
    with pytest.raises(IntegrityError, match="not listed") as error:
        zoo.load(NAME)
    assert str(extra) in str(error.value)


def test_a_resealed_checkpoint_is_refused_by_the_catalogue_pin(private, monkeypatch):
    """Tampering, then re-writing the MANIFEST to match, still fails: the catalogue pins the manifest."""
    nothing_may_be_restored(monkeypatch)
    weights = [p for p in (private.checkpoint / "model").rglob("*") if p.is_file()]
    flip_byte(max(weights, key=lambda p: p.stat().st_size))  # the largest file holds weights in any layout
    checkpoint.write_manifest(private.checkpoint)
    checkpoint.verify(private.checkpoint)  # self-consistent
    with pytest.raises(IntegrityError, match="pinned in the catalogue") as error:
        zoo.load(NAME)
    assert str(private.checkpoint / MANIFEST) in str(error.value)


def test_a_missing_checkpoint_folder_is_one_clear_error(private):
    shutil.rmtree(private.checkpoint)
    with pytest.raises(ZooError, match="missing") as error:
        zoo.load(NAME)
    assert str(private.checkpoint) in str(error.value)


@pytest.mark.parametrize("target", [MANIFEST, "meta/metadata", "the largest data file"])
def test_cli_sample_refuses_a_corrupted_checkpoint_in_one_line(private, tmp_path, target):
    names = files_of(private.checkpoint)
    if target == "the largest data file":
        target = max(names, key=lambda n: (private.checkpoint / n).stat().st_size)
        assert target.startswith("model/")
    flip_byte(private.checkpoint / target)
    out = tmp_path / "x.png"

    proc = zoo_command("sample", NAME, "--out", str(out), env=subprocess_env(ZOO_REGISTRY=private.catalog), cwd=tmp_path)

    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("zoo: error: ") and str(private.checkpoint / target) in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not out.exists()


# =========================================================================== shapes


def test_load_with_a_config_that_does_not_fit_lists_each_parameter(tiny_zoo, monkeypatch):
    use_catalog(monkeypatch, tiny_zoo.catalog)
    monkeypatch.setattr(checkpoint, "_checkpointer", lambda: pytest.fail("Orbax restore was reached"))
    for source in (NAME, tiny_zoo.run, tiny_zoo.checkpoint):  # by name, a workdir, an exported folder
        with pytest.raises(CheckpointError) as error:
            zoo.load(source, latent_dim=16)
        message = str(error.value)
        assert "does not fit the model (3 difference(s))" in message
        for line in SHAPE_LINES:
            assert line in message
        assert "encoder/hidden" not in message  # unchanged parameters are not listed
        assert len(message.splitlines()) == 1 + len(SHAPE_LINES)


def test_cli_sample_with_a_config_that_does_not_fit_is_one_error(tiny_zoo, tmp_path):
    out = tmp_path / "x.png"
    proc = zoo_command(
        "sample", NAME, "--set", "latent_dim=16", "--out", str(out),
        env=subprocess_env(ZOO_REGISTRY=tiny_zoo.catalog), cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Requested shape" not in proc.stderr
    error = proc.stderr[proc.stderr.index("zoo: error: ") :].strip().splitlines()
    assert "does not fit the model (3 difference(s))" in error[0]
    assert [line.strip() for line in error[1:]] == list(SHAPE_LINES)
    assert proc.stderr.count("zoo: error:") == 1
    assert not out.exists()


# =========================================================================== remote checkpoints


def zip_checkpoint(folder, archive, *, root: str | None = "tiny", extra: dict | None = None):
    """A .zip of checkpoint ``folder`` (inside a ``root`` folder, or flat), plus ``extra`` members."""
    with zipfile.ZipFile(archive, "w") as zf:
        for name in files_of(folder):
            zf.write(folder / name, f"{root}/{name}" if root else name)
        for member, data in (extra or {}).items():  # a name or a ZipInfo
            zf.writestr(member, data)
    return archive


def remote_catalog(tmp_path, monkeypatch, archive, sha256):
    catalog = write_catalog(tmp_path / "remote.toml", archive.as_uri(), sha256)
    use_catalog(monkeypatch, catalog)


def fetch_leftovers():
    """What a fetch left in the checkpoint cache (folders and temp files)."""
    cache = env.home() / "checkpoints"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize("root", ["tiny", None], ids=["in-a-folder", "flat"])
def test_remote_checkpoint_is_fetched_once_verified_and_reused(tmp_path, tiny_zoo, monkeypatch, root):
    archive = zip_checkpoint(tiny_zoo.checkpoint, tmp_path / "tiny.zip", root=root)
    remote_catalog(tmp_path, monkeypatch, archive, tiny_zoo.sha256)
    cache = env.home() / "checkpoints" / f"{NAME}-{tiny_zoo.sha256[:16]}"
    fetched = []
    real_download = remote.download
    monkeypatch.setattr(remote, "download", lambda url, *a, **kw: fetched.append(url) or real_download(url, *a, **kw))

    first = zoo.load(NAME)
    assert fetched == [archive.as_uri()]
    assert first.checkpoint == cache
    checkpoint.verify(cache, tiny_zoo.sha256)
    assert files_of(cache) == files_of(tiny_zoo.checkpoint)
    assert fetch_leftovers() == [cache.name]  # no temp folder or partial archive left
    assert digest_of(first) == tiny_zoo.digest

    # Second time: no download attempt at all, even with the archive gone and offline.
    attempts = no_network(monkeypatch)
    archive.unlink()
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    second = zoo.load(NAME)
    assert attempts == []
    assert second.checkpoint == cache and digest_of(second) == tiny_zoo.digest
    checkpoint.verify(cache, tiny_zoo.sha256)  # loading wrote nothing into the cache

    # The cache is verified on every load, not trusted because it exists.
    victim = cache / max(files_of(cache), key=lambda n: (cache / n).stat().st_size)
    flip_byte(victim)
    with pytest.raises(IntegrityError) as error:
        zoo.load(NAME)
    assert str(victim) in str(error.value)
    assert attempts == []


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)
    return info


@pytest.mark.parametrize(
    "member",
    ["../evil", "tiny/../../../evil", "ABSOLUTE", "SYMLINK"],
)
def test_remote_archive_with_an_unsafe_member_is_refused(tmp_path, tiny_zoo, monkeypatch, member):
    outside = tmp_path / "evil"
    extra = {
        "../evil": {"../evil": b"pwned"},
        "tiny/../../../evil": {"tiny/../../../evil": b"pwned"},
        "ABSOLUTE": {str(outside): b"pwned"},
        "SYMLINK": {_symlink("tiny/model/link"): str(outside)},
    }[member]
    archive = zip_checkpoint(tiny_zoo.checkpoint, tmp_path / "tiny.zip", extra=extra)
    remote_catalog(tmp_path, monkeypatch, archive, tiny_zoo.sha256)

    with pytest.raises(IntegrityError, match="unsafe member"):
        zoo.load(NAME)
    assert not outside.exists()
    assert [p for p in tmp_path.rglob("*evil*")] == []
    assert fetch_leftovers() == []  # no cache folder, no temp folder


@pytest.mark.parametrize("damage", ["resealed", "corrupted", "other checkpoint"])
def test_remote_archive_not_matching_the_pin_is_refused_and_leaves_nothing(tmp_path, tiny_zoo, monkeypatch, damage):
    folder = shutil.copytree(tiny_zoo.checkpoint, tmp_path / "tiny")
    chunk = folder / max(files_of(folder), key=lambda n: (folder / n).stat().st_size)
    if damage == "other checkpoint":
        (folder / "meta" / "metadata").write_text('{"plugin": "vae"}')
        checkpoint.write_manifest(folder)
    else:
        flip_byte(chunk)
        if damage == "resealed":
            checkpoint.write_manifest(folder)
    archive = zip_checkpoint(folder, tmp_path / "tiny.zip")
    remote_catalog(tmp_path, monkeypatch, archive, tiny_zoo.sha256)

    with pytest.raises(IntegrityError) as error:
        zoo.load(NAME)
    message = str(error.value)
    if damage == "corrupted":
        assert chunk.relative_to(folder).as_posix() in message and "corrupted" in message
    else:
        assert "pinned" in message and MANIFEST in message
    assert fetch_leftovers() == []


@pytest.mark.parametrize("content", ["empty", "not a zip"])
def test_remote_archive_without_a_checkpoint_is_one_clear_error(tmp_path, tiny_zoo, monkeypatch, content):
    archive = tmp_path / "tiny.zip"
    if content == "empty":
        zipfile.ZipFile(archive, "w").close()
    else:
        archive.write_bytes(b"<html>404</html>")
    remote_catalog(tmp_path, monkeypatch, archive, tiny_zoo.sha256)
    with pytest.raises(ZooError):
        zoo.load(NAME)
    assert fetch_leftovers() == []


def test_offline_without_a_cached_copy_says_what_to_fetch_and_tries_nothing(tmp_path, tiny_zoo, monkeypatch):
    archive = zip_checkpoint(tiny_zoo.checkpoint, tmp_path / "tiny.zip")
    remote_catalog(tmp_path, monkeypatch, archive, tiny_zoo.sha256)
    attempts = no_network(monkeypatch)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(ZooError) as error:
        zoo.load(NAME)
    message = str(error.value)
    assert "ZOO_OFFLINE" in message and archive.as_uri() in message and NAME in message
    assert attempts == []
    assert fetch_leftovers() == []


# =========================================================================== export


@pytest.mark.parametrize("existing", ["folder with a file", "empty folder", "file"])
def test_export_refuses_to_overwrite(tmp_path, tiny_zoo, existing):
    destination = tmp_path / "dest"
    if existing == "file":
        destination.write_bytes(b"precious")
    else:
        destination.mkdir()
        if existing == "folder with a file":
            (destination / "precious").write_bytes(b"precious")
    before = sorted((p.relative_to(tmp_path).as_posix(), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))

    with pytest.raises(UsageError, match="refusing to overwrite"):
        publish.export(tiny_zoo.run, destination, measure=False)
    assert sorted((p.relative_to(tmp_path).as_posix(), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")) == before


def test_cli_export_refuses_to_overwrite(tmp_path, tiny_zoo):
    destination = tmp_path / "dest"
    destination.mkdir()
    (destination / "precious").write_bytes(b"precious")
    proc = zoo_command("export", str(tiny_zoo.run), str(destination), env=subprocess_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to overwrite" in lines[0] and str(destination) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert [p.name for p in destination.iterdir()] == ["precious"]
    assert (destination / "precious").read_bytes() == b"precious"


def test_a_concurrent_fetch_of_the_same_checkpoint_is_not_an_error(tmp_path, tiny_zoo, monkeypatch):
    """Two processes (say, the workers of one job) fetch at once: the second to finish uses the first's copy."""
    archive = zip_checkpoint(tiny_zoo.checkpoint, tmp_path / "tiny.zip")
    remote_catalog(tmp_path, monkeypatch, archive, tiny_zoo.sha256)
    cache = env.home() / "checkpoints" / f"{NAME}-{tiny_zoo.sha256[:16]}"
    real_download = remote.download

    def racing(url, dest, **kwargs):
        fetched = real_download(url, dest, **kwargs)
        shutil.copytree(tiny_zoo.checkpoint, cache)  # meanwhile, the other process finished its fetch
        return fetched

    monkeypatch.setattr(remote, "download", racing)
    loaded = zoo.load(NAME)
    assert loaded.checkpoint == cache
    assert digest_of(loaded) == tiny_zoo.digest
    assert fetch_leftovers() == [cache.name]
