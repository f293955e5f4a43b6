"""Recovery without training (`prune --patch`) on the shipped model: held-out perplexity pruned, patched
and healed, for the plans `prune --auto --blocks N` chooses (N = 2, 4, 6), and what the fit's choices
do on the 4-block plan (the form of the map, the target, the ridge strength, the calibration tokens).

    python benchmarks/patch_quality.py                  # about 20 minutes on a 2-core CPU
    python benchmarks/patch_quality.py --heal-tokens 0  # without the heals (a few minutes)

Calibration and healing data: the shipped calibration text; perplexity: the shipped held-out text (the
two are disjoint halves of python-docs-valid), every 256-token window, float32. "Recovered" is the
share of the perplexity gap between the pruned and the dense model that a method closes. Healing is
`qprune heal`'s defaults (KD from the dense model, all kept weights) for --heal-tokens tokens, started
from the pruned and from the patched checkpoint. Times are this machine's, measured in this run.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

import qprune
from qprune.healing.distill import HealSettings, heal
from qprune.measure.data import DataSpec, load_token_batches
from qprune.measure.goal import Target
from qprune.measure.patch import PatchSettings
from qprune.ops.auto import auto_prune
from qprune.ops.patch import patch
from qprune.runtime.load import load_tokenizer
from qprune.shipped import EMBEDDED_MODEL, HELDOUT_TEXT

SEQ_LEN = 256
CALIBRATION = DataSpec(samples=64, seq_len=SEQ_LEN)  # 16,384 tokens: the default of the table below


def perplexity(path, rows: torch.Tensor) -> float:
    model = qprune.load(path, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in rows.split(16):
            total += model(input_ids=batch, labels=batch).loss.item() * batch.numel()
            count += batch.numel()
    return math.exp(total / count)


HEAD = "| blocks pruned | plan | pruned | patched (default) | recovered | fit time | healed | healed from patched |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heal-tokens", type=int, default=100_000, help="Heal this long (0: do not heal).")
    args = parser.parse_args()
    heldout = load_token_batches(
        DataSpec(str(HELDOUT_TEXT), samples=None, seq_len=SEQ_LEN), load_tokenizer(EMBEDDED_MODEL)
    )
    dense = perplexity(EMBEDDED_MODEL, heldout)
    print(f"shipped model: dense held-out perplexity {dense:.3f} ({heldout.numel():,} tokens)\n")
    with tempfile.TemporaryDirectory(prefix="qprune-patch-") as work:
        work = Path(work)

        def patched(name: str, plan, settings: PatchSettings = PatchSettings(), data: DataSpec = CALIBRATION):
            start = time.perf_counter()
            patch(EMBEDDED_MODEL, work / name, plan, settings, data=data, dtype="float32", force=True)
            return perplexity(work / name, heldout), time.perf_counter() - start

        def healed(name: str, start_from: Path, tokens: int) -> float:
            heal(start_from, work / name, HealSettings(tokens=tokens), base=EMBEDDED_MODEL, force=True, progress=False)
            return perplexity(work / name, heldout)

        plans = {}
        print(HEAD)
        print("|---|---|---|---|---|---|---|---|")
        for blocks in (2, 4, 6):
            result, _ = auto_prune(EMBEDDED_MODEL, work / f"pruned-{blocks}", CALIBRATION, Target(blocks=blocks),
                                   dtype="float32", progress=False, force=True)  # fmt: skip
            plans[blocks] = plan = result.plan
            pruned = perplexity(work / f"pruned-{blocks}", heldout)
            fixed, seconds = patched(f"patched-{blocks}", plan)
            gap = pruned - dense
            row = [
                str(blocks),
                str(plan),
                f"{pruned:.3f}",
                f"{fixed:.3f}",
                f"{(pruned - fixed) / gap:.0%}",
                f"{seconds:.0f} s",
            ]
            if args.heal_tokens:
                for name, start in (
                    ("healed", work / f"pruned-{blocks}"),
                    ("healed-patched", work / f"patched-{blocks}"),
                ):
                    after = healed(f"{name}-{blocks}", start, args.heal_tokens)
                    row.append(f"{after:.3f} ({(pruned - after) / gap:.0%})")
            else:
                row += ["-", "-"]
            print("| " + " | ".join(row) + " |", flush=True)
        plan = plans[4]
        pruned = perplexity(work / "pruned-4", heldout)
        gap = pruned - dense
        print(f"\n4 blocks ({plan}): pruned {pruned:.3f}; recovered share of the gap, and fit time\n")
        print("| map | target | ridge | calibration tokens | patched | recovered | time |")
        print("|---|---|---|---|---|---|---|")
        runs = [(m, t, 1e-3, CALIBRATION) for m in ("full", "output", "diagonal") for t in ("dense", "local")]
        runs += [("full", "dense", r, CALIBRATION) for r in (1e-5, 1e-2, 1e-1)]
        runs += [("full", "dense", 1e-3, DataSpec(samples=n, seq_len=SEQ_LEN)) for n in (4, 16, 256)]
        for form, target, ridge, data in runs:
            settings = PatchSettings(patch_map=form, patch_target=target, patch_ridge=ridge)
            fixed, seconds = patched("explore", plan, settings, data)
            tokens = data.samples * data.seq_len
            recovered = (pruned - fixed) / gap
            print(f"| {form} | {target} | {ridge:g} | {tokens:,} | {fixed:.3f} | {recovered:.0%} | {seconds:.0f} s |")
        if args.heal_tokens:
            quarter = args.heal_tokens // 4
            print(f"\nhealing the 4-block plan with {quarter:,} tokens (a quarter of the budget):\n")
            for name, start in (("pruned", work / "pruned-4"), ("patched", work / "patched-4")):
                after = healed(f"quarter-{name}", start, quarter)
                print(
                    f"- from the {name} checkpoint: {after:.3f} ({(pruned - after) / gap:.0%} of the gap)", flush=True
                )


if __name__ == "__main__":
    main()
