"""zoo export --weights-dtype bfloat16: half the bytes, loaded back as float32 exactly, measured as loaded.

The weights are the shared tiny VAE run's (``tiny_zoo``); the data is the
fixtures' 64 random images served as "mnist", so export, load and verify
evaluate the same arrays. Expected values are rounded here with ml_dtypes,
independently of the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures_checkpoints import files_of, isolated_env, tiny_images, tiny_zoo, use_catalog  # noqa: F401
from flax import nnx
from helpers import run_main

import zoo
import zoo.data
from zoo import checkpoint, pretrained, publish, registry
from zoo.checkpoint import CheckpointError
from zoo.errors import UsageError


@pytest.fixture
def tiny_mnist_everywhere(monkeypatch):
    """``zoo.data.load("mnist", split)`` gives the fixtures' tiny images (no cache needed)."""
    data = tiny_images()
    monkeypatch.setattr(zoo.data, "load", lambda name, split="train": data)
    return data


def flat_weights(model) -> dict[str, np.ndarray]:
    """``{"encoder/hidden/kernel": host array}`` of a model's variables."""
    return {p: np.asarray(v) for p, v in checkpoint.tree_paths(nnx.to_pure_dict(nnx.state(model))).items()}


def rounded(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 -> bfloat16 -> float32 by ml_dtypes (round to nearest even), the reference for every load."""
    return {p: a.astype(jnp.bfloat16).astype(np.float32) if a.dtype == np.float32 else a for p, a in weights.items()}


def folder_bytes(folder) -> int:
    return sum((folder / name).stat().st_size for name in files_of(folder))


def catalogue_of(exported: publish.Exported, folder, monkeypatch):
    """The printed entry as the one catalogue in use (checkpoint paths are relative to ``folder``)."""
    catalog = folder / "registry.toml"
    catalog.write_text("schema = 1\n\n" + exported.entry_toml())
    use_catalog(monkeypatch, catalog)
    return catalog


@pytest.fixture
def trained(tiny_zoo) -> dict[str, np.ndarray]:
    """The run's float32 weights, checked against the digest its training reported."""
    model = zoo.load(tiny_zoo.run).model
    assert publish.model_digest(model) == tiny_zoo.digest
    return flat_weights(model)


def test_a_bfloat16_export_stores_bfloat16_in_half_the_bytes(tmp_path, tiny_zoo):
    full = publish.export(tiny_zoo.run, tmp_path / "full", measure=False)
    half = publish.export(tiny_zoo.run, tmp_path / "half", measure=False, weights_dtype="bfloat16")
    again = publish.export(tiny_zoo.run, tmp_path / "elsewhere" / "half", measure=False, weights_dtype="bfloat16")
    stored = checkpoint.stored_tree(half.path, "model")
    assert {str(m.dtype) for m in stored.values()} == {"bfloat16"}  # the VAE has only float variables
    assert {str(m.dtype) for m in checkpoint.stored_tree(full.path, "model").values()} == {"float32"}
    assert 0.4 < folder_bytes(half.path) / folder_bytes(full.path) < 0.6
    assert checkpoint.read_meta(half.path)["weights_dtype"] == "bfloat16" and half.weights_dtype == "bfloat16"
    assert "weights_dtype" not in checkpoint.read_meta(full.path) and full.weights_dtype is None
    assert half.sha256 == again.sha256  # still byte-reproducible
    assert half.recipe == full.recipe and "weights stored in bfloat16" in half.entry()["description"]
    assert {k: v for k, v in half.entry().items() if k not in ("checkpoint", "sha256", "params_digest", "description")} == {
        k: v for k, v in full.entry().items() if k not in ("checkpoint", "sha256", "params_digest", "description")
    }


def test_narrowing_leaves_integers_and_bytes_alone():
    tree = {"w": np.float32([1 / 3]), "d": np.float64([1 / 3]), "h": np.float16([0.5]), "tok": np.uint8([7]), "n": np.int32([3])}
    narrow = checkpoint.narrow_weights(tree, "bfloat16")
    assert {k: str(v.dtype) for k, v in narrow.items()} == {
        "w": "bfloat16", "d": "bfloat16", "h": "float16", "tok": "uint8", "n": "int32"
    }
    back = checkpoint.widen_weights(narrow, tree)
    assert {k: v.dtype for k, v in back.items()} == {k: v.dtype for k, v in tree.items()}
    assert back["w"][0] == np.float32(1 / 3).astype(jnp.bfloat16).astype(np.float32) != np.float32(1 / 3)


def test_loading_gives_float32_weights_rounded_through_bfloat16(tmp_path, tiny_zoo, trained, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the catalogue's checkpoint path is relative to it
    exported = publish.export(tiny_zoo.run, tmp_path / "tiny-bf16", measure=False, weights_dtype="bfloat16")
    catalogue_of(exported, tmp_path, monkeypatch)
    want = rounded(trained)
    assert any(not np.array_equal(want[p], trained[p]) for p in trained)  # the rounding is real
    for loaded in (zoo.load(exported.path), zoo.load("tiny-bf16")):
        got = flat_weights(loaded.model)
        assert got.keys() == want.keys()
        for path in want:
            assert got[path].dtype == np.float32, path
            np.testing.assert_array_equal(got[path], want[path], err_msg=path)
        assert publish.model_digest(loaded.model) == exported.params_digest != tiny_zoo.digest
    verified = zoo.verify("tiny-bf16")
    assert verified.ok and any(line.startswith("params_digest: ok") for line in verified.checks), verified.checks


def test_the_exported_metrics_are_those_of_the_loaded_weights(tmp_path, tiny_zoo, tiny_mnist_everywhere, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exported = publish.export(tiny_zoo.run, tmp_path / "tiny-m", weights_dtype="bfloat16")
    assert exported.metrics == zoo.load(exported.path).evaluate(tiny_mnist_everywhere)
    assert exported.metrics != zoo.load(tiny_zoo.run).evaluate(tiny_mnist_everywhere)  # rounding shows
    catalogue_of(exported, tmp_path, monkeypatch)
    verified = zoo.verify("tiny-m")
    assert verified.ok and dict(verified.metrics) == exported.metrics, verified.checks


def test_a_rerun_digest_is_taken_after_the_same_rounding(tmp_path, tiny_zoo, monkeypatch):
    """What `zoo verify --reproduce` compares: the card's checkpoint says bfloat16, so the rerun is rounded too."""
    monkeypatch.chdir(tmp_path)
    exported = publish.export(tiny_zoo.run, tmp_path / "tiny-r", measure=False, weights_dtype="bfloat16")
    catalogue_of(exported, tmp_path, monkeypatch)
    entry = registry.get_pretrained("tiny-r")
    assert publish.card_weights_dtype(entry) == "bfloat16"
    assert publish.weights_digest(tiny_zoo.run, "bfloat16") == exported.params_digest
    assert publish.weights_digest(tiny_zoo.run) == tiny_zoo.digest


def test_init_from_a_bfloat16_export(tmp_path, tiny_zoo, trained):
    exported = publish.export(tiny_zoo.run, tmp_path / "half", measure=False, weights_dtype="bfloat16")
    plugin = registry.get_plugin("vae")
    fresh = nnx.to_pure_dict(nnx.state(zoo.build("vae", "dense-20")))
    started = {p: np.asarray(v) for p, v in checkpoint.tree_paths(pretrained.init_from(exported.path, plugin, fresh)).items()}
    want = rounded(trained)
    for path in want:
        assert started[path].dtype == np.float32, path
        np.testing.assert_array_equal(started[path], want[path], err_msg=path)

    data = zoo.data.synthetic("mnist", 64)
    tiny = dict(steps=1, batch_size=8, optimizer="sgd", b1=0.0, learning_rate=1e-12, progress=False)
    zoo.train("vae", workdir=tmp_path / "run", init_from=str(exported.path), train_data=data, eval_data=data, **tiny)
    after = flat_weights(zoo.load(tmp_path / "run").model)
    for path in want:  # one SGD step at 1e-12 moves nothing visible
        assert after[path].dtype == np.float32, path
        np.testing.assert_allclose(after[path], want[path], rtol=0, atol=1e-6, err_msg=path)


def test_a_shape_mismatch_is_still_refused(tmp_path, tiny_zoo):
    exported = publish.export(tiny_zoo.run, tmp_path / "half", measure=False, weights_dtype="bfloat16")
    with pytest.raises(CheckpointError, match="does not fit the model") as error:
        zoo.load(exported.path, latent_dim=16)
    assert "encoder/stats/kernel: model (128, 32), checkpoint (128, 40)" in str(error.value)
    fresh = nnx.to_pure_dict(nnx.state(zoo.build("vae", "dense-20", latent_dim=16)))
    with pytest.raises(UsageError, match="does not declare these replaceable") as refused:
        pretrained.init_from(exported.path, registry.get_plugin("vae"), fresh)
    assert "encoder/stats/kernel: model (128, 32), checkpoint (128, 40)" in str(refused.value)


def abstract(tree, **dtypes):
    """``tree`` as ShapeDtypeStructs, the leaves named in ``dtypes`` given another dtype."""
    return {k: jax.ShapeDtypeStruct(v.shape, dtypes.get(k, v.dtype)) for k, v in tree.items()}


def test_any_other_dtype_difference_is_refused(tmp_path):
    tree = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "n": np.arange(3, dtype=np.int32)}
    narrowed = checkpoint.narrow_weights(tree, "bfloat16")
    checkpoint.save(tmp_path / "declared", {"model": narrowed}, {"weights_dtype": "bfloat16"}, portable=True)
    checkpoint.save(tmp_path / "silent", {"model": narrowed}, {}, portable=True)  # bfloat16, but the meta does not say
    checkpoint.save(tmp_path / "full", {"model": tree}, {}, portable=True)

    back = checkpoint.restore(tmp_path / "declared", {"model": abstract(tree)})["model"]
    assert back["w"].dtype == np.float32 and np.array_equal(back["w"], rounded(tree)["w"])
    refusals = [
        ("declared", abstract(tree, w=np.float16), "w: model float16, checkpoint bfloat16"),
        ("declared", abstract(tree, n=np.float32), "n: model float32, checkpoint int32"),
        ("silent", abstract(tree), "w: model float32, checkpoint bfloat16"),
        ("full", abstract(tree, w=jnp.bfloat16), "w: model bfloat16, checkpoint float32"),
    ]
    for folder, target, line in refusals:
        with pytest.raises(CheckpointError, match="does not fit the model") as error:
            checkpoint.restore(tmp_path / folder, {"model": target})
        assert f"  {line}" in str(error.value).splitlines(), (folder, str(error.value))


def test_an_unknown_weights_dtype_is_one_line_and_exit_2(tmp_path, tiny_zoo):
    code, out, err = run_main(["export", str(tiny_zoo.run), str(tmp_path / "x"), "--weights-dtype", "float8"])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "'float8'" in err and "bfloat16" in err, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="bfloat16"):
        publish.export(tiny_zoo.run, tmp_path / "y", weights_dtype="float16")


@pytest.mark.slow
def test_verify_reproduce_rounds_the_rerun_as_the_card_was(tmp_path, monkeypatch, tiny_mnist_everywhere):
    """A bfloat16 card: `zoo verify --reproduce` retrains and compares the rounded weights' digest."""
    monkeypatch.chdir(tmp_path)
    zoo.train("vae", workdir=tmp_path / "run", steps=2, batch_size=8, seed=1, progress=False)
    exported = publish.export(tmp_path / "run", tmp_path / "tiny-half", measure=False, weights_dtype="bfloat16")
    catalogue_of(exported, tmp_path, monkeypatch)
    code, out, err = run_main(["verify", "--reproduce", "tiny-half"])
    assert code == 0 and f"tiny-half: reproduced (params_digest {exported.params_digest}" in out, (out, err)
