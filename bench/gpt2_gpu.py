"""GPT-2 small (``gpt/gpt2-124m``) training speed on one GPU: the zoo's loop against a bare JAX step, in tokens/s and MFU.

What it measures. Steps per second, then tokens per second and model FLOPs
utilisation (MFU), of training ``gpt2-124m`` (12 layers, 768 wide, 12 heads,
context 1024, GPT-2's 50257-token vocabulary in 50304 embedding rows: 124,392,960
parameters) with AdamW (6e-4, betas 0.9/0.95, weight decay 0.1: nanoGPT's GPT-2
recipe, without its clipping and schedule, which cost next to nothing), two ways,
in interleaved rounds (``measure.py``):

  zoo    ``zoo.train`` -> the shared loop (timed by its own log records: every
         interval includes the loop's Python, its sync at each log point and its
         check of the weights there);
  bare   ``nnx.split`` once + one ``jax.jit`` step (the same model, loss
         ``zoo.text.next_char_loss`` and optimizer, the same bf16 compute over fp32
         master weights), state donated, the data on the device and each batch
         gathered inside the step as the loop does: the floor the loop's overhead
         is measured against.

Data. Uniform random tokens in ``[0, vocab_size)`` (the Shakespeare corpus is
bytes, GPT-2's vocabulary is not), laid out as the loss reads text:
``{"text": int32 (N, context + 1), "length": int32 (N,)}``, so each step trains on
every one of ``context`` targets per row. Speed does not depend on the tokens.

Figures. ``tokens/s = batch * context / (median seconds per step)``. Model FLOPs
per token are the PaLM / nanoGPT estimate ``6 N + 12 * layers * context * width``
(N: every parameter, the padded embedding rows and positions included; the second
term is attention's scores and weighted sum at full, not causal, length); ``MFU =
FLOPs per token * tokens/s / --peak``, the peak defaulting to 798e12, the bf16
matmul rate measured on one H200 (``shared/NOTES-JAX.md``). The same notes give
the reference this prints alongside: PyTorch nanoGPT-style (torch.compile, SDPA,
fused AdamW) at batch 64 trained at 541k tokens/s, 58% MFU; hand-written JAX with
cuDNN attention 41-52%, with XLA's default attention 19%.

``--attention`` sets the model's ``attention`` (``zoo_gpt.model.attention_implementation``):
``auto`` (default) asks ``jax.nn.dot_product_attention`` for cuDNN's fused kernel on a
GPU in bf16, ``xla`` for XLA's unfused one (what JAX 0.10 picks when not told): run
both to see what the fused kernel is worth.

Not run on a GPU yet: no figures here are measured. On a 2-core CPU the smallest
variant runs as a smoke test (MFU against a GPU's peak means nothing there).

    python bench/gpt2_gpu.py [--variant gpt2-124m] [--batch 16] [--steps 30] [--rounds 3] [--precision bf16] [--peak 798e12]
    python bench/gpt2_gpu.py --batch 64 ...                          (the reference's batch)
    python bench/gpt2_gpu.py --attention xla ...                     (XLA's unfused attention)
    python bench/gpt2_gpu.py --variant char-4x256 --batch 2 --steps 4 --rounds 1   (CPU smoke test)
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from measure import interleaved, loop_intervals, summarise, timed_intervals

import zoo
from zoo import text
from zoo.memory import human_bytes

LR, B2, WEIGHT_DECAY = 6e-4, 0.95, 0.1  # nanoGPT's GPT-2 recipe (b1 0.9 is both libraries' default)
H200_BF16_PEAK = 798e12  # measured bf16 matmul FLOP/s of one H200 (shared/NOTES-JAX.md)
REFERENCE = "PyTorch nanoGPT-style (torch.compile, SDPA, fused AdamW), gpt2-124m, batch 64, one H200: 541k tokens/s, 58% MFU"


def synthetic_windows(vocab_size: int, context: int, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` windows of uniform random tokens: ``{"text": int32 (count, context + 1), "length": int32 (count,)}``.

    Exactly ``context + 1`` tokens a window, so ``text.random_crops`` always crops at
    offset 0 and every row trains on all ``context`` targets (the tokens/s counted).
    """
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (count, context + 1), dtype=np.int32)
    return {"text": tokens, "length": np.full(count, context + 1, np.int32)}


