"""The README's quantization table: perplexity and parameter bytes for each --quantize mode.

    python benchmarks/quant_table.py                  # about 5 minutes on a 2-core CPU
    python benchmarks/quant_table.py --modes int8,nf4 --no-shape

1. Quality: the embedded trained model, dense and pruned by the 4 blocks `prune --auto --blocks 4`
   chose (attention 4; MLP 1, 2, 3), perplexity on the whole held-out text (windows of 256, stride 128,
   the length it was trained at) and parameter bytes, unquantized (bf16) and in each mode.
2. Memory at scale: parameter bytes of a random model of Qwen3-0.6B's shape, dense and with 25% of
   its blocks pruned (attention and MLP of layers 20-26), in each mode. Its embeddings (155M of 596M
   parameters, tied to lm_head) stay unquantized in every mode.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

import qprune
from qprune.bench import random_pair
from qprune.cost import shape_named
from qprune.demo import EMBEDDED_MODEL
from qprune.evaluate import run_eval
from qprune.plan import Plan
from qprune.quantization import MODES, parameter_bytes, quantize
from qprune.report import human_bytes

EMBEDDED_PLAN = Plan(attn=(4,), mlp=(1, 2, 3))
SHAPE_PLAN = Plan.parse("20-26", "20-26")


def quality(modes: list[str | None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pruned = Path(tmp) / "pruned"
        qprune.prune(str(EMBEDDED_MODEL), pruned, EMBEDDED_PLAN)
        print(f"\nembedded model, pruned: {EMBEDDED_PLAN}; held-out text, windows of 256, stride 128\n")
        print("| model | quantize | perplexity | vs unquantized | parameter bytes | eval time |")
        print("|---|---|---|---|---|---|")
        for label, path in (("dense", EMBEDDED_MODEL), ("pruned", pruned)):
            reference = None
            for mode in modes:
                start = time.perf_counter()
                report = run_eval(str(path), seq_len=256, stride=128, quantize=mode, progress=False)
                seconds = time.perf_counter() - start
                ppl = report.model.perplexity.value
                reference = reference or ppl
                print(
                    f"| {label} | {mode or 'none (bf16)'} | {ppl:.3f} | {ppl / reference - 1:+.2%} | "
                    f"{human_bytes(report.model.param_bytes)} | {seconds:.1f} s |"
                )


def memory(modes: list[str | None], shape_name: str) -> None:
    shape = shape_named(shape_name)
    print(f"\n{shape_name} shape, random weights; pruned: {SHAPE_PLAN} (25% of all blocks)\n")
    print("| quantize | dense parameter bytes | pruned parameter bytes | pruned / dense |")
    print("|---|---|---|---|")
    for mode in modes:
        dense, pruned = random_pair(shape, SHAPE_PLAN, torch.bfloat16, "cpu")
        if mode is not None:
            dense, pruned = quantize(dense, mode), quantize(pruned, mode)
        sizes = parameter_bytes(dense), parameter_bytes(pruned)
        print(
            f"| {mode or 'none (bf16)'} | {human_bytes(sizes[0])} | {human_bytes(sizes[1])} | "
            f"{sizes[1] / sizes[0]:.3f} |"
        )
        del dense, pruned
        gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="int8,nf4,torchao-int8", help=f"Any of {', '.join(MODES)}.")
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--no-shape", action="store_true", help="Skip the memory table at scale.")
    args = parser.parse_args()
    modes = [None, *args.modes.split(",")]
    quality(modes)
    if not args.no_shape:
        memory(modes, args.shape)


if __name__ == "__main__":
    main()
