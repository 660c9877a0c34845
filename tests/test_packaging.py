"""The built wheel works outside the repo: it carries the core, the first-party
plugins, registry.toml and the shipped checkpoints.

Offline by construction: the wheel is built with the installed hatchling (no
build isolation), and the fresh virtual environment borrows this environment's
dependencies through a .pth file that points at a view of site-packages without
flax-zoo itself, so only the wheel can provide ``zoo``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("flax_zoo-*.whl")
    return built


def test_wheel_carries_core_plugins_catalogue_and_checkpoints(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "zoo/__init__.py" in names and "zoo/cli.py" in names
    assert "zoo_vae/__init__.py" in names and "zoo_vae/model.py" in names
    assert "zoo/_shipped/registry.toml" in names
    shipped = [n for n in names if n.startswith("zoo/_shipped/checkpoints/vae-mnist/")]
    assert "zoo/_shipped/checkpoints/vae-mnist/MANIFEST.json" in names and len(shipped) > 5
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[zoo.plugins]" in text and "vae = zoo_vae:plugin" in text
    assert not any(n.startswith(("tests/", "bench/", ".venv")) for n in names)


@pytest.mark.slow
def test_installed_wheel_samples_from_any_directory(wheel, tmp_path):
    # Dependencies: every entry of this environment's site-packages except flax-zoo's own.
    site = Path(sysconfig.get_paths()["purelib"])
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in site.iterdir():
        if "flax_zoo" in entry.name or entry.name in ("zoo", "__pycache__") or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)

    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    python = venv / "bin" / "python"
    venv_site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (venv_site / "borrowed_deps.pth").write_text(f"{deps}\n")
    install = _run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel)
    assert install.returncode == 0, install.stdout + install.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_REGISTRY")}
    env["ZOO_HOME"] = str(tmp_path / "home")
    where = _run(python, "-c", "import zoo, zoo_vae; print(zoo.__file__); print(zoo_vae.__file__)", cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert all(str(venv) in line for line in where.stdout.split()), where.stdout  # not the source tree

    listed = _run(venv / "bin" / "zoo", "list", "--pretrained", cwd=elsewhere, env=env)
    assert listed.returncode == 0 and "vae-mnist" in listed.stdout, listed.stdout + listed.stderr
    sampled = _run(venv / "bin" / "zoo", "sample", "vae-mnist", "--n", "4", "--out", "s.png", cwd=elsewhere, env=env)
    assert sampled.returncode == 0, sampled.stderr
    assert (elsewhere / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