def flops_per_token(cfg, parameters: int) -> float:
    """PaLM / nanoGPT model FLOPs of one trained token: ``6 N`` (matmuls, forward and backward) + attention."""
    return 6 * parameters + 12 * cfg.layers * cfg.context * cfg.width


def zoo_run(args, data: dict[str, np.ndarray], every: int) -> list[float]:
    """One ``zoo.train`` run of ``args.steps`` steps; seconds per step of each log interval but the first."""
    settings = {
        "train.precision": args.precision, "train.learning_rate": LR, "train.b2": B2,
        "train.weight_decay": WEIGHT_DECAY, "train.log_every": every, "model.attention": args.attention,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        zoo.train(
            "gpt", variant=args.variant, workdir=workdir, train_data=data, progress=False,
            steps=args.steps, batch_size=args.batch, settings=settings,
        )  # fmt: skip
        return loop_intervals(workdir)


def make_bare_step(graphdef, tx: optax.GradientTransformation, context: int, precision: str):
    """The bare step ``(params, opt_state, step, rows, indices, key) -> (params, opt_state, step + 1, loss)``.

    ``rows``: the training arrays on the device; ``indices int32 (B,)``: this batch's
    rows, gathered inside the step (the loop's ``DeviceRows`` path). Parameters,
    optimizer state and step are donated, as the loop donates its state.
    """
    compute_dtype = jnp.bfloat16 if precision == "bf16" else None

    def loss_of(params, batch, key):
        if compute_dtype is not None:  # fp32 master weights, bf16 compute: what train.precision=bf16 does
            params = jax.tree.map(lambda x: x.astype(compute_dtype), params)
        return text.next_char_loss(nnx.merge(graphdef, params), batch, key, context=context)[0]

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt_state, step_index, rows, indices, key):
        batch = {name: r[indices] for name, r in rows.items()}  # (B, context + 1) and (B,)
        # The key folded on the device: making one per call on the host is a dispatch more.
        loss, grads = jax.value_and_grad(loss_of)(params, batch, jax.random.fold_in(key, step_index))
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step_index + 1, loss

    return step


def bare_runner(args, model: nnx.Module, data: dict[str, np.ndarray], every: int):
    """A run of the bare step on ``model``'s weights (compiled once for every round), and its parameter count.

    Returns ``(run, parameters)``; ``run()`` trains fresh copies of the same initial
    weights for ``args.steps`` steps and returns seconds per step of each interval of
    ``every`` steps but the first.
    """
    graphdef, initial = nnx.split(model)
    parameters = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tx = optax.adamw(LR, b2=B2, weight_decay=WEIGHT_DECAY)
    step, init_opt = make_bare_step(graphdef, tx, model.cfg.context, args.precision), jax.jit(tx.init)
    rows = jax.device_put(data)
    key = jax.random.key(0)

    def run() -> list[float]:
        params = jax.tree.map(jnp.copy, initial)  # the step donates them: each run starts from its own copy
        state = {"params": params, "opt": init_opt(params), "step": jnp.int32(0), "loss": None}
        rng = np.random.default_rng(0)

        def call():
            indices = rng.integers(0, len(data["text"]), args.batch).astype(np.int32)
            state["params"], state["opt"], state["step"], state["loss"] = step(
                state["params"], state["opt"], state["step"], rows, indices, key
            )

        return timed_intervals((call for _ in range(args.steps)), every, lambda: state["loss"].block_until_ready())

    return run, parameters


