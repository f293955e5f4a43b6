"""Healing methods compared at one token budget, on the embedded model with 4 of its 12 blocks pruned.

    python benchmarks/heal_quality.py [--tokens 500000] [--out DIR]

The plan is the one `prune --auto --blocks 4` chooses at its defaults (attention 4; MLP 1, 2, 3).
Every method trains on the shipped calibration text and is measured on the shipped held-out text (the
two are disjoint halves of python-docs-valid, which the model never trained on), 256-token windows
every 128. Rows: KD on all kept weights (the default), KD with LoRA, plain LM loss, KD on the last two
layers only; and the dense model trained with the same LM recipe, because a small model trained
briefly is undertrained and extra training helps it whatever was pruned. Throughput: KD runs the
teacher's forward too; LM-loss runs are the student's forward + backward alone.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import qprune
from qprune.healing.distill import HealSettings, heal
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

PLAN = Plan(attn=(4,), mlp=(1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=None, help="Keep the healed checkpoints here.")
    args = parser.parse_args()
    base = str(EMBEDDED_MODEL)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        pruned = root / "pruned"
        if not pruned.exists():
            qprune.prune(base, pruned, PLAN)
        runs = {
            "KD, all kept weights (default)": (pruned, HealSettings(tokens=args.tokens)),
            "KD, all kept weights, lr 2e-4": (pruned, HealSettings(tokens=args.tokens, lr=2e-4)),
            "KD, LoRA rank 16": (pruned, HealSettings(tokens=args.tokens, lora=16, lr=1e-3)),
            "LM loss, all kept weights": (pruned, HealSettings(tokens=args.tokens, loss="lm")),
            "KD, last 2 layers + norm + lm_head": (pruned, HealSettings(tokens=args.tokens, last_layers=2)),
            "dense model, LM loss (same recipe)": (Path(base), HealSettings(tokens=args.tokens, loss="lm")),
        }
        rows = []
        for name, (student, settings) in runs.items():
            out = root / name.split(",")[0].replace(" ", "-").lower() / str(len(rows))
            result = heal(str(student), out, settings, base=base, force=True, progress=False)
            r = result.report
            rows.append((name, r))
            print(f"done: {name}: {r['perplexity']['after']:.2f} in {r['train_seconds']:.0f} s", flush=True)
    teacher = rows[0][1]["perplexity"]["teacher"]
    before = rows[0][1]["perplexity"]["before"]
    print(f"\nembedded model, plan {PLAN}; held-out perplexity: dense {teacher:.2f}, pruned {before:.2f}")
    print(f"budget {args.tokens:,} tokens per run; 2 CPU cores, float32\n")
    print("| method | held-out perplexity after | gap recovered | trainable parameters | time | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        p = r["perplexity"]
        recovered = f"{p['gap_recovered']:.0%}" if p["gap_recovered"] is not None and "dense" not in name else "-"
        print(
            f"| {name} | {p['after']:.2f} (from {p['before']:.2f}) | {recovered} | {r['trainable_parameters']:,} | "
            f"{r['train_seconds']:.0f} s | {r['tokens_per_second']:,.0f} |"
        )


if __name__ == "__main__":
    main()
