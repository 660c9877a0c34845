"""The char GPT on this CPU: the zoo's step against a bare JAX step (and PyTorch), and nats/char against wall time.

Mode ``speed`` (default): steps per second of the same model (``gpt/char-4x256``: 4
layers, 256 wide, 4 heads, context 128, 3.2M parameters), batch, optimizer
(AdamW 2e-3, weight decay 0.1) and data (random 129-byte crops of the
Shakespeare training windows), three ways, in interleaved rounds:

  zoo       ``zoo.train`` -> the shared loop (timed by its own log records);
  bare      ``nnx.split`` once + ``jax.jit`` of a plain optax step with donation;
  torch     the same model written in PyTorch, eager (only if ``import torch`` works).

Mode ``budget``: one zoo run of ``--steps`` steps (AdamW 2e-3, warm-up, cosine decay
to a tenth, clipping at 1) that evaluates every ``--chunk`` steps on the first
``--eval-windows`` validation windows, then prints validation nats per character
against the minutes the loop's own log records (every second counted: compilation,
the periodic evaluations and checkpoints too), and at the end on the whole
validation split. Set ``--steps`` to what the speed mode says fits the budget
(30 minutes at S steps/s: 1800 * S); issue 9's PyTorch reference reaches 1.58 /
1.40 / 1.32 nats/char after 10 / 20 / 30 minutes. Run it on a quiet machine.

Measured on a 2-core AVX2 CPU (AMD EPYC; whole validation split after 30 minutes), the
reference recipe at batch 32: zoo 1.564 (940 steps), PyTorch 1.535 (1080 steps);
the same recipe at batch 16, its warm-up doubled to the same share of the run
(``--batch 16 --steps 1900 --warmup 200``): zoo 1.533 in 30.5 minutes. Batch 16 runs
2.05x the steps per second of batch 32 here.

On a 2-core Xeon with AVX512-BF16 (the kind of host issue 9 measured PyTorch on: 1.6
steps/s at batch 32, 1.58 / 1.40 / 1.32 nats/char after 10 / 20 / 30 minutes) the zoo's
loop ran 1.2-1.3 steps/s at batch 32 (``train.precision=bf16``: 1.198, no faster) and
2.7 at batch 16; ``budget --batch 16 --steps 4600 --warmup 200``: 1.61 / 1.45 on the
first 64 windows after 10 / 20 minutes, **1.386 on the whole validation split after 29.2
minutes**: short of PyTorch's 1.32 on that host. PyTorch measured on the same host in
a later session (``budget --torch --steps 2880 --warmup 100``, batch 32) ran 2.34 steps/s,
about 1.8x the zoo's step there: 1.48 / 1.33 on the first 64 windows after 10 / 20
minutes, 1.356 on the whole validation split after its 2,880 steps (20.5 minutes).

XLA:CPU options tried there for a faster step, 100 steps of batch 32 through the loop each
(steps/s; the same options with ``train.precision=bf16`` where it says so): none
beyond the run-to-run spread of the defaults (1.19-1.26). ``--xla_cpu_use_onednn=true``
1.36 (bf16: 1.28, with ``--xla_cpu_experimental_onednn_fusion_type=dot`` 1.35),
``--xla_cpu_use_xnnpack=true`` 1.37 (bf16: 1.32), ``--xla_cpu_enable_fast_math=true``
1.36, ``--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY`` 1.37,
``JAX_DEFAULT_MATMUL_PRECISION=BF16_BF16_F32`` 1.30; float32 losses came out bit-identical
under oneDNN/XNNPACK, so those paths did not take these dots. ``--xla_cpu_prefer_vector_width=512``
ran 1.52 once, but side by side in interleaved rounds (2 x 100 steps at batch 16; BERT-tiny
2 x 200 at batch 32) it gave 0.97x and 0.98x the default's steps/s: noise, not a gain.

Where XLA:CPU's step loses, profiled op by op on that host (a ``jax.profiler`` trace of the
bare step at batch 32 against ``torch.profiler``'s of PyTorch's): no single op. Alone, the step's matrix products run 0.7-0.95x as
fast as PyTorch's (XLA's default YNNPACK dots; 300-310 GFLOP/s on the plain (N, K) x (K, M)
products of the MLP, 220-230 where an operand is transposed, as in the gradients); inside
the step two independent products often share the two cores and each runs about half
as fast. Attention is where the gap is widest: forward and backward of one layer take
34 ms through ``jax.nn.dot_product_attention`` (20 ms written as batched products over
(B, H, T, K)) against 10.5 ms for PyTorch's fused CPU kernel, which skips the masked half.
On one core the whole step runs 0.87x PyTorch's (1.01 against 1.15 steps/s, XLA's Eigen
dots), on two 0.65-0.7x. Compiled with ``xla_cpu_experimental_ynn_fusion_type=""`` (Eigen
for the dots instead of YNNPACK) the step ran 1.04-1.09x as many steps per second, in
interleaved chunks of one process at batch 8, 16 and 32; fusing q, k and v into one
product and writing attention over (B, H, T, K) gave 1.01-1.06x. Neither closes the gap.

``train.optimizer=muon`` (Muon on the GPT's projections, AdamW on the embeddings and norms;
AdamW's learning rate and decay carry over) costs more per step here (five Newton-Schulz
iterations per matrix: 2.2 against 3.2-3.4 steps/s at batch 16) but learns more per step:
``budget --batch 16 --steps 3200 --warmup 200 --chunk 400 --set train.optimizer=muon`` (AdamW's
2e-3 and decay 0.1 otherwise, the same schedule) read 1.474 / 1.319 on the first 64 windows
after 9.2 / 18.4 minutes and **1.304 on the whole validation split after 24.4 minutes**:
past PyTorch's 1.32 after 30 (and its 1.356 after 20.5 on this host). Given the whole
30 minutes (``--steps 3800``): 1.478 / 1.334 on the 64 windows after 9.4 / 18.8 minutes,
**1.290 on the whole validation split after 29.3**. AdamW in the same
loop: 1.386 after 29.2 minutes at batch 16 (above), 1.402 after 25.7 at batch 8 (9,600
steps, b2 0.99, cosine to 0).

    python bench/gpt_cpu.py [speed] [--batch 32] [--steps 60] [--rounds 3]
    python bench/gpt_cpu.py budget [--steps 2000] [--chunk 200] [--eval-windows 64] [--set train.precision=bf16 ...]
    python bench/gpt_cpu.py budget --torch [--steps 2000] ...   (the same, the PyTorch reference: torch_gpt.py)

Uses the cached Shakespeare corpus (``zoo data fetch shakespeare``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from measure import interleaved, loop_intervals, summarise, timed_intervals

import zoo
import zoo.data
from zoo import text

VARIANT, LR, WEIGHT_DECAY, EVERY = "char-4x256", 2e-3, 0.1, 10


def zoo_run(data, batch: int, steps: int) -> list[float]:
    with tempfile.TemporaryDirectory() as workdir:
        zoo.train(
            "gpt", variant=VARIANT, workdir=workdir, train_data=data, progress=False, steps=steps, batch_size=batch,
            learning_rate=LR, weight_decay=WEIGHT_DECAY, log_every=EVERY,
        )  # fmt: skip
        return loop_intervals(workdir)


def bare_run(data, batch: int, steps: int) -> list[float]:
    """A plain jitted AdamW step over the model's parameters, the same loss, fed the loop's kind of batches."""
    model = zoo.build("gpt", variant=VARIANT, seed=0)
    graphdef, params = nnx.split(model)
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    loss_fn = functools.partial(text.next_char_loss, context=model.cfg.context)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), batch, key)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt": tx.init(params), "loss": None}
    rng = np.random.default_rng(0)

    def call(i: int):
        rows = rng.integers(0, len(data["text"]), batch)
        batch_arrays = {"text": data["text"][rows], "length": data["length"][rows]}
        state["params"], state["opt"], state["loss"] = step(state["params"], state["opt"], batch_arrays, jax.random.key(i))

    return timed_intervals((functools.partial(call, i) for i in range(steps)), EVERY, lambda: state["loss"].block_until_ready())


def torch_run(data, batch: int, steps: int) -> list[float]:
    """The same GPT and AdamW in PyTorch, eager (``torch_gpt``), fed the same kind of crops."""
    import torch_gpt
    from torch.optim import AdamW

    model = torch_gpt.GPT()
    optimizer = AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(0)

    def call():
        torch_gpt.train_step(model, optimizer, *torch_gpt.crops(rng, data, batch), clip=None)

    return timed_intervals((call for _ in range(steps)), EVERY, lambda: None)


def speed(args) -> int:
    data = zoo.data.load("shakespeare", "train")
    runs = {
        "zoo": lambda: zoo_run(data, args.batch, args.steps),
        "bare": lambda: bare_run(data, args.batch, args.steps),
    }
    try:
        import torch  # noqa: F401

        runs["torch eager"] = lambda: torch_run(data, args.batch, args.steps)
    except ImportError:
        print("PyTorch is not importable: comparing zoo and bare only")
    medians = summarise(interleaved(runs, args.rounds), scale=1.0, unit="s/step")
    for name, seconds in medians.items():
        print(f"{name:<12} {1 / seconds:.3f} steps/s  ({1 / seconds / (1 / medians['bare']):.2f}x bare)")
    return 0


def budget(args) -> int:
    """One zoo run of ``--steps`` steps, evaluated every ``--chunk``; minutes from the loop's own clock."""
    validation = zoo.data.load("shakespeare", "test")
    subset = {k: v[: args.eval_windows] for k, v in validation.items()} if args.eval_windows else validation
    if args.torch:
        import torch_gpt

        print(f"PyTorch eager, {args.steps} steps, batch {args.batch}, AdamW {LR} (weight decay {WEIGHT_DECAY})", flush=True)
        torch_gpt.budget(
            zoo.data.load("shakespeare", "train"), subset, validation, steps=args.steps, chunk=args.chunk,
            warmup=args.warmup, batch=args.batch, lr=LR, weight_decay=WEIGHT_DECAY,
        )  # fmt: skip
        return 0
    settings = {
        "train.learning_rate": LR, "train.weight_decay": WEIGHT_DECAY, "train.schedule": "cosine",
        "train.warmup_steps": args.warmup, "train.final_lr_fraction": 0.1, "train.grad_clip": 1.0,
        "train.eval_every": args.chunk, "train.log_every": args.chunk,
    }  # fmt: skip
    settings |= dict(item.split("=", 1) for item in args.set)
    workdir = args.workdir or tempfile.mkdtemp(prefix="zoo-gpt-budget-")
    print(f"workdir {workdir}; {args.steps} steps, batch {args.batch}; settings {settings}", flush=True)
    zoo.train(
        "gpt", variant=VARIANT, workdir=workdir, progress=False, steps=args.steps, batch_size=args.batch,
        settings=settings, eval_data=subset,
    )  # fmt: skip
    # Each log record times its interval (training, the evaluation before it, checkpoints): all counted.
    print(f"{'minutes':>8} {'step':>6} {'train nats':>11} {'val nats/char':>14}")
    minutes, previous, train_loss = 0.0, 0, float("nan")
    for record in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines()):
        if "steps_per_s" in record:
            minutes += (record["step"] - previous) / record["steps_per_s"] / 60
            previous, train_loss = record["step"], record["loss"]
        if "eval/nats_per_char" in record:
            print(f"{minutes:8.2f} {record['step']:6d} {train_loss:11.4f} {record['eval/nats_per_char']:14.4f}")
    final = zoo.load(workdir).evaluate(validation)["nats_per_char"]
    print(f"after {minutes:.1f} minutes ({args.steps} steps): {final:.4f} nats/char on the whole validation split")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=("speed", "budget"), default="speed")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="speed: steps per run [60]; budget: schedule length [2000]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=200, help="budget: steps between evaluations")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-windows", type=int, default=64, help="budget: windows of periodic evaluation (0: all)")
    parser.add_argument("--workdir", help="budget: run folder (default: a new temporary one)")
    parser.add_argument("--torch", action="store_true", help="budget: train the PyTorch reference instead (torch_gpt.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="budget: extra zoo settings")
    args = parser.parse_args()
    if args.mode == "speed":
        args.steps = args.steps or 60
        return speed(args)
    args.steps = args.steps or 2000
    return budget(args)


if __name__ == "__main__":
    sys.exit(main())
