"""The seed's VAE trained through the zoo against the same network written by hand, measured side by side.

The seed trains a 784-128-20 VAE (Adam 1e-3, summed Bernoulli cross-entropy +
KL) with batch 16. Ways to train it, in interleaved rounds in one process:

  zoo           ``zoo.train("vae", variant="dense-20")``: the library as a user calls
                it, default settings (log every 100 steps, one step per call).
  zoo fused     the same with ``train.steps_per_call=--fuse`` (if ``--fuse`` > 1).
  bare          the network, its initialisation and its loss written here in plain
                ``jax.numpy`` (no Flax): the plugin's loss, dynamic binarisation
                and all, Adam from optax, one ``jax.jit`` step with donation, fed
                batches already on the device. The bar the zoo is held to.
  bare no-bin   the same with the grey levels as targets (no Bernoulli draw):
                what the binarisation costs.
  torch eager   the same network and loss in PyTorch, if ``import torch`` works
                (PyTorch is not a dependency of the zoo: install it separately).

Every way is timed in its steady state only: the zoo by its own log records
(``steps_per_s`` per 100-step interval, the first interval, with the
compilation, left out), the others by the same 100-step intervals ended by a
sync. The medians are printed as seconds per epoch (60000 images) and as
ratios to ``bare``.

    python bench/seed_vae.py [--batch 16] [--rounds 5] [--steps 1000] [--fuse 50] [--target 1.10]

Run it on one device (do not set ``--xla_force_host_platform_device_count``).
Uses MNIST if it is cached, else 60000 synthetic images.
Exit status: 0 if zoo / bare is at most the target, 1 if not, 2 on bad setup.
"""

from __future__ import annotations

import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from measure import interleaved, loop_intervals, summarise, timed_intervals, vae_bench_setup, verdict

import zoo

SEED, LR, EVERY, HIDDEN, LATENT, PIXELS, EPOCH = 0, 1e-3, 100, 128, 20, 784, 60000


# --------------------------------------------------------------------------- the zoo


def run_zoo(data: dict, batch: int, steps: int, steps_per_call: int = 1) -> list[float]:
    with tempfile.TemporaryDirectory() as workdir:
        zoo.train(
            "vae", variant="dense-20", workdir=workdir, train_data=data, progress=False,
            steps=steps, batch_size=batch, seed=SEED, steps_per_call=steps_per_call, log_every=EVERY,
        )
        return loop_intervals(workdir)


# --------------------------------------------------------------------------- bare JAX


def init_params(key: jax.Array) -> dict:
    """784 -> 128 relu -> (mean, logvar) 20 each; 20 -> 128 relu -> 784 logits. LeCun-normal kernels, zero biases."""
    sizes = {"enc_hidden": (PIXELS, HIDDEN), "enc_stats": (HIDDEN, 2 * LATENT), "dec_hidden": (LATENT, HIDDEN), "dec_logits": (HIDDEN, PIXELS)}
    keys = jax.random.split(key, len(sizes))
    lecun = jax.nn.initializers.lecun_normal()
    return {name: {"w": lecun(k, shape), "b": jnp.zeros(shape[1])} for k, (name, shape) in zip(keys, sizes.items())}


def bare_loss(params: dict, images: jax.Array, key: jax.Array, binarise: bool) -> jax.Array:
    """Mean negative ELBO of uint8 ``images`` (B, 28, 28, 1), the plugin's formula written out."""
    def dense(name, x):
        return x @ params[name]["w"] + params[name]["b"]

    x = images.reshape(images.shape[0], PIXELS).astype(jnp.float32) / 255.0
    binarise_key, z_key = jax.random.split(key)
    if binarise:
        x = jax.random.bernoulli(binarise_key, x).astype(jnp.float32)
    mean, logvar = jnp.split(dense("enc_stats", jax.nn.relu(dense("enc_hidden", x))), 2, axis=-1)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_key, mean.shape)
    logits = dense("dec_logits", jax.nn.relu(dense("dec_hidden", z)))
    recon = optax.sigmoid_binary_cross_entropy(logits, x).sum(axis=-1)
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)
    return jnp.mean(recon + kl)


