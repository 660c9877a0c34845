"""The language-model toolkit (zoo.text) against numpy references and hand-made cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import text
from zoo.errors import UsageError


def test_bytes_round_trip_any_text():
    for sample in ("ROMEO:\nBut soft!", "", "caf\u00e9 \u2014 \u00fc"):
        ids = text.encode(sample)
        assert ids.dtype == np.uint8 and text.decode(ids) == sample
    assert text.encode("A")[0] == ord("A")


def test_crops_lie_inside_each_window_and_mark_the_tail():
    windows = np.arange(4 * 20, dtype=np.uint8).reshape(4, 20)  # every byte distinct: its value says where it came from
    lengths = np.array([20, 20, 12, 5], np.int32)
    for seed in range(5):
        tokens, valid = text.random_crops(jnp.asarray(windows), jnp.asarray(lengths), jax.random.key(seed), 9)
        tokens, valid = np.asarray(tokens), np.asarray(valid)
        for row in range(4):
            start = tokens[row, 0] - windows[row, 0]
            assert np.array_equal(tokens[row], windows[row, start : start + 9])  # a contiguous piece of its window
            expected = start + 1 + np.arange(8) < lengths[row]
            assert np.array_equal(valid[row], expected)
            assert start == 0 or start + 9 <= lengths[row]  # only windows shorter than a crop start at 0


def test_crops_cover_every_offset():
    windows = np.tile(np.arange(12, dtype=np.uint8), (400, 1))
    tokens, _ = text.random_crops(jnp.asarray(windows), jnp.full(400, 12, jnp.int32), jax.random.key(0), 5)
    assert sorted(set(np.asarray(tokens)[:, 0].tolist())) == list(range(8))  # offsets 0 .. 12 - 5


def test_nats_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, (2, 4))
    valid = np.array([[True, True, False], [True, True, True]])
    total, count = text.next_token_nats(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(valid))
    expected = 0.0
    for b in range(2):
        for t in range(3):
            if valid[b, t]:
                p = np.exp(logits[b, t] - logits[b, t].max())
                expected -= np.log(p[tokens[b, t + 1]] / p.sum())
    assert int(count) == 5 and np.isclose(float(total), expected, rtol=1e-5)


def test_evaluation_chunks_predict_every_target_once():
    rng = np.random.default_rng(1)
    windows = rng.integers(1, 128, (3, 11)).astype(np.uint8)
    lengths = np.array([11, 11, 4], np.int32)
    windows[2, 4:] = 0
    tokens, valid = text.evaluation_chunks({"text": windows, "length": lengths}, context=4)
    # Each (context, target) pair as bytes; by hand, window w's target j (1 <= j < length)
    # belongs to chunk (j - 1) // 4, which starts at 4 * ((j - 1) // 4).
    seen = sorted(
        (bytes(row[: t + 1].astype(np.uint8)), int(row[t + 1]))
        for row, ok in zip(tokens, valid) for t in np.flatnonzero(ok)
    )  # fmt: skip
    expected = sorted(
        (bytes(windows[w, 4 * ((j - 1) // 4) : j]), int(windows[w, j]))
        for w in range(3) for j in range(1, lengths[w])
    )  # fmt: skip
    assert seen == expected


def test_top_k_and_top_p_against_numpy():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    kept = lambda out: np.isfinite(np.asarray(out))[0].tolist()  # noqa: E731
    assert kept(text.filter_logits(jnp.asarray(logits), top_k=2)) == [True, True, False, False, False]
    assert kept(text.filter_logits(jnp.asarray(logits), top_p=0.7)) == [True, True, False, False, False]  # 0.5+0.2 reach 0.7
    assert kept(text.filter_logits(jnp.asarray(logits), top_p=0.71)) == [True, True, True, False, False]
    assert kept(text.filter_logits(jnp.asarray(logits), top_p=0.1)) == [True, False, False, False, False]
    assert all(kept(text.filter_logits(jnp.asarray(logits))))


def test_sampling_follows_the_filtered_distribution():
    logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]] * 4000))
    draws = np.asarray(text.pick_tokens(jax.random.key(0), logits, 1.0, 3, 1.0))
    frequencies = np.bincount(draws, minlength=5) / len(draws)
    assert np.allclose(frequencies, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], atol=0.03)
    greedy = text.pick_tokens(jax.random.key(0), logits[:2], 0.0, 0, 1.0)
    assert np.asarray(greedy).tolist() == [0, 0]


@pytest.mark.parametrize(
    "options, message",
    [((-1.0, 0, 1.0, 10), "temperature"), ((1.0, -2, 1.0, 10), "top_k"), ((1.0, 0, 0.0, 10), "top_p"), ((1.0, 0, 1.0, 0), "length")],
)
def test_bad_sampling_options_are_one_line(options, message):
    with pytest.raises(UsageError, match=message):
        text.check_sampling(*options)
