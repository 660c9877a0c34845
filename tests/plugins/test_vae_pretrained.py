"""The shipped VAE checkpoints, used the way a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import zoo
from zoo import registry

SHIPPED = sorted(name for name, e in registry.catalog().entries.items() if e.plugin == "vae")


def _zoo(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_vae_mnist_is_shipped():
    assert "vae-mnist" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_sample_png_grid(name, tmp_path):
    result = _zoo("sample", name, "--n", "64", "--out", "grid.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    png = (tmp_path / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == height == 8 * 28 + 9 * 2  # 8x8 tiles of 28 px with 2 px gutters


@pytest.mark.parametrize("name", SHIPPED)
def test_samples_look_like_digits_not_noise(name):
    """Decoded prior samples are mostly ink-free background with confident strokes, like MNIST."""
    images = zoo.load(name).sample(64, seed=0)
    assert images.shape == (64, 28, 28, 1) and images.dtype == np.float32
    ink = images.mean(axis=(1, 2, 3))
    assert 0.05 < ink.mean() < 0.25  # MNIST's mean intensity is 0.13
    confident = ((images < 0.1) | (images > 0.6)).mean()
    assert confident > 0.85
    assert images[:, :3].mean() < 0.02  # borders are empty, as in MNIST
    assert np.std(images.reshape(64, -1), axis=0).mean() > 0.05  # not one image 64 times


def test_mismatched_config_is_one_readable_error(tmp_path):
    result = _zoo("sample", "vae-mnist", "--set", "latent_dim=16", "--out", "x.png", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "encoder/stats/kernel: model (128, 32), checkpoint (128, 40)" in result.stderr
    assert "decoder/hidden/kernel: model (16, 128), checkpoint (20, 128)" in result.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.mnist
@pytest.mark.parametrize("name", SHIPPED)
def test_verify_reproduces_the_card(name):
    result = _zoo("verify", name, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = json.loads(result.stdout)
    card = registry.get_pretrained(name).metrics
    assert abs(report["metrics"]["neg_elbo"] - card["neg_elbo"]) <= 0.5
