"""The GPT plugin: causal attention, KV-cache decoding against full recomputation, GPT-2 small's size and
tensor-parallel layout, and a tiny end-to-end run (train, save, load, sample) on real-looking text.

The conformance kit (tests/plugins/test_conformance.py) runs the generic checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from zoo import api, paths, sharding
from zoo.training import ModelDef
from zoo.matrices import matrix_inputs
from zoo_gpt import decode
from zoo_gpt.model import GPT, GPTConfig, attention_implementation

from lm_helpers import tiny_corpus

SMALL = dict(layers=2, width=32, heads=4, context=24)


def small_gpt(seed: int = 0, **overrides) -> GPT:
    with nnx.use_eager_sharding(False):
        return GPT(GPTConfig(**(SMALL | overrides)), nnx.Rngs(seed))


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_attention_is_causal(positions):
    model = small_gpt(positions=positions)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 20))
    changed = tokens.copy()
    changed[:, 12:] = (changed[:, 12:] + 7) % 256
    a, b = np.asarray(model(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(changed)))
    assert np.array_equal(a[:, :12], b[:, :12])  # positions before the change never see it
    assert not np.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cache_extension_gives_the_full_forward_logits(positions):
    model = small_gpt(positions=positions)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 17)))
    full = np.asarray(model(tokens))
    cache = model.empty_cache(3)
    logits, cache = model.extend(tokens[:, :10], cache, jnp.int32(0))  # prefill
    pieces = [np.asarray(logits)]
    for t in range(10, 17):  # one token at a time
        logits, cache = model.extend(tokens[:, t : t + 1], cache, jnp.int32(t))
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=2e-5)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (0.8, 20, 0.9)])
def test_cached_decoding_gives_the_tokens_of_full_recomputation(positions, temperature, top_k, top_p):
    # Context 12: a 6-byte prompt fills a round's first half like every later round
    # (one shape to compile), and 40 tokens take 6 rounds, each restarting from the last 6.
    model = small_gpt(positions=positions, context=12)
    prompt = np.tile(np.frombuffer(b"ROMEO:", np.uint8).astype(np.int32), (2, 1))
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    cached = decode.generate(model, prompt, 40, jax.random.key(3), **options)
    recomputed = decode.generate(model, prompt, 40, jax.random.key(3), cached=False, **options)
    assert cached.shape == (2, 40)
    assert np.array_equal(cached, recomputed)


def test_rotary_positions_refuse_an_odd_head_width():
    with pytest.raises(ValueError, match="even head width; got 33"):
        GPTConfig(width=66, heads=2, positions="rotary")
    assert GPTConfig(width=66, heads=2).head_width == 33  # learned positions take any width


def test_sampling_is_reproducible_and_seeded():
    model = small_gpt()
    first = decode.sample(model, jax.random.key(0), 2, prompt="ROMEO:", length=30)
    assert first == decode.sample(model, jax.random.key(0), 2, prompt="ROMEO:", length=30)
    assert first != decode.sample(model, jax.random.key(1), 2, prompt="ROMEO:", length=30)
    assert all(text.startswith("ROMEO:") and len(text.encode("utf-8", "surrogateescape")) >= 6 for text in first)


def gpt2_small_def(mesh_shape: dict[str, int]) -> ModelDef:
    from zoo.config import make_config
    from zoo import registry

    plugin = registry.get_plugin("gpt")
    config = make_config(plugin, "gpt2-124m")
    return ModelDef.create(lambda: plugin.resolve("build")(config, nnx.Rngs(0)), sharding.make_mesh(mesh_shape), [nnx.Param])


def test_attention_asks_for_the_fused_kernel_only_where_cudnn_takes_it(monkeypatch):
    """JAX 0.10 runs XLA's unfused attention unless told: "auto" names cuDNN's on a GPU in 16-bit floats."""
    query = lambda dtype, head_width=64: jax.ShapeDtypeStruct((2, 16, 12, head_width), dtype)  # noqa: E731
    assert attention_implementation("auto", query(jnp.bfloat16)) == "xla"  # this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_implementation("auto", query(jnp.bfloat16)) == "cudnn"
    assert attention_implementation("auto", query(jnp.float16)) == "cudnn"
    assert attention_implementation("auto", query(jnp.float32)) == "xla"  # cuDNN's kernel takes no float32
    assert attention_implementation("auto", query(jnp.bfloat16, head_width=12)) == "xla"  # not a multiple of 8
    assert attention_implementation("auto", query(jnp.bfloat16, head_width=256)) == "xla"  # wider than 128
    assert attention_implementation("xla", query(jnp.bfloat16)) == "xla"  # an explicit choice stands
    with pytest.raises(ValueError, match="attention must be auto, xla or cudnn"):
        GPTConfig(attention="flash")


def test_gpt2_small_builds_abstractly_with_124m_parameters():
    model_def = gpt2_small_def({"data": 1})
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(model_def.abstract))
    # GPT-2 small has 124,439,808: ours drops its 82,944 dense biases and pads the
    # embedding from 50257 to 50304 rows (+36,096).
    assert count == 124_439_808 - 82_944 + 36_096


def test_gpt2_small_shards_for_tensor_parallelism():
    specs = {
        "/".join(map(str, path)): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(gpt2_small_def({"fsdp": 2, "tensor": 4}).shardings)[0]
        for path in [tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)]
    }
    block = "blocks/3"
    expected = {
        f"{block}/attention/query": P("fsdp", "tensor", None),  # column-parallel: each shard owns 3 whole heads
        f"{block}/attention/key": P("fsdp", "tensor", None),
        f"{block}/attention/value": P("fsdp", "tensor", None),
        f"{block}/attention/out": P("tensor", None, "fsdp"),  # row-parallel back into the residual
        f"{block}/mlp/up": P("fsdp", "tensor"),
        f"{block}/mlp/down": P("tensor", "fsdp"),
        f"{block}/attention_norm/scale": P("fsdp"),
        "tokens": P("tensor", "fsdp"),  # 50304 rows split 4 ways
        "positions": P(None, "fsdp"),
    }
    for path, spec in expected.items():
        assert specs[path] == spec, f"{path}: {specs[path]} != {spec}"


@pytest.mark.slow
def test_tensor_parallel_forward_matches_one_device():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py gives 8 CPU devices)")
    build = lambda: GPT(GPTConfig(**(SMALL | {"heads": 4})), nnx.Rngs(0))  # noqa: E731
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 256, (4, 16)))
    outputs = []
    for shape in ({"data": 1}, {"data": 2, "tensor": 4}):
        mesh = sharding.make_mesh(shape)
        model_def = ModelDef.create(build, mesh, [nnx.Param])
        with jax.set_mesh(mesh):
            variables = model_def.init(build)
            outputs.append(np.asarray(jax.jit(lambda v, t: model_def.merge(v)(t))(variables, tokens)))
    np.testing.assert_allclose(outputs[1], outputs[0], atol=2e-5)


@pytest.mark.slow
def test_learns_tiny_text_then_samples_it(tmp_path):
    """Trains 250 steps on one repeated sentence, saves, loads, and samples it back greedily."""
    corpus, sentence = tiny_corpus()
    result = api.train(
        "gpt", dataset="shakespeare", workdir=tmp_path / "run", steps=250, batch_size=8, progress=False,
        settings={"layers": 1, "width": 64, "heads": 2, "context": 32, "train.learning_rate": 6e-3},
        train_data=corpus, eval_data=corpus,
    )  # fmt: skip
    # Nats per character, from 5.5 at the start. A crop's first characters cannot know
    # where in the sentence they are, so even a memorised sentence stays above 0.
    assert result.loss < 0.4
    loaded = api.load(tmp_path / "run")
    assert loaded.evaluate(corpus)["nats_per_char"] < 0.5
    text = loaded.sample(1, seed=0, prompt=sentence[:8], length=40, temperature=0.0)[0]
    assert text == (sentence * 3)[:48]


def test_gpt_marks_its_projections_as_matrices_and_not_its_embeddings():
    """What ``train.optimizer=muon`` orthogonalises: every projection by its input axes; never the embeddings."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: GPT(GPTConfig(**SMALL), nnx.Rngs(0)))
    marked = {paths.name(p): axes for p, axes in matrix_inputs(nnx.state(model)).items()}
    per_block = {"attention/query": (0,), "attention/key": (0,), "attention/value": (0,), "attention/out": (0, 1), "mlp/up": (0,), "mlp/down": (0,)}
    assert marked == {f"blocks/{i}/{name}": axes for i in range(SMALL["layers"]) for name, axes in per_block.items()}


def test_gpt_trains_with_muon(tmp_path):
    """``train.optimizer=muon`` end to end on the 8-device mesh: Muon on the marked projections, AdamW on the rest."""
    corpus, _ = tiny_corpus()
    settings = SMALL | {"train.optimizer": "muon", "train.learning_rate": 6e-3}
    result = api.train("gpt", dataset="shakespeare", workdir=tmp_path, steps=60, batch_size=8, progress=False, settings=settings, train_data=corpus)
    assert result.loss < 2.0  # from about 5.5 nats per character


def test_muon_runs_resume_bitwise(tmp_path):
    """Muon's state (momenta for the matrices, AdamW moments for the rest) checkpoints and restores whole."""
    corpus, _ = tiny_corpus()
    run = dict(dataset="shakespeare", batch_size=8, progress=False, settings=SMALL | {"train.optimizer": "muon"}, train_data=corpus)
    straight = api.train("gpt", workdir=tmp_path / "straight", steps=4, **run)
    api.train("gpt", workdir=tmp_path / "resumed", steps=2, **run)
    resumed = api.train("gpt", workdir=tmp_path / "resumed", steps=4, **run)
    assert resumed.resumed_from == 2
    assert resumed.params_digest == straight.params_digest
