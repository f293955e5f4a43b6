"""Torch threads for small models: 1 vs all cores, on an idle machine and with one core kept busy.

    python benchmarks/threads.py [--repeats 3]

Times, in one process per run (so each starts cold, like the CLI), the generation of 40 tokens and a
one-pass scan of the embedded model, with OMP_NUM_THREADS=1 and with torch's default (all cores);
"busy" runs beside a process that spins one core, as on a shared machine or a laptop doing other
work. Prints medians of interleaved runs; the work timed excludes imports and loading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORK = r"""
import sys, time, torch
import qprune
from qprune.measure.data import DataSpec, load_token_batches
from qprune.shipped import EMBEDDED_MODEL
from qprune.runtime.generate import complete, load_with_tokenizer
from qprune.measure.scan import one_pass_metrics

model, tokenizer = load_with_tokenizer(EMBEDDED_MODEL, dtype=torch.float32)
batch = load_token_batches(DataSpec(samples=16, seq_len=256), tokenizer)
start = time.perf_counter()
complete(model, tokenizer, "The list type", 40)
generate = time.perf_counter() - start
start = time.perf_counter()
one_pass_metrics(model, batch)
print(generate, time.perf_counter() - start)
"""


def run(threads: str | None) -> tuple[float, float]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    out = subprocess.run([sys.executable, "-c", WORK], env=env, capture_output=True, text=True, check=True)
    generate, scan = map(float, out.stdout.split()[-2:])
    return generate, scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = {"1 thread": "1", f"default ({os.cpu_count()} threads)": None}
    print(f"{'machine':<8} {'threads':<22} {'generate 40 tokens':>20} {'one-pass scan 16x256':>22}")
    for machine in ("idle", "busy"):
        burner = None
        if machine == "busy":
            burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            times = {name: [] for name in settings}
            for _ in range(args.repeats):
                for name, threads in settings.items():
                    times[name].append(run(threads))
        finally:
            if burner is not None:
                burner.kill()
        for name, runs in times.items():
            generate = statistics.median(r[0] for r in runs)
            scan = statistics.median(r[1] for r in runs)
            print(f"{machine:<8} {name:<22} {generate:>19.2f}s {scan:>21.2f}s")


if __name__ == "__main__":
    main()
