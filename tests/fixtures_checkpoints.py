"""A real, tiny VAE checkpoint and a catalogue naming it, built once per test session.

``tiny_zoo`` trains the VAE for 4 steps on 64 random images with its parameters
split over the 8 CPU devices (``mesh="fsdp=8"``), sealing steps 2 and 4, exports
the run (``zoo.publish.export``: the portable layout) and writes a
catalogue ``registry.toml`` pinning the export's MANIFEST sha256 as ``tiny-vae``.
Tests that damage anything work on ``tiny_zoo.copy(tmp_path)``, never on the
shared original.

Import the fixtures into a test module with
``from fixtures_checkpoints import isolated_env, tiny_zoo  # noqa: F401``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo import registry

NAME = "tiny-vae"
TRAIN_MESH = "fsdp=8"
TRAIN = {"steps": 4, "batch_size": 8, "seed": 0, "checkpoint_every": 2}


def tiny_images(n: int = 64) -> dict[str, np.ndarray]:
    """``n`` random 28x28 'digits' with MNIST's keys and dtypes (the conftest's recipe, smaller)."""
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, n).astype(np.int32),
    }


def write_catalog(path: Path, checkpoint: str, sha256: str, *, name: str = NAME, metrics: dict | None = None) -> Path:
    """A one-entry catalogue (schema 1) at ``path``."""
    metrics = metrics if metrics is not None else {"neg_elbo": 543.21}
    table = ", ".join(f"{k} = {v!r}" for k, v in metrics.items())
    path.write_text(
        f"""schema = 1

[models.{name}]
plugin = "vae"
variant = "dense-20"
dataset = "mnist"
checkpoint = "{checkpoint}"
sha256 = "{sha256}"
metrics = {{ {table} }}
recipe = "zoo train vae --variant dense-20 --steps 4 --batch-size 8 --checkpoint-every 2 --mesh {TRAIN_MESH}"
seed = 0
license = "CC0-1.0"
description = "A 4-step VAE for checkpoint tests."
""",
        encoding="utf-8",
    )
    return path


@dataclasses.dataclass(frozen=True)
class TinyZoo:
    """Where the shared checkpoint lives.

    Attributes:
      run: the training workdir: sealed steps 2 and 4, saved with params split over 8 devices.
      root: holds ``registry.toml`` and ``checkpoints/tiny`` (the export).
      sha256: the export's MANIFEST sha256, pinned in the catalogue.
      digest: ``params_digest`` of the trained parameters (step 4).
      loss: the run's final loss.
    """

    run: Path
    root: Path
    sha256: str
    digest: str
    loss: float

    @property
    def catalog(self) -> Path:
        return self.root / "registry.toml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "tiny"

    def copy(self, dest: Path) -> TinyZoo:
        """A private copy of the catalogue and its checkpoint (the run is shared, read-only)."""
        shutil.copytree(self.root, dest)
        return dataclasses.replace(self, root=dest)


_BUILT: dict[str, TinyZoo] = {}


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> TinyZoo:
    # Both test modules import this fixture, which gives each its own FixtureDef;
    # the cache keeps it to one training per session.
    if "zoo" not in _BUILT:
        import zoo
        import zoo.publish

        base = tmp_path_factory.mktemp("tiny-zoo")
        data = tiny_images()
        result = zoo.train(
            "vae", workdir=base / "run", mesh=TRAIN_MESH, train_data=data, eval_data=data, progress=False, **TRAIN
        )
        root = base / "catalog"
        sha = zoo.publish.export(base / "run", root / "checkpoints" / "tiny", measure=False).sha256
        write_catalog(root / "registry.toml", "checkpoints/tiny", sha, metrics={"neg_elbo": round(result.loss, 3)})
        _BUILT["zoo"] = TinyZoo(base / "run", root, sha, result.params_digest, result.loss)
    return _BUILT["zoo"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No cache, catalogue or offline flag leaks in from the machine (or between tests)."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    for name in ("ZOO_OFFLINE", "ZOO_REGISTRY"):
        monkeypatch.delenv(name, raising=False)


def use_catalog(monkeypatch, catalog: Path) -> None:
    """Make ``catalog`` visible to this process's registry."""
    monkeypatch.setenv("ZOO_REGISTRY", str(catalog))
    registry.reset()


def files_of(folder: Path) -> list[str]:
    """Every file under ``folder``, as sorted posix paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def flip_byte(path: Path) -> None:
    """Invert one byte in the middle of ``path`` (the size stays the same)."""
    data = bytearray(path.read_bytes())
    assert data, f"{path} is empty: nothing to flip"
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def zoo_command(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120):
    """Run the ``zoo`` console script as a user would; returns the CompletedProcess."""
    script = Path(sys.executable).parent / "zoo"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "zoo.cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False
    )


def subprocess_env(*, devices: int | None = None, **extra: Any) -> dict[str, str]:
    """This process's environment (ZOO_HOME etc.), optionally with another CPU device count."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env.update({k: str(v) for k, v in extra.items()})
    return env
