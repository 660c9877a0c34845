"""Adversarial examples: FGSM and PGD under an L-infinity budget, for any differentiable loss.

An attack searches, inside the box ``|x' - x|_inf <= eps`` intersected with the
inputs' valid range ``[lo, hi]``, for inputs that raise a loss::

    attack = Attack("pgd", eps=0.1, steps=40)
    x_adv = perturb(attack, lambda x: loss(model, x, labels), x, key, bounds=(0.0, 1.0))

- FGSM (Goodfellow et al., 2015): one step of size ``eps`` along the sign of the
  input gradient, optionally from a random start (Wong et al., 2020).
- PGD (Madry et al., 2018): ``steps`` signed-gradient steps of ``step_size``, each
  projected back into the box; by default from a uniform random start in the ball.

``eps`` and ``step_size`` are fractions of the valid range ``hi - lo``: eps 0.1
is 0.1 on images in [0, 1] and 25.5 on uint8 pixels in [0, 255], so one
setting means the same attack whatever units a plugin's inputs use.

The loss is summed over the batch (or at least separable per example): each
example's gradient then depends on that example alone, and the sign step is the
same for a sum or a mean. Everything here is pure and jit-able; the shared
training loop calls ``perturb`` inside its compiled step for adversarial training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from zoo.errors import UsageError

KINDS = ("fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class Attack:
    """An L-infinity attack's settings.

    Attributes:
      kind: "fgsm" (one step of size eps) or "pgd" (projected gradient ascent).
      eps: radius of the L-infinity ball, as a fraction of the valid range.
      steps: PGD iterations (FGSM always takes one).
      step_size: PGD step, as a fraction of the valid range; default ``2.5 * eps / steps``,
        Madry et al.'s choice, so the walk can cross the ball and back.
      random_start: start from a uniform point of the ball instead of the input itself.
    """

    kind: Literal["fgsm", "pgd"] = "pgd"
    eps: float = 0.1
    steps: int = 40
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UsageError(f"attack must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not 0.0 <= self.eps <= 1.0:
            raise UsageError(f"eps is a fraction of the valid input range, in [0, 1]; got {self.eps}")
        if self.steps < 1:
            raise UsageError(f"attack steps must be at least 1; got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            raise UsageError(f"attack step_size must be positive; got {self.step_size}")

    @property
    def iterations(self) -> int:
        return 1 if self.kind == "fgsm" else self.steps

    @property
    def alpha(self) -> float:
        """The step, as a fraction of the valid range."""
        if self.kind == "fgsm":
            return self.eps
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def describe(self) -> str:
        """``"pgd-40 eps 0.1"``, for reports."""
        name = "fgsm" if self.kind == "fgsm" else f"pgd-{self.steps}"
        return f"{name} eps {self.eps:g}" + ("" if self.random_start else " (no random start)")


def perturb(
    attack: Attack,
    loss: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Adversarial inputs for ``x``: the attack's best effort at raising ``loss``.

    Args:
      attack: the settings.
      loss: ``inputs -> scalar``, differentiable in the inputs; summed over examples.
      x: clean inputs of any shape (B, ...), any real dtype (integers are cast to float32).
      key: for the random start.
      bounds: the inputs' valid range ``(lo, hi)``.

    Returns:
      float32 inputs shaped like ``x``, within ``eps * (hi - lo)`` of ``x`` in every
      element and inside ``[lo, hi]``; no gradient flows back through them.
    """
    lo, hi = bounds
    scale = hi - lo
    eps, alpha = attack.eps * scale, attack.alpha * scale
    x = jnp.asarray(x).astype(jnp.float32)
    lower, upper = jnp.maximum(x - eps, lo), jnp.minimum(x + eps, hi)  # the feasible box
    grad = jax.grad(lambda inputs: jnp.sum(loss(inputs)))
    if attack.random_start:
        start = x + jax.random.uniform(key, x.shape, jnp.float32, -eps, eps)
    else:
        start = x

    def ascend(_, current):
        return jnp.clip(current + alpha * jnp.sign(grad(current)), lower, upper)

    adversarial = jax.lax.fori_loop(0, attack.iterations, ascend, jnp.clip(start, lower, upper))
    return jax.lax.stop_gradient(adversarial)
