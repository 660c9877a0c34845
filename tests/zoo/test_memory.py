"""zoo.memory (issue 10 §6): what cannot fit is refused from abstract shapes, before anything allocates.

Before: ``--set latent_dim=99999999999`` hung, and ``zoo sample --n 10000000``
died in a native abort. The byte counts are checked against a hand count of
the dense VAE's parameters.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from fixtures_checkpoints import isolated_env, tiny_images, tiny_zoo  # noqa: F401

import zoo
from zoo import memory
from zoo.memory import OutOfMemory


def dense_vae_bytes(latent: int, hidden: int = 128, pixels: int = 784) -> int:
    """float32 parameters of the dense VAE, counted by hand: encoder, (mean, log-variance), decoder."""
    encoder = pixels * hidden + hidden + hidden * 2 * latent + 2 * latent
    decoder = latent * hidden + hidden + hidden * pixels + pixels
    return 4 * (encoder + decoder)


def test_tree_bytes_of_an_abstract_model_matches_a_hand_count():
    from flax import nnx

    from zoo import registry
    from zoo.config import make_config

    plugin = registry.get_plugin("vae")
    for latent in (20, 99_999_999_999):
        config = make_config(plugin, "dense-20", {"latent_dim": latent})
        with nnx.use_eager_sharding(False):
            abstract = nnx.eval_shape(lambda: plugin.resolve("build")(config, nnx.Rngs(0)))
        assert memory.tree_bytes(nnx.state(abstract)) == dense_vae_bytes(latent)


def test_a_model_too_big_for_memory_is_refused_at_once():
    started = time.monotonic()
    with pytest.raises(OutOfMemory) as error:
        zoo.build("vae", "dense-20", latent_dim=99_999_999_999)
    assert time.monotonic() - started < 30
    message = str(error.value)
    assert memory.human_bytes(dense_vae_bytes(99_999_999_999)) in message and "available" in message and "\n" not in message


def test_training_a_model_too_big_is_refused_before_anything_allocates(tmp_path):
    with pytest.raises(zoo.ZooError, match="would need 140.4 TiB"):
        zoo.train(
            "vae", workdir=tmp_path / "w", settings={"latent_dim": "99999999999"}, steps=1, batch_size=8,
            train_data=tiny_images(), progress=False,
        )
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_too_many_samples_are_refused_and_a_fitting_number_is_drawn(tiny_zoo, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: (100 << 20, "a 100 MiB test budget"))
    model = zoo.load(tiny_zoo.checkpoint)
    n = 100_000  # 100000 x 28 x 28 x 1 float32 = 299 MiB
    with pytest.raises(OutOfMemory) as error:
        model.sample(n)
    assert str(error.value) == (
        f"{n} samples of {tiny_zoo.checkpoint} would need {memory.human_bytes(n * 784 * 4)}, "
        "more than the 100.0 MiB available in a 100 MiB test budget"
    )
    assert np.asarray(model.sample(16)).shape == (16, 28, 28, 1)


def test_a_traceable_sampler_is_measured_without_running(monkeypatch):
    """A sampler that stays in JAX is measured by eval_shape alone: it never runs for real."""
    import jax.numpy as jnp
    from flax import nnx

    ran = []

    def sample(model, key, n):
        ran.append(n)
        return jnp.zeros((n, 1000), jnp.float32)

    monkeypatch.setattr(memory, "available_bytes", lambda: (1 << 20, "1 MiB"))
    model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))
    memory.check_sample(sample, model, None, 100, {}, "a traced sampler")  # 400 kB: fits
    with pytest.raises(OutOfMemory, match="3.8 MiB"):
        memory.check_sample(sample, model, None, 1000, {}, "a traced sampler")
    assert ran == [100, 1000]  # traced once each; never the one-sample run of the fallback


def test_accelerator_memory_comes_from_memory_stats(monkeypatch):
    import jax

    class Device:
        platform = "gpu"

        def __init__(self, limit, used):
            self.stats = {"bytes_limit": limit, "bytes_in_use": used}

        def memory_stats(self):
            return self.stats

    monkeypatch.setattr(jax, "local_devices", lambda: [Device(100, 30), Device(100, 10)])
    assert memory.available_bytes() == (160, "2 gpu device(s)")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB"), (2**60, "1024.0 PiB")])
def test_human_sizes(n, text):
    assert memory.human_bytes(n) == text
