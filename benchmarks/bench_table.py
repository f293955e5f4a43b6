"""The README's speed table: `qprune bench` on random models of Qwen3-0.6B's shape, four plans.

    python benchmarks/bench_table.py                   # batch 1 and 8; about 25 minutes on a 2-core CPU
    python benchmarks/bench_table.py --batch 1 --repeats 9 --out bench.json

Plans (28 layers, 56 blocks): 25% of the attention blocks (layers 20-26), 50% of them (13-26), 25% of
the MLP blocks (20-26), and 25% of all blocks (attention and MLP of layers 20-26) - the goal case: at
batch 1, measured speedups >= 0.95x the ideal. Which layers are pruned does not change the speed.
Prints a Markdown table; `--out` keeps every figure (the `qprune bench --json` objects).
"""

from __future__ import annotations

import argparse
import json

import torch

from qprune.measure.bench import BenchSettings, run_bench
from qprune.plan import Plan

PLANS = {
    "25% attention": Plan.parse("20-26", None),
    "50% attention": Plan.parse("13-26", None),
    "25% MLP": Plan.parse(None, "20-26"),
    "25% of all blocks": Plan.parse("20-26", "20-26"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="Write every report here as JSON.")
    args = parser.parse_args()
    settings = BenchSettings(
        args.prompt_len, args.new_tokens, tuple(int(b) for b in args.batch.split(",")), args.repeats, warmup=1
    )
    reports = {}
    for name, plan in PLANS.items():
        report = run_bench(shape=args.shape, plan=plan, settings=settings, dtype=args.dtype, device=args.device)
        reports[name] = report.to_dict()
        print(f"\n## {name}\n{report.table()}", flush=True)
    device = reports[next(iter(reports))]["device"]
    cpu = torch.cuda.get_device_name() if device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    print(
        f"\n{args.shape} shape, {args.dtype}, {cpu}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"median of {args.repeats}\n"
    )
    print(
        "| plan | batch | prefill speedup (ideal, measured/ideal) | decode speedup (ideal, measured/ideal) "
        "| param bytes | KV bytes | peak bytes |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, report in reports.items():
        for row in report["batches"]:
            d, p = row["dense"], row["pruned"]
            print(
                f"| {name} | {row['batch']} "
                f"| {row['prefill_speedup']:.2f}x ({row['ideal_prefill_speedup']:.2f}x, {row['prefill_vs_ideal']:.2f}) "
                f"| {row['decode_speedup']:.2f}x ({row['ideal_decode_speedup']:.2f}x, {row['decode_vs_ideal']:.2f}) "
                f"| {p['param_bytes'] / d['param_bytes']:.3f} | {p['kv_bytes'] / d['kv_bytes']:.3f} "
                f"| {_ratio(p['peak_bytes'], d['peak_bytes'])} |"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(reports, f, indent=2)


def _ratio(pruned, dense) -> str:
    return "n/a" if pruned is None or dense is None else f"{pruned / dense:.3f}"


if __name__ == "__main__":
    main()