def run_bare(staged: list, steps: int, binarise: bool) -> list[float]:
    tx = optax.adam(LR)
    base_key = jax.random.key(SEED)

    def step(carry, images):
        params, opt_state, i = carry
        loss, grads = jax.value_and_grad(bare_loss)(params, images, jax.random.fold_in(base_key, i), binarise)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, i + 1), loss

    step = jax.jit(step, donate_argnums=0)
    params = init_params(jax.random.key(SEED))
    state = {"carry": (params, tx.init(params), jnp.int32(0)), "loss": None}

    def call(i):
        def once():
            state["carry"], state["loss"] = step(state["carry"], staged[i % len(staged)])
        return once

    return timed_intervals((call(i) for i in range(steps)), EVERY, lambda: state["loss"].block_until_ready())


# --------------------------------------------------------------------------- PyTorch eager


def make_torch_run(images: np.ndarray, batch: int, steps: int):
    """The same network and loss in PyTorch eager, or None if torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(SEED)
    data = torch.from_numpy(images.reshape(len(images), PIXELS))

    def run() -> list[float]:
        encoder = torch.nn.Sequential(torch.nn.Linear(PIXELS, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 2 * LATENT))
        decoder = torch.nn.Sequential(torch.nn.Linear(LATENT, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, PIXELS))
        opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
        order = torch.randperm(len(data))

        def call(i):
            def once():
                start = (i * batch) % (len(data) - batch)
                x = torch.bernoulli(data[order[start : start + batch]].float() / 255.0)
                mean, logvar = encoder(x).chunk(2, dim=-1)
                z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
                recon = torch.nn.functional.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
                kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1.0 - logvar, dim=-1)
                loss = (recon + kl).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return once

        return timed_intervals((call(i) for i in range(steps)), EVERY, lambda: None)

    return run


# --------------------------------------------------------------------------- main


def main() -> int:
    setup = vae_bench_setup(__doc__.splitlines()[0], batch=16, fuse=50, target=1.1, every=EVERY)
    if setup is None:
        return 2
    args, data, source = setup
    images = data["image"]
    order = np.random.default_rng(SEED).permutation(len(images))
    staged = [jax.device_put(images[order[i : i + args.batch]]) for i in range(0, min(len(images), args.steps * args.batch) - args.batch + 1, args.batch)]
    jax.block_until_ready(staged)
    print(f"seed VAE 784-128-20, Adam {LR}, batch {args.batch}, {source}, {jax.devices()[0].platform} x1, "
          f"{args.steps} steps per run, intervals of {EVERY} steps, {args.rounds} rounds")

    runs = {"zoo": lambda: run_zoo(data, args.batch, args.steps)}
    if args.fuse > 1:
        runs[f"zoo steps_per_call={args.fuse}"] = lambda: run_zoo(data, args.batch, args.steps, args.fuse)
    runs["bare"] = lambda: run_bare(staged, args.steps, binarise=True)
    runs["bare no-bin"] = lambda: run_bare(staged, args.steps, binarise=False)
    torch_run = make_torch_run(images, args.batch, args.steps)
    if torch_run is not None:
        runs["torch eager"] = torch_run
    else:
        print("(PyTorch not importable: no torch eager row)")

    medians = summarise(interleaved(runs, args.rounds))
    per_epoch = EPOCH // args.batch
    print(f"\nseconds per epoch ({per_epoch} steps of {args.batch}), from the medians:")
    for name, median in medians.items():
        print(f"  {name:<22} {median * per_epoch:7.2f} s   x{median / medians['bare']:.3f} of bare")
    return 0 if verdict("zoo / bare (same loss)", medians["zoo"] / medians["bare"], args.target) else 1


if __name__ == "__main__":
    sys.exit(main())
