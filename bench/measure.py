"""What the benches share: interleaved rounds, the loop's own clock, medians with their spread.

Every bench here compares ways of doing the same work on a machine that others
use at the same time, so each way runs once per round, in an order that rotates
between rounds, and each run yields many short intervals (seconds per step);
the figure is the median over all intervals of all rounds, printed with its
quartiles and extremes so the noise is visible.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def loop_intervals(workdir: str | Path, skip: int = 1) -> list[float]:
    """Seconds per step in each log interval of a finished ``zoo`` run, from its ``metrics.jsonl``.

    The loop fetches its metrics at every log point (a sync), so ``steps_per_s``
    times whole intervals of device work plus the loop's own Python. The first
    ``skip`` intervals hold the compilation and are left out.
    """
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    rates = [record["steps_per_s"] for record in map(json.loads, lines) if "steps_per_s" in record]
    return [1.0 / rate for rate in rates[skip:]]


def timed_intervals(calls: Iterator[Callable[[], None]], every: int, sync: Callable[[], None], skip: int = 1) -> list[float]:
    """Seconds per call in intervals of ``every`` calls, synchronised with ``sync``, the first ``skip`` left out."""
    marks = [time.perf_counter()]
    for i, call in enumerate(calls, 1):
        call()
        if i % every == 0:
            sync()
            marks.append(time.perf_counter())
    return [(b - a) / every for a, b in zip(marks[skip:], marks[skip + 1 :])]


def interleaved(runs: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[float]]:
    """Each run once untimed (caches, allocator), then ``rounds`` rounds in rotating order; intervals per run."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            intervals = runs[name]()
            times[name] += intervals
            print(f"round {r + 1} {name:<22} median {statistics.median(intervals) * 1e3:8.3f} ms/step", flush=True)
    return times


def summarise(times: dict[str, list[float]], scale: float = 1e3, unit: str = "ms/step") -> dict[str, float]:
    """Print each run's median, quartiles and extremes (times ``scale``, in ``unit``); return the medians."""
    medians = {}
    for name, t in times.items():
        q1, median, q3 = statistics.quantiles(t, n=4) if len(t) > 1 else (t[0],) * 3
        medians[name] = median
        print(
            f"{name:<22} median {median * scale:9.3f} {unit}  quartiles {q1 * scale:.3f}..{q3 * scale:.3f}  "
            f"range {min(t) * scale:.3f}..{max(t) * scale:.3f}  ({len(t)} intervals)"
        )
    return medians


def verdict(name: str, ratio: float, target: float) -> bool:
    """Print ``name = ratio`` against ``target``; True when it holds."""
    ok = ratio <= target
    print(f"{name} = {ratio:.3f} (target <= {target}): {'PASS' if ok else 'FAIL'}")
    return ok


def vae_bench_setup(description: str, *, batch: int, fuse: int, target: float, every: int) -> tuple[argparse.Namespace, dict, str] | None:
    """The VAE benches' shared start: options, their checks, one device, MNIST (or synthetic) train arrays.

    Returns ``(args, arrays, source)``, or None after saying why the bench cannot run here.
    """
    import jax  # imported here: the helpers above serve benches that time their own imports
    import zoo.data

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=1000, help=f"steps per run, a multiple of {every} (default 1000)")
    parser.add_argument("--fuse", type=int, default=fuse, help=f"steps_per_call of the fused runs; 1 skips them (default {fuse})")
    parser.add_argument("--target", type=float, default=target, help=f"largest acceptable ratio (default {target})")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps % every or args.steps < 3 * every or args.fuse < 1 or every % args.fuse:
        parser.error(f"need rounds >= 1, steps a multiple of {every} and at least {3 * every}, and --fuse dividing {every}")
    if jax.device_count() != 1:
        print(f"run on one device (found {jax.device_count()}: unset XLA_FLAGS' device count)", file=sys.stderr)
        return None
    if zoo.data.is_cached("mnist"):
        return args, zoo.data.load("mnist", "train"), "MNIST train"
    return args, zoo.data.synthetic("mnist", 60000), "synthetic"
