"""Benchmark: peak memory of `qprune heal` follows --tokens, not the size of --data.

    python benchmarks/heal_memory.py [--sizes 0.1,1,4] [--tokens 512] [--workdir DIR]

Prunes 2 blocks out of the shipped model (`src/qprune/assets/qwen3-pydocs`), builds training texts of
growing size from the shipped texts repeated, and heals with the same --tokens on each, with and
without --teacher-cache, each run in its own child process (peak RSS from `os.wait4`). The figures
must be flat: heal reads and tokenizes --data as a stream, only as far as the budget needs, and the
teacher cache covers only those sequences. (Before, the whole file was tokenized and, with the cache,
the teacher's log-probabilities of every sequence held: a 1.2 MB text grew past 9 GB.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 10**6
ASSETS = Path(__file__).resolve().parent.parent / "src" / "qprune" / "assets"


def build_text(path: Path, megabytes: float) -> None:
    """`megabytes` of the shipped texts, repeated."""
    pieces = [p.read_text(encoding="utf-8") for p in sorted((ASSETS / "text").glob("*.txt"))]
    unit, size = "\n".join(pieces), int(megabytes * MB)
    path.write_text((unit * (size // len(unit) + 1))[:size], encoding="utf-8")


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process. This process imports neither torch nor
    qprune: Linux carries a parent's peak RSS over fork+exec into the child's ru_maxrss."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{stderr.decode()[-2000:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.1,1,4", help="Sizes of --data in MB, comma-separated.")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--eval-tokens", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qprune-heal-bench-"))
    qprune = [sys.executable, "-m", "qprune.cli"]
    pruned = work / "pruned"
    if not pruned.exists():
        run_measured([*qprune, "prune", str(ASSETS / "qwen3-pydocs"), str(pruned), "--attn", "2", "--mlp", "3", "-q"])

    print(
        f"qprune heal --tokens {args.tokens} --seq-len {args.seq_len} --batch-size {args.batch_size} "
        f"--eval-tokens {args.eval_tokens} on the shipped model (2 blocks pruned)"
    )
    print(f"{'--data':>9}  {'teacher cache':>13}  {'peak RSS':>9}  {'wall':>6}")
    peaks: dict[bool, list[int]] = {False: [], True: []}
    for megabytes in [float(s) for s in args.sizes.split(",")]:
        data = work / f"data-{megabytes:g}MB.txt"
        build_text(data, megabytes)
        for cached in (False, True):
            cache = work / f"cache-{megabytes:g}"
            shutil.rmtree(cache, ignore_errors=True)
            cmd = [
                *qprune, "heal", str(pruned), str(work / "healed"), "--data", str(data), "--tokens", str(args.tokens),
                "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                "--eval-tokens", str(args.eval_tokens), "--force", "-q",
                *(["--teacher-cache", str(cache)] if cached else []),
            ]  # fmt: skip
            seconds, peak = run_measured(cmd)
            peaks[cached].append(peak)
            print(f"{megabytes:>7g}MB  {'yes' if cached else 'no':>13}  {peak / MB:>6.0f} MB  {seconds:>5.1f}s")
    for cached, figures in peaks.items():
        spread = (max(figures) - min(figures)) / MB
        verdict = "PASS" if spread <= 100 else "FAIL"
        print(
            f"{'with' if cached else 'without'} the cache: peak RSS spread {spread:.0f} MB (flat: <= 100 MB) {verdict}"
        )


if __name__ == "__main__":
    main()
