"""What the shared loop costs per step, against a bare hand-written JAX step, measured side by side.

Ways to train the dense-20 VAE (Adam 1e-3, one device) run in interleaved
rounds in one process:

  zoo          ``zoo.train`` -> the shared loop, all of it: its loader (on the device
               when the data fits), its jitted step (non-finite guard, metrics summed
               on the device), its Reporter writing every 100 steps.
  bare         ``nnx.split`` once + ``jax.jit`` of a plain optax Adam step with
               donation, the plugin's loss and the loop's key schedule, fed batches
               already on the device (the same batches, in the same order).
  zoo fused    the loop with ``steps_per_call=--fuse``,
  bare fused   against ``--fuse`` bare steps in one ``lax.scan`` over stacked batches.

Each way is timed only in its steady state, in 100-step intervals: the loop by
its own log records (``steps_per_s``, fetched at a sync; the first interval,
with the compilation, left out), the bare loops by blocking on their loss at
the same steps. The figure for each way is the median over all intervals of
all rounds; the order rotates between rounds so that load on the machine
affects all alike.

    python bench/loop_overhead.py [--batch 128] [--rounds 5] [--steps 1000] [--fuse 10] [--target 1.05]

Run it on one device (do not set ``--xla_force_host_platform_device_count``).
Uses MNIST if it is cached, else 60000 synthetic images.
Exit status: 0 if both ratios are at most the target, 1 if not, 2 on bad setup.
"""

from __future__ import annotations

import sys
import tempfile

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from measure import interleaved, loop_intervals, summarise, timed_intervals, vae_bench_setup, verdict

import zoo
from zoo.data.loader import ArrayLoader
from zoo_vae.train import negative_elbo

SEED, LR, EVERY = 0, 1e-3, 100


def run_zoo(data, batch: int, steps: int, steps_per_call: int) -> list[float]:
    with tempfile.TemporaryDirectory() as workdir:
        zoo.train(
            "vae", variant="dense-20", workdir=workdir, train_data=data, progress=False, steps=steps, batch_size=batch,
            seed=SEED, optimizer="adam", learning_rate=LR, log_every=EVERY, steps_per_call=steps_per_call,
        )
        return loop_intervals(workdir)


def make_bare_step(steps_per_call: int):
    """A plain jitted Adam step over (params, opt_state, step), the loop's loss and per-step keys.

    It returns the loss's metrics (recon, kl) as a hand-written loop that logs them
    would. With ``steps_per_call`` > 1, that many steps in one ``lax.scan``.
    """
    graphdef, params = nnx.split(zoo.build("vae", "dense-20", seed=SEED))
    params = nnx.to_pure_dict(params)
    tx = optax.adam(LR)
    base_key = jax.random.key(SEED)

    def step(carry, batch):
        params, opt_state, i = carry

        def loss_fn(p):
            return negative_elbo(nnx.merge(graphdef, p), batch, jax.random.fold_in(base_key, i))

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, i + 1), {"loss": loss, **metrics}

    fused = step if steps_per_call == 1 else lambda carry, batches: jax.lax.scan(step, carry, batches)
    return jax.jit(fused, donate_argnums=0), (params, tx.init(params), jnp.int32(0))


def run_bare(staged: list, steps: int, steps_per_call: int) -> list[float]:
    step, carry = make_bare_step(steps_per_call)
    state = {"carry": jax.tree.map(jnp.copy, carry), "metrics": None}

    def call(i):
        def once():
            state["carry"], state["metrics"] = step(state["carry"], staged[i % len(staged)])
        return once

    calls = (call(i) for i in range(steps // steps_per_call))
    intervals = timed_intervals(calls, EVERY // steps_per_call, lambda: jax.block_until_ready(state["metrics"]))
    return [t / steps_per_call for t in intervals]


def staged_batches(data, batch: int, steps: int, steps_per_call: int) -> list:
    """The batches ``fit`` draws, in its order, on the device; stacked ``steps_per_call`` at a time."""
    loader = ArrayLoader(data, batch, SEED, steps_per_call=steps_per_call)
    calls = min(steps, loader.batches_per_epoch) // steps_per_call
    staged = [jax.device_put(next(loader)) for _ in range(calls)]
    return jax.block_until_ready(staged)


def main() -> int:
    setup = vae_bench_setup(__doc__.splitlines()[0], batch=128, fuse=10, target=1.05, every=EVERY)
    if setup is None:
        return 2
    args, data, source = setup
    print(f"dense-20 VAE, Adam, batch {args.batch}, {source}, {jax.devices()[0].platform} x1, "
          f"{args.steps} steps per run, intervals of {EVERY} steps, {args.rounds} rounds")

    k = args.fuse
    single = staged_batches(data, args.batch, args.steps, 1)
    runs = {"zoo": lambda: run_zoo(data, args.batch, args.steps, 1), "bare": lambda: run_bare(single, args.steps, 1)}
    if k > 1:
        stacked = staged_batches(data, args.batch, args.steps, k)
        runs[f"zoo fused {k}"] = lambda: run_zoo(data, args.batch, args.steps, k)
        runs[f"bare fused {k}"] = lambda: run_bare(stacked, args.steps, k)
    med = summarise(interleaved(runs, args.rounds))
    ok = verdict(f"zoo loop / bare jitted step, batch {args.batch}", med["zoo"] / med["bare"], args.target)
    if k > 1:
        ok &= verdict(f"zoo fused / bare fused ({k} steps per call)", med[f"zoo fused {k}"] / med[f"bare fused {k}"], args.target)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
