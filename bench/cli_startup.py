"""Cold start of `zoo list` against `python -c "import jax"`, measured side by side.

`zoo list` works from Plugin objects and catalogues alone and must never import
jax, so a fresh `zoo list` process should cost a small fraction of importing jax.
Both commands (and, for context, a bare `python -c pass`) run as fresh processes of the current interpreter's environment
(the `zoo` console script next to `sys.executable`), interleaved so that load on
the machine affects both alike; the medians and their ratio are printed.

    python bench/cli_startup.py [--runs N] [--target 0.25]

Exit status: 0 if the ratio is at most the target, 1 if not, 2 if a command fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        print(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()}", file=sys.stderr)
        sys.exit(2)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (default 15)")
    parser.add_argument("--target", type=float, default=0.25, help="largest acceptable ratio (default 0.25)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    script = Path(sys.executable).parent / ("zoo.exe" if os.name == "nt" else "zoo")
    if not script.exists():
        print(f"no zoo console script next to {sys.executable}; install the project (pip install -e .)", file=sys.stderr)
        return 2
    commands = {
        "zoo list": [str(script), "list"],
        "import jax": [sys.executable, "-c", "import jax"],
        "python": [sys.executable, "-c", "pass"],  # interpreter start alone, for context
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for argv in commands.values():  # one untimed run each: bytecode compiled, files in the page cache
        timed(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(args.runs):  # interleaved, alternating which goes first
        order = list(commands)[i % len(commands) :] + list(commands)[: i % len(commands)]
        for name in order:
            times[name].append(timed(commands[name], env))

    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["zoo list"] / medians["import jax"]
    for name, t in times.items():
        print(f"{name:<11} median {medians[name] * 1e3:7.1f} ms  (min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f}, {len(t)} runs)")
    ok = ratio <= args.target
    print(
        f"RESULT: cold `zoo list` / `import jax` = {ratio:.3f} (target <= {args.target}): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
