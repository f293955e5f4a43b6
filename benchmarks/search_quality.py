"""Quality of automatic plans on the embedded trained model: held-out perplexity after removing 2, 4 and
6 blocks with each method.

    python benchmarks/search_quality.py                        # about 5 minutes on a 2-core CPU
    python benchmarks/search_quality.py --calibration FILE.txt # calibrate on other text

Plans are chosen on the shipped calibration text (first half of python-docs-valid, 32 x 512 tokens,
seed 0) and judged on the shipped held-out text (its second half): every non-overlapping 512-token
window, float32. Neither half was seen in training. Methods: greedy by NLL and by KL (qprune's default is greedy
NLL), and one-shot rankings by cosine similarity (ShortGPT / LLM-Drop), by relative update norm, and by
the NLL rise of removing each block alone.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import AutoTokenizer

from qprune import load
from qprune.measure.data import HELDOUT_TEXT, DataSpec, load_token_batches
from qprune.measure.search import Target, calibration_nll, greedy_search, oneshot_search
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

METHODS = {
    "greedy NLL (default)": ("greedy", "nll"),
    "greedy KL": ("greedy", "kl"),
    "one-shot cosine": ("oneshot", "cosine"),
    "one-shot update norm": ("oneshot", "update"),
    "one-shot NLL rise": ("oneshot", "nll"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", help="calibration text file (default: the shipped sample)")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    calibration = load_token_batches(DataSpec(args.calibration, samples=32, seq_len=512), tokenizer)
    print(f"calibration: {args.calibration or 'shipped sample'}, 32 x 512 tokens")
    heldout = load_token_batches(DataSpec(str(HELDOUT_TEXT), samples=None, seq_len=512), tokenizer)
    search_model = load(EMBEDDED_MODEL, dtype=torch.bfloat16)  # as `prune --auto` searches
    judge = load(EMBEDDED_MODEL, dtype=torch.float32)

    def heldout_ppl(plan: Plan) -> float:
        return math.exp(calibration_nll(judge, heldout, plan))

    print(f"held-out: {heldout.shape[0]} x {heldout.shape[1]} tokens; dense perplexity {heldout_ppl(Plan()):.2f}\n")
    print("| blocks removed | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    plans = {}
    for blocks in (2, 4, 6):
        cells = []
        for name, (method, metric) in METHODS.items():
            start = time.perf_counter()
            if method == "greedy":
                result = greedy_search(search_model, calibration, Target(blocks=blocks), metric)
            else:
                result = oneshot_search(search_model, calibration, Target(blocks=blocks), metric)
            seconds = time.perf_counter() - start
            plans[(blocks, name)] = (result.plan, seconds)
            cells.append(f"{heldout_ppl(result.plan):.2f}")
        print(f"| {blocks} of 12 | " + " | ".join(cells) + " |")
    print("\nplans (search seconds):")
    for (blocks, name), (plan, seconds) in plans.items():
        print(f"  {blocks} {name:<22} {plan}   ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
