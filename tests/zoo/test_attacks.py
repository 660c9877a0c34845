"""FGSM and PGD: inside the eps ball and the valid range, never lowering a convex loss, equal to a hand-written FGSM.

The reference model is softmax regression, ``logits = x @ W + b``: its cross-entropy
is convex in ``x`` and its input gradient has a closed form,
``W @ (softmax(logits) - onehot)``, written here in numpy, independently of JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.attacks import Attack, perturb
from zoo.errors import UsageError

D, K = 12, 4


def linear_problem(seed: int, batch: int, bounds: tuple[float, float]):
    rng = np.random.default_rng(seed)
    lo, hi = bounds
    x = rng.uniform(lo, hi, (batch, D)).astype(np.float32)
    w = rng.normal(0, 1, (D, K)).astype(np.float32)
    b = rng.normal(0, 1, K).astype(np.float32)
    labels = rng.integers(0, K, batch)

    def loss(inputs):  # summed cross-entropy, per example separable
        logits = inputs @ jnp.asarray(w) + jnp.asarray(b)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).sum()

    return x, w, b, labels, loss


def numpy_input_gradient(x, w, b, labels):
    logits = x @ w + b
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(x)), labels] -= 1.0
    return p @ w.T


attack_settings = st.builds(
    Attack,
    kind=st.sampled_from(["fgsm", "pgd"]),
    eps=st.floats(0.0, 0.5),
    steps=st.integers(1, 12),
    step_size=st.one_of(st.none(), st.floats(0.001, 0.3)),
    random_start=st.booleans(),
)
ranges = st.sampled_from([(0.0, 1.0), (0.0, 255.0), (-1.0, 1.0)])


@settings(max_examples=12, deadline=None)
@given(attack=attack_settings, bounds=ranges, seed=st.integers(0, 2**16))
def test_stays_in_the_eps_ball_and_the_valid_range(attack, bounds, seed):
    x, _, _, _, loss = linear_problem(seed, 6, bounds)
    adversarial = np.asarray(perturb(attack, loss, jnp.asarray(x), jax.random.key(seed), bounds))
    lo, hi = bounds
    slack = 1e-5 * (hi - lo)  # float32 rounding of x +- eps
    assert adversarial.shape == x.shape and adversarial.dtype == np.float32
    assert np.all(np.abs(adversarial - x) <= attack.eps * (hi - lo) + slack)
    assert adversarial.min() >= lo and adversarial.max() <= hi


@settings(max_examples=12, deadline=None)
@given(attack=attack_settings, bounds=ranges, seed=st.integers(0, 2**16))
def test_never_lowers_a_convex_loss_from_the_clean_start(attack, bounds, seed):
    """Without a random start every step moves each coordinate along its gradient's sign
    (or not at all, at the box's edge), so a convex loss cannot go down: f(x') >= f(x) + g.(x' - x) >= f(x)."""
    attack = Attack(attack.kind, attack.eps, attack.steps, attack.step_size, random_start=False)
    x, _, _, _, loss = linear_problem(seed, 6, bounds)
    adversarial = perturb(attack, loss, jnp.asarray(x), jax.random.key(0), bounds)
    assert float(loss(adversarial)) >= float(loss(jnp.asarray(x))) - 1e-4


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(0.01, 0.3))
def test_fgsm_matches_a_numpy_fgsm(seed, eps):
    bounds = (0.0, 1.0)
    x, w, b, labels, loss = linear_problem(seed, 5, bounds)
    adversarial = perturb(Attack("fgsm", eps, random_start=False), loss, jnp.asarray(x), jax.random.key(0), bounds)
    gradient = numpy_input_gradient(x.astype(np.float64), w, b, labels)
    expected = np.clip(x + eps * np.sign(gradient), 0.0, 1.0)
    decided = np.abs(gradient) > 1e-4  # where float32 and float64 could disagree on the sign, skip
    np.testing.assert_allclose(np.asarray(adversarial)[decided], expected[decided], atol=1e-6)


def test_attacks_raise_the_loss_strictly_and_pgd_beats_fgsm():
    """On the linear model, with random starts: both attacks raise the loss; 20 PGD steps reach at least FGSM's."""
    x, _, _, _, loss = linear_problem(3, 64, (0.0, 1.0))
    clean = float(loss(jnp.asarray(x)))
    fgsm = float(loss(perturb(Attack("fgsm", 0.1), loss, jnp.asarray(x), jax.random.key(1))))
    pgd = float(loss(perturb(Attack("pgd", 0.1, steps=20), loss, jnp.asarray(x), jax.random.key(1))))
    assert clean < fgsm <= pgd + 1e-3
    assert pgd > 1.3 * clean  # not a rounding-level change: eps 0.1 on 12 inputs moves these logits by units


def test_zero_eps_changes_nothing():
    x, _, _, _, loss = linear_problem(0, 4, (0.0, 1.0))
    out = perturb(Attack("pgd", 0.0, steps=5), loss, jnp.asarray(x), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out), x)


def test_integer_pixels_are_attacked_in_their_own_units():
    """uint8 inputs with bounds (0, 255): eps 0.1 is 25.5 pixel levels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, D), dtype=np.uint8)
    w = jnp.asarray(rng.normal(size=(D, K)).astype(np.float32))

    def loss(inputs):
        return optax.softmax_cross_entropy_with_integer_labels(inputs / 255.0 @ w, jnp.zeros(3, int)).sum()

    out = np.asarray(perturb(Attack("fgsm", 0.1, random_start=False), loss, jnp.asarray(x), jax.random.key(0), (0.0, 255.0)))
    moved = np.abs(out - x.astype(np.float32))
    assert moved.max() == pytest.approx(25.5) and out.min() >= 0 and out.max() <= 255


def test_jits_with_the_attack_static():
    x, _, _, _, loss = linear_problem(0, 4, (0.0, 1.0))
    attack = Attack("pgd", 0.05, steps=3)
    jitted = jax.jit(lambda inputs, key: perturb(attack, loss, inputs, key))
    np.testing.assert_allclose(jitted(jnp.asarray(x), jax.random.key(2)), perturb(attack, loss, jnp.asarray(x), jax.random.key(2)), atol=1e-6)


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"kind": "cw"}, "attack must be one of fgsm, pgd"),
        ({"eps": 1.5}, "eps is a fraction"),
        ({"eps": -0.1}, "eps is a fraction"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"step_size": 0.0}, "step_size must be positive"),
    ],
)
def test_bad_settings_are_usage_errors(fields, needle):
    with pytest.raises(UsageError, match=needle):
        Attack(**fields)


def test_default_step_size_is_madrys():
    assert Attack("pgd", 0.1, steps=40).alpha == pytest.approx(0.00625)
    assert Attack("fgsm", 0.1).alpha == 0.1
    assert Attack("pgd", 0.1, steps=40).describe() == "pgd-40 eps 0.1"
