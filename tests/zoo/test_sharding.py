"""zoo.sharding through the loop: the same training on any mesh, parameters really split.

DESIGN.md: "The same code runs on 1 device, 8 devices, and several processes";
models name logical axes and one rules table (``zoo.sharding.RULES``) maps them
onto the ``data`` x ``fsdp`` x ``tensor`` mesh; parameters are created already
sharded. Here the dense-20 VAE trains 30 steps on the conftest's 8 CPU devices
with three layouts and once on a single device (a subprocess: the device count
is fixed when the backend starts), the live state of each run is inspected
where the loop saves it, and the losses are compared.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from fixtures_checkpoints import subprocess_env
from jax.sharding import PartitionSpec

import zoo
import zoo.data
from zoo import checkpoint, sharding, training
from zoo.errors import UsageError

STEPS, BATCH, N = 30, 16, 256
MESHES = ("data=8", "data=4,tensor=2", "fsdp=8")

ONE_DEVICE = """
import json, sys
import jax, zoo, zoo.data
data = zoo.data.synthetic("mnist", {n})
r = zoo.train("vae", workdir=sys.argv[1], train_data=data, eval_data=data, progress=False, steps={steps}, batch_size={batch})
print(json.dumps({{"devices": jax.device_count(), "loss": r.loss, "digest": r.params_digest}}))
""".format(n=N, steps=STEPS, batch=BATCH)


def spec(s: PartitionSpec) -> tuple:
    """A PartitionSpec as a tuple without trailing Nones (P("fsdp") and P("fsdp", None) are one layout)."""
    parts = list(s)
    while parts and parts[-1] is None:
        parts.pop()
    return tuple(parts)


def describe(array: jax.Array) -> dict:
    return {
        "spec": spec(array.sharding.spec),
        "devices": len(array.sharding.device_set),
        "shard": array.addressable_shards[0].data.shape,
        "distinct": len({tuple((i.start, i.stop) for i in s.index) for s in array.addressable_shards}),
        "shape": array.shape,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three 8-device runs (live shardings captured at the final save) and the 1-device reference."""
    root = tmp_path_factory.mktemp("meshes")
    reference = subprocess.Popen(  # runs while the 8-device runs do
        [sys.executable, "-c", ONE_DEVICE, str(root / "one")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(devices=1),
    )
    data = zoo.data.synthetic("mnist", N)
    found = {}
    for mesh in MESHES:
        captured: dict = {"batch_shardings": []}
        real_save, real_jit = checkpoint.StepDirectory.save, jax.jit

        def save(self, step, items, meta, captured=captured):
            captured["model"] = {p: describe(a) for p, a in checkpoint.tree_paths(items["model"]).items()}
            captured["train"] = {p: describe(a) for p, a in checkpoint.tree_paths(items["train"]).items()}
            return real_save(self, step, items, meta)

        def jit(fn, *args, captured=captured, **kwargs):
            if kwargs.get("donate_argnums") == 0:  # the loop's call: (state, sums, rows, batch, key) -> (state, sums)
                captured["batch_shardings"].append(kwargs["in_shardings"][-2])  # the batch (or its row indices)
            return real_jit(fn, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(checkpoint.StepDirectory, "save", save)
            mp.setattr(jax, "jit", jit)
            result = zoo.train(
                "vae", workdir=root / mesh.replace(",", "_"), mesh=mesh, train_data=data, eval_data=data,
                progress=False, steps=STEPS, batch_size=BATCH,
            )
        found[mesh] = (result, captured)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    found["one"] = json.loads(out.strip().splitlines()[-1])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_loss_matches_the_one_device_run(runs, mesh):
    one = runs["one"]
    assert one["devices"] == 1
    result, _ = runs[mesh]
    assert result.step == STEPS
    assert result.loss == pytest.approx(one["loss"], rel=1e-5)
    assert np.isfinite(result.loss) and result.loss < 600  # it trained (untrained: about 545 nats + noise)


def test_the_rules_this_file_relies_on():
    rules = dict(sharding.RULES)
    assert rules["batch"] == ("data", "fsdp") and rules["embed"] == "fsdp" and rules["mlp"] == "tensor"
    assert rules["latent"] is None


# Logical axes of the dense VAE (zoo_vae/model.py) and what the rules make of them:
#   encoder/hidden/kernel (784, 128) ("embed", "mlp")    decoder/logits/kernel (128, 784) ("mlp", "embed")
#   encoder/stats/kernel  (128, 40)  ("mlp", "latent")   decoder/hidden/kernel (20, 128)  ("latent", "mlp")
EXPECTED = {
    "fsdp=8": {  # embed over fsdp; tensor has size 1, so mlp stays whole
        "encoder/hidden/kernel": (("fsdp",), (98, 128)),
        "decoder/logits/kernel": ((None, "fsdp"), (128, 98)),
        "encoder/stats/kernel": ((), (128, 40)),
        "decoder/hidden/kernel": ((), (20, 128)),
        "decoder/logits/bias": ((), (784,)),
    },
    "data=4,tensor=2": {  # mlp over tensor; fsdp has size 1, so embed stays whole
        "encoder/hidden/kernel": ((None, "tensor"), (784, 64)),
        "decoder/logits/kernel": (("tensor",), (64, 784)),
        "encoder/stats/kernel": (("tensor",), (64, 40)),
        "decoder/hidden/kernel": ((None, "tensor"), (20, 64)),
        "decoder/logits/bias": ((), (784,)),
    },
    "data=8": {  # pure data parallel: everything replicated
        "encoder/hidden/kernel": ((), (784, 128)),
        "decoder/logits/kernel": ((), (128, 784)),
        "encoder/stats/kernel": ((), (128, 40)),
        "decoder/hidden/kernel": ((), (20, 128)),
        "decoder/logits/bias": ((), (784,)),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_parameters_and_optimizer_state_are_split_as_the_rules_say(runs, mesh):
    _, captured = runs[mesh]
    model, train = captured["model"], captured["train"]
    for path, (want_spec, want_shard) in EXPECTED[mesh].items():
        got = model[path]
        assert got["devices"] == 8, path
        assert (got["spec"], got["shard"]) == (want_spec, want_shard), path
        # Adam's moments live where their parameters live.
        for moment in ("mu", "nu"):
            (opt_path,) = [p for p in train if p.endswith(f"{moment}/{path}")]
            assert (train[opt_path]["spec"], train[opt_path]["shard"]) == (want_spec, want_shard), opt_path
    assert train["step"]["spec"] == ()


@pytest.mark.slow
@pytest.mark.parametrize("mesh,rows,distinct", [("data=8", 2, 8), ("data=4,tensor=2", 4, 4), ("fsdp=8", 2, 8)])
def test_batches_split_over_data_times_fsdp(runs, mesh, rows, distinct):
    """The step is compiled for batches split over data x fsdp (jit places every batch so)."""
    _, captured = runs[mesh]
    (batch_sharding,) = captured["batch_shardings"]
    assert spec(batch_sharding.spec) == (("data", "fsdp"),)
    assert dict(batch_sharding.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1} | sharding.parse_mesh(mesh)
    image = describe(jax.device_put(zoo.data.synthetic("mnist", BATCH)["image"], batch_sharding))
    assert image["devices"] == 8
    assert image["shard"] == (rows, 28, 28, 1)
    assert image["distinct"] == distinct  # with tensor=2 each quarter of the batch sits on 2 devices


@pytest.mark.parametrize(
    "mesh,batch,options,needle",
    [
        ("data=4,tensor=2", 6, {}, "batch size 6 does not divide over the mesh's data x fsdp = 4 shards; use a multiple of 4"),
        ("fsdp=8", 12, {}, "batch size 12 does not divide over the mesh's data x fsdp = 8 shards"),
        ("data=8", 32, {"grad_accum": 8}, "micro-batch size 4 does not divide over the mesh's data x fsdp = 8 shards"),
        ("data=16", 16, {}, "mesh data=16 needs 16 devices; there are 8"),
        ("data=2,fsdp=2,tensor=3", 4, {}, "needs 12 devices; there are 8"),
    ],
)
def test_bad_layouts_are_usage_errors_before_anything_compiles(tmp_path, monkeypatch, mesh, batch, options, needle):
    def compiled(*args, **kwargs):
        raise AssertionError("the model was built before the layout was checked")

    monkeypatch.setattr(training.ModelDef, "create", compiled)
    data = zoo.data.synthetic("mnist", 64)
    with pytest.raises(UsageError) as error:
        zoo.train("vae", workdir=tmp_path / "w", mesh=mesh, train_data=data, progress=False, steps=2, batch_size=batch, **options)
    assert needle in str(error.value)
    assert not (tmp_path / "w").exists()


def test_batch_not_dividing_tensor_is_fine():
    """Only data x fsdp split the batch: 4 examples on data=4,tensor=2 is a valid layout."""
    sharding.check_batch_size(4, sharding.make_mesh({"data": 4, "tensor": 2}))
    mesh = sharding.make_mesh({"data": 4, "tensor": 2})
    placed = sharding.put_global_batch({"x": np.arange(4.0)}, sharding.batch_sharding(mesh), 4)["x"]
    assert {s.data.shape for s in placed.addressable_shards} == {(1,)}


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("leading", [0, 1])
def test_put_global_batch_splits_the_batch_axis(mesh, leading):
    """What the prefetch thread does on accelerators: batch (or stacked batches, leading=1) split over data x fsdp."""
    mesh_ = sharding.make_mesh(sharding.parse_mesh(mesh))
    shards = sharding.mesh_size(mesh_, sharding.BATCH_AXES)
    shape = (BATCH, 3) if leading == 0 else (4, BATCH, 3)
    local = {"x": np.arange(np.prod(shape), dtype=np.float32).reshape(shape)}
    placed = sharding.put_global_batch(local, sharding.batch_sharding(mesh_, leading=leading), BATCH, leading=leading)["x"]
    expected = list(shape)
    expected[leading] = BATCH // shards
    assert {s.data.shape for s in placed.addressable_shards} == {tuple(expected)}
    np.testing.assert_array_equal(np.asarray(placed), local["x"])


@pytest.mark.parametrize("text,needle", [("data=0", "positive integer"), ("batch=8", "axes data, fsdp, tensor"), ("data", "AXIS=N")])
def test_parse_mesh_errors(text, needle):
    with pytest.raises(UsageError, match=needle):
        sharding.parse_mesh(text)


def test_partition_spec_replicates_what_does_not_divide():
    mesh = sharding.make_mesh({"fsdp": 8})
    assert sharding.partition_spec(("embed", "mlp"), (784, 128), mesh) == PartitionSpec("fsdp", None)
    assert sharding.partition_spec(("embed", "mlp"), (20, 128), mesh) == PartitionSpec(None, None)  # 20 % 8
    assert sharding.partition_spec(("embed", "embed"), (16, 16), mesh) == PartitionSpec("fsdp", None)  # one axis once
    assert sharding.partition_spec(None, (16,), mesh) == PartitionSpec()


def _linear_on(mesh_shape: dict[str, int]):
    """A Linear whose kernel is split over ``fsdp`` (replicated when the mesh has none)."""
    from flax import nnx

    mesh = sharding.make_mesh(mesh_shape)
    with nnx.use_eager_sharding(False):
        model = nnx.Linear(8, 4, rngs=nnx.Rngs(0), kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", None)))
    graphdef, state = nnx.split(model)
    specs = sharding.state_shardings(state, mesh)
    placed = jax.tree.map(lambda x, s: jax.device_put(x, s), nnx.to_pure_dict(state), specs)
    nnx.replace_by_pure_dict(state, placed)
    return nnx.merge(graphdef, state)


def test_on_one_device_takes_a_replicated_model_off_its_replicas_and_leaves_a_split_one():
    from flax import nnx

    replicated = _linear_on({"data": 8})
    kernel = replicated.kernel[...]
    assert len(kernel.sharding.device_set) == 8 and kernel.is_fully_replicated
    moved = sharding.on_one_device(replicated)
    for x in jax.tree.leaves(nnx.state(moved)):
        assert len(x.sharding.device_set) == 1
    assert np.array_equal(np.asarray(moved.kernel[...]), np.asarray(kernel))
    x = np.ones((3, 8), np.float32)
    assert np.allclose(np.asarray(moved(x)), np.asarray(x @ np.asarray(kernel) + np.asarray(replicated.bias[...])), atol=1e-6)

    split = _linear_on({"fsdp": 8})
    assert not split.kernel[...].is_fully_replicated
    assert sharding.on_one_device(split) is split  # gathering a split model could exceed one device
    assert sharding.on_one_device(moved) is moved  # already on one device
