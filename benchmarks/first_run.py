"""What a first run costs: `prune --auto --blocks 2` on the embedded model at the CLI's defaults against
explicit `--dtype float32` and `--dtype bfloat16`, and `qprune demo`, timed side by side.

    python benchmarks/first_run.py [--repeats 1] [--no-bfloat16]

Each run is a fresh `qprune` process (imports and loading included, as a user meets them); runs are
interleaved and the median wall time is printed. Goal: the default within 1.25x of float32's time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMBEDDED = str(Path(__file__).resolve().parents[1] / "src" / "qprune" / "assets" / "qwen3-pydocs")


def timed(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qprune.cli", *args, "-q"], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-bfloat16", action="store_true", help="Skip the (slow, on CPUs without bf16) bf16 run.")
    args = parser.parse_args()
    settings = {"prune --auto --blocks 2 (default dtype)": [], "  --dtype float32": []}
    if not args.no_bfloat16:
        settings["  --dtype bfloat16"] = ["--dtype", "bfloat16"]
    settings["  --dtype float32"] = ["--dtype", "float32"]
    times: dict[str, list[float]] = {name: [] for name in [*settings, "qprune demo"]}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for i, (name, extra) in enumerate(settings.items()):
                out = f"out-{repeat}-{i}"
                times[name].append(timed(["prune", EMBEDDED, out, "--auto", "--blocks", "2", *extra], scratch))
            times["qprune demo"].append(timed(["demo", "--out", f"demo-{repeat}"], scratch))
    for name, runs in times.items():
        print(f"{name:<42} {statistics.median(runs):7.1f} s")
    ratio = statistics.median(times["prune --auto --blocks 2 (default dtype)"]) / statistics.median(
        times["  --dtype float32"]
    )
    print(f"default / float32: {ratio:.2f}x (goal: at most 1.25x)")


if __name__ == "__main__":
    main()
