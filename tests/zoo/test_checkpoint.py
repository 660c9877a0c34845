"""zoo.checkpoint: manifests, tree comparison, params_digest, step folders, resume, device counts.

The guarantees (DESIGN.md, Checkpoints): a checkpoint is sealed by a MANIFEST of
sha256s and any change to any byte is refused, naming the file, before anything
is restored; a step folder counts only once sealed and verified; a resumed run
starts from the newest verified step; and a checkpoint written on 8 devices
loads on 1 (and back) with bitwise-identical parameters.

The real checkpoint comes from ``fixtures_checkpoints.tiny_zoo`` (one 4-step
training per session); everything else is built here in a few milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import textwrap

import jax
import numpy as np
import pytest
from fixtures_checkpoints import (  # noqa: F401 - fixtures are used by name
    files_of,
    flip_byte,
    isolated_env,
    TRAIN,
    TRAIN_MESH,
    subprocess_env,
    tiny_images,
    tiny_zoo,
)
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

import zoo
from zoo import checkpoint, registry
from zoo.checkpoint import MANIFEST, CheckpointError, StepDirectory
from zoo.errors import IntegrityError, ZooError

# --------------------------------------------------------------------------- helpers


def make_folder(root, files: dict[str, bytes]):
    """A folder holding ``files`` (relative posix path -> bytes)."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


SMALL = {"meta/metadata": b'{"step": 1}', "model/d/blob": b"\x00\x01weights" * 100, "model/_METADATA": b"{}"}


def sealed_step(root, step: int, evaluation: dict | None = None, payload: bytes = b"w" * 64):
    """A synthetic step folder shaped like the loop's (meta JSON, a data file), sealed."""
    folder = make_folder(
        root / str(step),
        {
            "meta/metadata": json.dumps({"step": step, "eval": evaluation or {}}).encode(),
            "model/d/blob": payload + step.to_bytes(4, "little"),
        },
    )
    checkpoint.write_manifest(folder)
    return folder


def vae_target(mesh_shape: dict[str, int], **overrides):
    """Abstract restore target of the dense-20 VAE, sharded by the rules on a mesh of ``mesh_shape``."""
    from flax import nnx

    from zoo import sharding, training
    from zoo.config import make_config

    plugin = registry.get_plugin("vae")
    config = make_config(plugin, "dense-20", overrides)
    mesh = sharding.make_mesh(mesh_shape)
    model_def = training.ModelDef.create(lambda: plugin.resolve("build")(config, nnx.Rngs(0)), mesh, [nnx.Param])
    return sharding.abstract(model_def.abstract, model_def.shardings)