def report(args, medians: dict[str, float], cfg, parameters: int) -> None:
    """Tokens/s and MFU of each run's median step, then the PyTorch reference."""
    tokens_per_step = args.batch * cfg.context
    flops = flops_per_token(cfg, parameters)
    print(
        f"{args.variant}: {parameters:,} parameters, {flops / 1e9:.3f} GFLOP per token (6N + 12*L*T*D), "
        f"{tokens_per_step:,} tokens a step; MFU against a peak of {args.peak / 1e12:.0f} TFLOP/s"
    )
    for name, seconds in medians.items():
        tokens_per_s = tokens_per_step / seconds
        print(
            f"{name:<6} {seconds * 1e3:9.2f} ms/step  {tokens_per_s:12,.0f} tokens/s  MFU {flops * tokens_per_s / args.peak:6.1%}"
            f"  ({medians['bare'] / seconds:.2f}x bare's speed)"
        )
    print(f"reference (shared/NOTES-JAX.md): {REFERENCE}")


def parse_args() -> tuple[argparse.Namespace, int]:
    """The options and the steps per timed interval (``--every``, by default a third of ``--steps``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="gpt2-124m", help="gpt variant (default gpt2-124m)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--steps", type=int, default=30, help="steps per run (default 30)")
    parser.add_argument("--every", type=int, default=None, help="steps per timed interval, dividing --steps (default steps // 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="compute dtype (default bf16)")
    parser.add_argument("--peak", type=float, default=H200_BF16_PEAK, help="peak FLOP/s for MFU (default 798e12: one H200, bf16)")
    parser.add_argument("--attention", choices=("auto", "xla", "cudnn"), default="auto", help="the model's attention kernel (default auto)")
    args = parser.parse_args()
    every = args.every or max(1, args.steps // 3)
    # The first interval holds the compilation and is dropped: at least one more is needed.
    if args.rounds < 1 or args.batch < 1 or args.steps % every or args.steps < 2 * every:
        parser.error("need rounds and batch >= 1, and --steps a multiple of --every and at least twice it")
    if args.attention == "cudnn" and (jax.default_backend() != "gpu" or args.precision != "bf16"):
        parser.error("--attention cudnn needs a GPU and --precision bf16 (cuDNN's kernel takes no fp32)")
    return args, every


def compare(args, every: int) -> tuple[dict[str, float], object, int]:
    """Build the model and data, run zoo and bare in interleaved rounds; ``(median s/step per run, config, parameters)``."""
    model = zoo.build("gpt", variant=args.variant, seed=0, attention=args.attention)
    # Eight batches' worth of windows (at least 64): the loader reshuffles them each epoch.
    data = synthetic_windows(model.cfg.vocab_size, model.cfg.context, max(8 * args.batch, 64))
    bare, parameters = bare_runner(args, model, data, every)
    runs = {"zoo": lambda: zoo_run(args, data, every), "bare": bare}
    return summarise(interleaved(runs, args.rounds)), model.cfg, parameters


def main() -> int:
    args, every = parse_args()
    if jax.device_count() != 1:  # the loop would shard over every device, the bare step uses one
        print(f"run on one device (found {jax.device_count()}: set CUDA_VISIBLE_DEVICES=0)", file=sys.stderr)
        return 1
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}); jax {jax.__version__}; {args.precision}; attention {args.attention}")
    if jax.default_backend() != "gpu":
        print("not a GPU: a smoke test; the MFU below is against a GPU's peak and means nothing here")
    with tempfile.TemporaryDirectory(prefix="zoo-gpt2-jit-") as cache:
        # Every zoo run compiles its step anew; with a persistent cache only the first pays
        # (later ones in their dropped first interval): device time saved, none measured.
        # Set before anything compiles: JAX decides once per process whether to use it.
        jax.config.update("jax_compilation_cache_dir", cache)
        medians, cfg, parameters = compare(args, every)
    report(args, medians, cfg, parameters)
    stats = device.memory_stats() or {}  # None on CPU
    if "peak_bytes_in_use" in stats:
        print(f"peak device memory: {human_bytes(stats['peak_bytes_in_use'])} of {human_bytes(stats.get('bytes_limit', 0))}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
