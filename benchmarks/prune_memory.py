"""Benchmark: peak memory and wall time of `qprune prune` on a ~0.4 GB random Qwen3.

    python benchmarks/prune_memory.py [--workdir DIR]

Builds a bf16 Qwen3 of about 0.43 GB saved in 100 MB shards, prunes a quarter of its blocks with
the `qprune` CLI in a child process, and prints side by side: the child's peak RSS against the largest
shard, and its wall time against copying the same shard files. Goal: peak RSS <= largest shard + 0.6 GB.
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


def build_source(path: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=False,
    )
    with torch.device("cpu"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="100MB")


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        return build_source(args.build)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="qprune-bench-"))
    src = work / "source"
    if not src.exists():
        # In a child: Linux carries a parent's peak RSS over fork+exec into ru_maxrss, so this
        # process must stay small for the measurements of its children to mean anything.
        subprocess.run([sys.executable, __file__, "--build", str(src)], check=True)
    shards = sorted(src.glob("*.safetensors"))
    total, largest = sum(p.stat().st_size for p in shards), max(p.stat().st_size for p in shards)
    qprune = [sys.executable, "-m", "qprune.cli"]

    results = {"prune": [], "copy": [], "startup": []}
    for _ in range(3):  # interleaved repetitions, median reported
        out = work / "pruned"
        prune_cmd = [*qprune, "prune", str(src), str(out), "--attn", "3,5,7", "--mlp", "4,8,9"]
        results["prune"].append(run_measured([*prune_cmd, "--max-shard-size", "100MB", "--force"]))
        copy_dir = work / "copy"
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()
        code = f"import shutil,sys; [shutil.copy(p, {str(copy_dir)!r}) for p in sys.argv[1:]]"
        results["copy"].append(run_measured([sys.executable, "-c", code, *map(str, shards)]))
        results["startup"].append(run_measured([*qprune, "--help"]))

    def median(values):
        return sorted(values)[len(values) // 2]

    prune_s, prune_rss = median([r[0] for r in results["prune"]]), median([r[1] for r in results["prune"]])
    copy_s, copy_rss = median([r[0] for r in results["copy"]]), median([r[1] for r in results["copy"]])
    print(f"source: {total / MB:.0f} MB in {len(shards)} shards, largest shard {largest / MB:.0f} MB")
    print(f"prune: {prune_s:.2f} s wall, peak RSS {prune_rss / MB:.0f} MB")
    print(f"copy:  {copy_s:.2f} s wall, peak RSS {copy_rss / MB:.0f} MB (copying all source shards)")
    startup_s = median([r[0] for r in results["startup"]])
    print(
        f"prune / copy wall time: {prune_s / copy_s:.2f}x ({startup_s:.2f} s of prune is CLI start-up: qprune --help)"
    )
    print(
        f"peak RSS - largest shard: {(prune_rss - largest) / MB:+.0f} MB (goal <= +600 MB): "
        + ("PASS" if prune_rss <= largest + 600 * MB else "FAIL")
    )


if __name__ == "__main__":
    main()