def must_not_restore(monkeypatch):
    """Make any attempt to read arrays (or their metadata) fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("restore was attempted on a checkpoint that should have been refused")

    monkeypatch.setattr(checkpoint, "_checkpointer", forbidden)
    monkeypatch.setattr(checkpoint, "stored_tree", forbidden)


# =========================================================================== manifests


def test_write_manifest_round_trip(tmp_path):
    folder = make_folder(tmp_path / "ckpt", SMALL)
    sha = checkpoint.write_manifest(folder)

    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format"] == 1
    assert sorted(manifest["files"]) == sorted(SMALL)  # every file, and not the manifest itself
    for name, data in SMALL.items():
        assert manifest["files"][name] == hashlib.sha256(data).hexdigest()
    assert sha == checkpoint.manifest_sha256(folder) == hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    assert files_of(folder) == sorted([*SMALL, MANIFEST])  # no temp file left behind

    checkpoint.verify(folder)
    checkpoint.verify(folder, sha)
    assert checkpoint.write_manifest(folder) == sha  # deterministic: sealing twice pins the same bytes


def test_verify_refuses_a_folder_without_manifest(tmp_path):
    folder = make_folder(tmp_path / "ckpt", SMALL)
    with pytest.raises(CheckpointError, match="has no MANIFEST.json"):
        checkpoint.verify(folder)


def test_verify_refuses_a_manifest_that_is_not_the_pinned_one(tmp_path):
    folder = make_folder(tmp_path / "ckpt", SMALL)
    sha = checkpoint.write_manifest(folder)
    other = "0" * 64
    with pytest.raises(IntegrityError, match="pinned") as error:
        checkpoint.verify(folder, other)
    assert str(folder / MANIFEST) in str(error.value)
    # Re-sealing after a change gives a valid manifest, but not the pinned one.
    (folder / "model" / "d" / "blob").write_bytes(b"tampered")
    new_sha = checkpoint.write_manifest(folder)
    checkpoint.verify(folder)  # self-consistent...
    with pytest.raises(IntegrityError, match="pinned") as error:  # ...but not what the catalogue pinned
        checkpoint.verify(folder, sha)
    assert MANIFEST in str(error.value) and new_sha != sha


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"format": 1}', '{"format": 1, "files": []}'])
def test_verify_refuses_an_unreadable_manifest(tmp_path, text):
    folder = make_folder(tmp_path / "ckpt", SMALL)
    (folder / MANIFEST).write_text(text)
    with pytest.raises(IntegrityError, match="not a valid manifest") as error:
        checkpoint.verify(folder)
    assert MANIFEST in str(error.value)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_verify_names_a_missing_file(tmp_path, name):
    folder = make_folder(tmp_path / "ckpt", SMALL)
    sha = checkpoint.write_manifest(folder)
    (folder / name).unlink()
    for pinned in (None, sha):
        with pytest.raises(IntegrityError, match="missing") as error:
            checkpoint.verify(folder, pinned)
        assert str(folder / name) in str(error.value)


@pytest.mark.parametrize("name", ["extra.bin", ".hidden", "model/extra", "model/d/new-chunk", f"model/{MANIFEST}"])
def test_verify_names_an_extra_unlisted_file(tmp_path, name):
    folder = make_folder(tmp_path / "ckpt", SMALL)
    sha = checkpoint.write_manifest(folder)
    make_folder(folder, {name: b"smuggled"})
    for pinned in (None, sha):
        with pytest.raises(IntegrityError, match="not listed") as error:
            checkpoint.verify(folder, pinned)
        assert str(folder / name) in str(error.value)


def test_every_byte_of_a_real_checkpoint_is_covered(tmp_path, tiny_zoo):
    """Flip one byte of each file of the export (pinned) and of a training step (unpinned)."""
    export = shutil.copytree(tiny_zoo.checkpoint, tmp_path / "export")
    step = shutil.copytree(tiny_zoo.run / "checkpoints" / "4", tmp_path / "4")
    names = files_of(export)
    assert MANIFEST in names and len(names) >= 10  # meta, model (Orbax: one zarr array per parameter), the manifest
    assert any(n.startswith("train/") for n in files_of(step))  # optimizer state is sealed too

    checked = []
    for folder, pinned in ((export, tiny_zoo.sha256), (step, None)):
        checkpoint.verify(folder, pinned)
        for name in files_of(folder):
            original = (folder / name).read_bytes()
            flip_byte(folder / name)
            with pytest.raises(IntegrityError) as error:
                checkpoint.verify(folder, pinned)
            message = str(error.value)
            assert str(folder / name) in message, f"flipping a byte of {name} gave: {message}"
            assert len(message.splitlines()) == 1
            (folder / name).write_bytes(original)
            checked.append(name)
        checkpoint.verify(folder, pinned)  # restored: intact again
    assert len(checked) == len(names) + len(files_of(step))


def test_restore_verifies_before_reading_anything(tmp_path, tiny_zoo, monkeypatch):
    """checkpoint.restore (used by load, resume and export) refuses a damaged folder before Orbax opens it."""
    folder = shutil.copytree(tiny_zoo.run / "checkpoints" / "4", tmp_path / "4")
    victim = folder / max(files_of(folder), key=lambda n: (folder / n).stat().st_size)
    flip_byte(victim)
    must_not_restore(monkeypatch)
    target = {"model": vae_target({"fsdp": 8})}
    with pytest.raises(IntegrityError) as error:
        checkpoint.restore(folder, target)
    assert str(victim) in str(error.value)
    with pytest.raises(IntegrityError, match="pinned"):
        checkpoint.restore(shutil.copytree(tiny_zoo.checkpoint, tmp_path / "export"), target, "f" * 64)


def test_manifest_edits_are_refused_when_pinned(tmp_path, tiny_zoo):
    folder = shutil.copytree(tiny_zoo.checkpoint, tmp_path / "export")
    manifest = json.loads((folder / MANIFEST).read_text())
    # Semantically identical, byte-wise different: the files are intact, but the pin refuses it.
    (folder / MANIFEST).write_text(json.dumps(manifest) + "\n")
    checkpoint.verify(folder)
    with pytest.raises(IntegrityError, match="pinned") as error:
        checkpoint.verify(folder, tiny_zoo.sha256)
    assert str(folder / MANIFEST) in str(error.value)


# =========================================================================== trees and digests


def test_compare_trees_lists_every_difference_in_one_error():
    sds = jax.ShapeDtypeStruct
    expected = {"encoder": {"kernel": sds((2, 3), np.float32), "bias": sds((3,), np.float32)}, "head": sds((4,), np.float32)}
    stored = {"encoder/kernel": sds((3, 3), np.float32), "encoder/bias": sds((3,), np.float32), "extra": sds((1,), np.float32)}
    with pytest.raises(CheckpointError) as error:
        checkpoint.compare_trees(expected, stored, "ckpt")
    assert str(error.value) == textwrap.dedent(
        """\
        ckpt does not fit the model (3 difference(s)):
          encoder/kernel: model (2, 3), checkpoint (3, 3)
          head: model (4,), checkpoint has no such parameter
          extra: checkpoint (1,), model has no such parameter"""
    )
    same = {"encoder/kernel": sds((2, 3), np.float32), "encoder/bias": sds((3,), np.float32), "head": sds((4,), np.float32)}
    checkpoint.compare_trees(expected, same, "ckpt")  # no error


def _tree(order: str = "ab"):
    parts = {
        "a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "bias": np.zeros(4, np.float32)},
        "b": {"scale": np.ones(2, np.float32), "count": np.array(7, np.int32)},
    }
    return {k: parts[k] for k in order}


def test_params_digest_is_equal_for_identical_trees():
    assert checkpoint.params_digest(_tree()) == checkpoint.params_digest(_tree())
    assert len(checkpoint.params_digest(_tree())) == 64


def test_params_digest_ignores_dict_insertion_order():
    reordered = {"b": {"count": np.array(7, np.int32), "scale": np.ones(2, np.float32)}, "a": dict(reversed(_tree()["a"].items()))}
    assert list(reordered) != list(_tree())
    assert checkpoint.params_digest(_tree("ba")) == checkpoint.params_digest(_tree("ab"))
    assert checkpoint.params_digest(reordered) == checkpoint.params_digest(_tree())


def test_params_digest_changes_with_any_element():
    reference = checkpoint.params_digest(_tree())
    digests = set()
    for group, leaf in [("a", "kernel"), ("a", "bias"), ("b", "scale"), ("b", "count")]:
        changed = _tree()
        array = changed[group][leaf].copy()
        array.reshape(-1)[-1] += 1
        changed[group][leaf] = array
        digests.add(checkpoint.params_digest(changed))
    # The smallest possible change: one bit of one float.
    one_bit = _tree()
    bits = one_bit["a"]["kernel"].view(np.uint32).copy()
    bits.reshape(-1)[5] ^= 1
    one_bit["a"]["kernel"] = bits.view(np.float32)
    digests.add(checkpoint.params_digest(one_bit))
    assert reference not in digests and len(digests) == 5
    # The same bytes under another dtype, shape or name are different parameters.
    tree = _tree()
    assert checkpoint.params_digest({**tree, "b": {**tree["b"], "count": np.array(7, np.uint32)}}) != reference
    assert checkpoint.params_digest({**tree, "a": {**tree["a"], "kernel": tree["a"]["kernel"].reshape(4, 3)}}) != reference
    assert checkpoint.params_digest({"c": tree["a"], "b": tree["b"]}) != reference


def test_params_digest_is_independent_of_placement():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.sharding.Mesh(np.asarray(devices), ("fsdp",))
    kernel = np.arange(16, dtype=np.float32).reshape(8, 2)
    split = jax.device_put(kernel, NamedSharding(mesh, PartitionSpec("fsdp")))
    whole = jax.device_put(kernel, SingleDeviceSharding(devices[0]))
    assert len(split.sharding.device_set) == 8 and split.addressable_shards[0].data.shape == (1, 2)
    digests = {checkpoint.params_digest({"k": x}) for x in (split, whole, kernel)}
    assert len(digests) == 1


# =========================================================================== step folders


STRAYS = {
    "an empty integer folder": lambda root: (root / "9").mkdir(),
    "an interrupted Orbax save": lambda root: sealed_step(root, 9).rename(root / "9.orbax-checkpoint-tmp"),
    "an interrupted Orbax save (timestamped)": lambda root: sealed_step(root, 9).rename(root / "9.orbax-checkpoint-tmp-1732000000"),
    "a step whose data file was deleted": lambda root: (sealed_step(root, 9) / "model" / "d" / "blob").unlink(),
    "a step with no MANIFEST": lambda root: (sealed_step(root, 9) / MANIFEST).unlink(),
    "a step with a corrupted file": lambda root: flip_byte(sealed_step(root, 9) / "model" / "d" / "blob"),
    "a step with an unlisted file": lambda root: (sealed_step(root, 9) / "model" / "d" / "extra").write_bytes(b"x"),
}


@pytest.mark.parametrize("stray", sorted(STRAYS))
def test_steps_ignore_strays_with_a_warning(tmp_path, caplog, stray):
    root = tmp_path / "checkpoints"
    sealed_step(root, 2)
    sealed_step(root, 4)
    STRAYS[stray](root)
    [stray_path] = [p for p in root.iterdir() if p.name.startswith("9")]
    store = StepDirectory(root)

    with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
        assert store.steps() == [2, 4]
        assert store.latest() == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(stray_path) in w for w in warnings), warnings
    assert not any(str(root / "2") in w or str(root / "4") in w for w in warnings)
    assert stray_path.exists()  # ignored, not deleted: it may be evidence


def test_steps_of_a_missing_or_empty_folder(tmp_path):
    assert StepDirectory(tmp_path / "nowhere").steps() == []
    assert StepDirectory(tmp_path / "nowhere").latest() is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "9").mkdir()
    assert StepDirectory(tmp_path / "empty").latest() is None


def test_real_steps_with_deleted_data_are_ignored(tmp_path, tiny_zoo, caplog):
    root = tmp_path / "checkpoints"
    shutil.copytree(tiny_zoo.run / "checkpoints" / "4", root / "4")
    broken = shutil.copytree(tiny_zoo.run / "checkpoints" / "4", root / "8")
    chunk = next(p for p in sorted((broken / "model").rglob("*")) if p.is_file() and p.parent.name == "d")
    chunk.unlink()
    with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
        assert StepDirectory(root).latest() == 4
    assert any(str(chunk) in r.getMessage() for r in caplog.records)


def test_save_replaces_a_stale_unsealed_step_and_refuses_a_sealed_one(tmp_path):
    root = tmp_path / "checkpoints"
    make_folder(root / "3", {"model/leftover": b"from a killed run"})
    store = StepDirectory(root)
    assert store.steps() == []
    weights = {"w": np.arange(4, dtype=np.float32)}
    store.save(3, {"model": weights}, {"step": 3})
    assert store.steps() == [3]
    assert not (root / "3" / "model" / "leftover").exists()
    target = {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=SingleDeviceSharding(jax.devices()[0]))}
    restored = checkpoint.restore(root / "3", {"model": target})["model"]
    np.testing.assert_array_equal(np.asarray(restored["w"]), weights["w"])
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        checkpoint.save(root / "3", {"model": weights}, {"step": 3})
    checkpoint.verify(root / "3")


@pytest.mark.parametrize(
    ("keep", "metric", "kept"),
    [
        (2, None, [5, 6]),
        (2, ("neg_elbo", "min"), [2, 5, 6]),  # the best is old: kept besides the newest
        (2, ("neg_elbo", "max"), [3, 5, 6]),
        (3, ("neg_elbo", "min"), [2, 4, 5, 6]),
        (2, ("accuracy", "min"), [5, 6]),  # no step measured it: newest only
        (0, ("neg_elbo", "min"), [2]),
        (10, ("neg_elbo", "min"), [1, 2, 3, 4, 5, 6]),
    ],
)
def test_prune_keeps_newest_and_best(tmp_path, keep, metric, kept):
    root = tmp_path / "checkpoints"
    scores = {1: 90.0, 2: 80.0, 3: 120.0, 4: 85.0, 5: 100.0, 6: None}
    for step, score in scores.items():
        sealed_step(root, step, {"neg_elbo": score} if score is not None else {})
    (root / "7.orbax-checkpoint-tmp").mkdir()
    store = StepDirectory(root)
    store.prune(keep, metric)
    assert store.steps() == kept
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == [str(s) for s in kept]
    assert (root / "7.orbax-checkpoint-tmp").exists()  # prune deletes only sealed steps


# =========================================================================== resume


def test_resume_picks_the_newest_verified_step(tmp_path, tiny_zoo, caplog):
    """A copy of the shared run (steps 2 and 4) with step 4 damaged resumes from 2 and finishes."""
    workdir = shutil.copytree(tiny_zoo.run, tmp_path / "run")
    store = StepDirectory(workdir / "checkpoints")
    assert store.steps() == [2, 4]

    damaged = [next(p for p in sorted((store.path(4) / item).rglob("*")) if p.is_file() and p.parent.name == "d") for item in ("model", "train")]
    for path in damaged:
        flip_byte(path)
    data = tiny_images()
    with caplog.at_level(logging.WARNING, logger="zoo.checkpoint"):
        assert store.latest() == 2
        resumed = zoo.train(
            "vae", workdir=workdir, mesh=TRAIN_MESH, train_data=data, eval_data=data, progress=False, **{**TRAIN, "steps": 6}
        )
    assert resumed.resumed_from == 2
    assert resumed.step == 6
    assert any(str(damaged[0]) in r.getMessage() for r in caplog.records)
    assert store.steps() == [2, 4, 6]  # step 4 was written afresh, sealed and verified

    # Resuming from step 2 is exact: the new step 4 holds the parameters of the run never interrupted.
    again = checkpoint.restore(store.path(4), {"model": vae_target({"fsdp": 8})})["model"]
    assert checkpoint.params_digest(again) == tiny_zoo.digest
    assert resumed.params_digest != tiny_zoo.digest  # and it went on to step 6


# =========================================================================== device counts

SUBPROCESS = """
import json, sys
import jax, numpy as np
from flax import nnx
import zoo, zoo.publish
from zoo import checkpoint

