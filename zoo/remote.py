"""Remote checkpoints: a ``.zip`` of a sealed checkpoint folder, fetched once into ``$ZOO_HOME``.

    folder = fetch_remote("https://host/vae-mnist.zip", sha256, "vae-mnist", size=1234567)

Nothing from the network is trusted before it is checked. The download is
bounded (the catalogue's ``size``, else ``ZOO_MAX_DOWNLOAD``; see ``zoo.download``).
The archive's MANIFEST must match the pinned sha256 before any other member is
written; each member must be a file it lists and is stopped one byte past the
size it lists, so a zip bomb writes at most what the checkpoint would. The
cache folder appears atomically, only once every file verified; a failure leaves
nothing, and temporaries of fetches killed earlier are reclaimed by the next.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from zoo import env
from zoo.checkpoint import MANIFEST, error_line, parse_manifest, verify
from zoo.download import CHUNK, download, owned_temp_prefix, reclaim_stale, size_limit
from zoo.errors import IntegrityError, OfflineError

MAX_MANIFEST_BYTES = 64 << 20
"""A manifest lists paths and hashes: 64 MiB would list about half a million files."""


def _copy_bounded(source: Any, dest: Path, bound: int, what: str) -> int:
    """Copy ``source`` (a readable stream) to a new file ``dest``, refusing at ``bound + 1`` bytes."""
    written = 0
    with open(dest, "xb") as out:  # "x": a name repeated in the archive is refused, not overwritten
        while chunk := source.read(min(CHUNK, bound + 1 - written)):
            written += len(chunk)
            if written > bound:
                raise IntegrityError(f"{what} expands beyond the {bound} bytes allowed for it; stopped extracting")
            out.write(chunk)
    return written


def _archive_manifest(zf: zipfile.ZipFile, archive: str, sha256: str) -> tuple[str, bytes]:
    """(folder prefix inside the archive, MANIFEST bytes), checked against the pinned sha256 first."""
    depth = lambda info: len(PurePosixPath(info.filename).parts)  # noqa: E731
    found = [i for i in zf.infolist() if PurePosixPath(i.filename).name == MANIFEST and depth(i) <= 2]
    if not found:
        raise IntegrityError(f"{archive} holds no {MANIFEST}: not an archive of a zoo checkpoint")
    info = min(found, key=depth)
    with zf.open(info) as member:
        data = member.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES or hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{archive}: its {MANIFEST} does not match the sha256 pinned in the catalogue")
    return info.filename[: -len(MANIFEST)], data


def _safe_extract(archive: Path, into: Path, sha256: str, limit: int) -> None:
    """Unzip a checkpoint, trusting nothing until it is checked.

    The MANIFEST is read first and must match the pinned ``sha256``; then every
    member must be a file it lists, inside the archive's one folder (no absolute
    paths, ``..`` or links), and is stopped at the first byte beyond the size the
    manifest gives it (``limit`` in all for a manifest without sizes).
    """
    with zipfile.ZipFile(archive) as zf:
        prefix, manifest = _archive_manifest(zf, str(archive), sha256)
        listed, sizes = parse_manifest(manifest, f"{archive}:{prefix}{MANIFEST}")
        total = 0
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise IntegrityError(f"{archive}: refusing unsafe member {info.filename!r}")
            if info.is_dir():
                continue
            relative = info.filename[len(prefix) :] if info.filename.startswith(prefix) else None
            if relative != MANIFEST and relative not in listed:
                raise IntegrityError(f"{archive}: member {info.filename!r} is not listed in its {MANIFEST}")
            bound = len(manifest) if relative == MANIFEST else sizes[relative] if sizes else limit - total
            dest = into / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as member:
                total += _copy_bounded(member, dest, bound, f"{archive}: member {info.filename!r}")


def fetch_remote(url: str, sha256: str, name: str, *, size: int | None = None) -> Path:
    """The verified local copy of a remote checkpoint (a .zip of its folder), fetched once.

    Downloads into ``$ZOO_HOME/checkpoints/<name>-<sha256[:16]>`` atomically: the
    folder appears only after the pinned manifest and every file verified. The
    download is bounded by ``size`` (the catalogue's) or the download limit, the
    extraction by the manifest's sizes; any failure leaves nothing in the cache,
    and temporaries of fetches killed earlier are reclaimed first.
    """
    cache = env.home() / "checkpoints" / f"{name}-{sha256[:16]}"
    if cache.is_dir():
        verify(cache, sha256)
        return cache
    if env.offline():
        raise OfflineError(f"{name} is not cached and ZOO_OFFLINE=1; fetch {url} (run `zoo sample {name}` once online)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    reclaim_stale(cache.parent, ".fetch")
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=owned_temp_prefix(".fetch")) as tmp:
        archive = download(url, Path(tmp) / "checkpoint.zip", what=f"checkpoint {name}", size=size)
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()  # an archive with no members creates nothing; it must still fail verification
        try:
            _safe_extract(archive, unpacked, sha256, size_limit())
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise IntegrityError(f"{url} is not a readable zip archive of a checkpoint: {error_line(e)}") from None
        archive.unlink()
        verify(unpacked, sha256)
        try:
            os.replace(unpacked, cache)
        except OSError:
            if not cache.is_dir():
                raise
            verify(cache, sha256)  # another process (a worker of the same job) fetched it first
    return cache
