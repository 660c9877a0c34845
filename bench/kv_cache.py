"""KV-cache decoding against full recomputation: the speed-up at 512 new tokens, measured side by side.

Both ways draw the same tokens (checked here, and in tests/plugins/test_gpt.py) in the
same rounds (``zoo_gpt.decode``: a round prefills its window, then adds one token
per step until the context is full):

  cached       each new token runs through the model alone, attending to the
               keys and values the cache keeps (``GPT.extend``);
  recomputed   each new token runs the whole window (``context`` positions) through
               the model, the cost of decoding without a cache.

Each way runs once untimed (compilation), then in ``--rounds`` interleaved rounds;
the figure is the median seconds per generation. Weights are random: speed does
not depend on them.

At batch 1 a cached step reads every weight once per token (13 MB of float32 for
char-4x256, more than this CPU's 8 MB L3): it runs at the speed of memory, while
the recomputed path is bound by arithmetic. The ratio therefore moves with the
host's memory bandwidth (an AMD EPYC VM with an 8 MB L3 measured 8 to 11 GB/s on
one day: 8.9x to 11.1x), so the bench also prints the weight bytes read per second
by the cached path next to a matrix-vector probe streaming as many bytes
(``probe_bandwidth``). Where the weights fit in the last-level cache they stream
far faster: on a 2-core Xeon with a 260 MB L3 (the issue's kind of host) the probe
read 29.9 GB/s, the cached path 24.5 GB/s, and the speed-up was 14.7x.

    python bench/kv_cache.py [--variant char-4x256] [--new 512] [--batch 1] [--rounds 3] [--target 10]

Exit status: 0 if recomputed / cached >= target, 1 if not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import zoo
from zoo_gpt import decode


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def probe_bandwidth(nbytes: int, repeats: int = 20) -> float:
    """Bytes per second of float32 matrix-vector products reading ``nbytes`` of matrices in turn.

    Each product's output feeds the next, as a decoding step's layers do, so
    nothing overlaps; the median of 5 timings of ``repeats`` passes.
    """
    rows, cols = 1024, 256
    count = max(1, -(-nbytes // (rows * cols * 4)))
    matrices = jax.random.normal(jax.random.key(0), (count, rows, cols)) * 0.03

    @jax.jit
    def passes(x):
        def one_pass(_, x):
            for i in range(count):  # unrolled: one product per matrix, as separate as a model's layers
                x = jnp.tile(x @ matrices[i], 4)
            return x
        return jax.lax.fori_loop(0, repeats, one_pass, x)

    x = jnp.ones((rows,), jnp.float32)
    jax.block_until_ready(passes(x))
    seconds = statistics.median(timed(lambda: jax.block_until_ready(passes(x))) for _ in range(5))
    return matrices.nbytes * repeats / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="char-4x256")
    parser.add_argument("--new", type=int, default=512, help="new tokens per generation")
    parser.add_argument("--batch", type=int, default=1, help="texts generated at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=float, default=10.0)
    args = parser.parse_args()

    model = zoo.build("gpt", variant=args.variant, seed=0)
    prompt = np.tile(np.frombuffer(b"ROMEO:", np.uint8).astype(np.int32), (args.batch, 1))
    key = jax.random.key(0)
    ways = {
        "cached": lambda: decode.generate(model, prompt, args.new, key, cached=True),
        "recomputed": lambda: decode.generate(model, prompt, args.new, key, cached=False),
    }
    tokens = {name: way() for name, way in ways.items()}  # compiles; and the same tokens both ways
    if not np.array_equal(tokens["cached"], tokens["recomputed"]):
        print("cached and recomputed decoding drew different tokens", file=sys.stderr)
        return 1
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(args.rounds):
        for name in names[r % 2 :] + names[: r % 2]:
            times[name].append(timed(ways[name]))
            print(f"round {r + 1} {name:<11} {times[name][-1]:8.3f} s", flush=True)
    cached, recomputed = statistics.median(times["cached"]), statistics.median(times["recomputed"])
    ratio = recomputed / cached
    weights = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(  # every step reads each weight once, for the whole batch
        f"cached path reads {weights / 1e6:.1f} MB of weights a step: {weights * args.new / cached / 1e9:.1f} GB/s; "
        f"a matrix-vector probe over as many bytes streams {probe_bandwidth(weights) / 1e9:.1f} GB/s"
    )
    print(
        f"gpt/{args.variant}, {args.new} new tokens, batch {args.batch}, {jax.devices()[0].platform}: "
        f"cached {cached:.3f} s ({args.new / cached:.0f} tokens/s), recomputed {recomputed:.3f} s; "
        f"speed-up {ratio:.1f}x (target >= {args.target}): {'PASS' if ratio >= args.target else 'FAIL'}"
    )
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