run, out = sys.argv[1], sys.argv[2]
loaded = zoo.load(run)
variables = nnx.to_pure_dict(nnx.state(loaded.model))
np.save(out + "/samples.npy", loaded.sample(4, seed=0), allow_pickle=False)
sha = zoo.publish.export(run, out + "/saved-on-one", measure=False).sha256
print(json.dumps({
    "devices": jax.device_count(),
    "kernel_devices": len(variables["encoder"]["hidden"]["kernel"].sharding.device_set),
    "digest": checkpoint.params_digest(variables),
    "sha256": sha,
}))
"""


def _saved_sharding(folder, path=("encoder", "hidden", "kernel")):
    """The sharding Orbax recorded for one array (None for the host arrays of a portable export)."""
    import orbax.checkpoint as ocp

    node = dict(ocp.StandardCheckpointHandler().metadata((folder / "model").absolute()).tree)
    for key in path:
        node = node[key]
    return node.sharding


def _mesh_devices(folder):
    """(device count of the mesh the array was saved from, its saved PartitionSpec)."""
    sharding = _saved_sharding(folder)
    return int(np.prod(sharding.shape)), tuple(sharding.partition_spec)


def test_checkpoints_move_between_8_devices_and_1(tmp_path, tiny_zoo):
    import subprocess
    import sys

    from flax import nnx

    step = tiny_zoo.run / "checkpoints" / "4"
    # Saved while sharded: the encoder's input dimension split over fsdp=8.
    assert _mesh_devices(step) == (8, ("fsdp", None))

    # On 8 devices, restored onto fsdp-sharded targets: the trained parameters, bitwise.
    on_eight = checkpoint.restore(step, {"model": vae_target({"fsdp": 8})})["model"]
    kernel = on_eight["encoder"]["hidden"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.sharding.spec == PartitionSpec("fsdp", None)
    assert len({s.data.shape for s in kernel.addressable_shards}) == 1 and kernel.addressable_shards[0].data.shape == (98, 128)
    assert checkpoint.params_digest(on_eight) == tiny_zoo.digest

    # On 1 device (a fresh process): load the workdir, sample, and export (portable: host arrays).
    out = tmp_path / "one"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS, str(tiny_zoo.run), str(out)],
        capture_output=True, text=True, env=subprocess_env(devices=1), timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 1 and report["kernel_devices"] == 1
    assert report["digest"] == tiny_zoo.digest

    saved_on_one = out / "saved-on-one"
    assert _saved_sharding(saved_on_one) is None  # no trace of the mesh it was exported from
    assert checkpoint.manifest_sha256(saved_on_one) == report["sha256"]

    # ...and back on 8 devices: through zoo.load (replicated) and onto fsdp-sharded targets.
    loaded = zoo.load(saved_on_one)
    variables = nnx.to_pure_dict(nnx.state(loaded.model))
    assert len(variables["encoder"]["hidden"]["kernel"].sharding.device_set) == 8
    assert checkpoint.params_digest(variables) == tiny_zoo.digest
    np.testing.assert_allclose(loaded.sample(4, seed=0), np.load(out / "samples.npy"), rtol=0, atol=1e-6)
    sharded = checkpoint.restore(saved_on_one, {"model": vae_target({"fsdp": 8})})["model"]
    assert sharded["encoder"]["hidden"]["kernel"].sharding.spec == PartitionSpec("fsdp", None)
    assert checkpoint.params_digest(sharded) == tiny_zoo.digest


def test_restore_refuses_a_shape_mismatch_before_orbax_sees_it(tiny_zoo, monkeypatch):
    monkeypatch.setattr(checkpoint, "_checkpointer", lambda: pytest.fail("Orbax restore was reached"))
    with pytest.raises(CheckpointError) as error:
        checkpoint.restore(tiny_zoo.checkpoint, {"model": vae_target({"fsdp": 8}, latent_dim=16)}, tiny_zoo.sha256)
    message = str(error.value)
    assert "encoder/stats/kernel: model (128, 32), checkpoint (128, 40)" in message
    assert isinstance(error.value, ZooError)
