"""The README's quantization table: perplexity and parameter bytes for each --quantize mode.

    python benchmarks/quant_table.py                  # about 5 minutes on a 2-core CPU
    python benchmarks/quant_table.py --modes int8,nf4 --tables quality

1. Quality: the embedded trained model, dense and pruned by the 4 blocks `prune --auto --blocks 4`
   chose (attention 4; MLP 1, 2, 3), perplexity on the whole held-out text (windows of 256, stride 128,
   the length it was trained at) and parameter bytes, unquantized (bf16) and in each mode.
2. Memory at scale: a random bf16 checkpoint of Qwen3-0.6B's shape, dense and with 25% of its blocks
   pruned (attention and MLP of layers 20-26), loaded in each mode in a fresh process: parameter
   bytes, the resident memory the load added (private memory, and checkpoint pages mapped from the
   file: unquantized loads use the file's pages as the weights; clean pages the kernel can reclaim),
   and the peak while loading. Its embeddings (155M of
   596M parameters, tied to lm_head) stay unquantized in every mode.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import qprune
import qprune.runtime.memory
from qprune.cost import shape_named
from qprune.measure.evaluate import run_eval
from qprune.plan import Plan
from qprune.runtime.quantize import MODES
from qprune.shipped import EMBEDDED_MODEL
from qprune.words import human_bytes

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


_LOAD_AND_MEASURE = """
import gc, json, sys, torch, qprune
from qprune.runtime.quantize import parameter_bytes

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

import transformers, qprune.runtime.load, qprune.runtime.quantize  # imported before the baseline is read
before = {key: status(key) for key in ("RssAnon", "RssFile", "VmRSS")}
model = qprune.load(sys.argv[1], quantize=sys.argv[2] or None)
with torch.no_grad():
    model(torch.ones(1, 16, dtype=torch.long))  # bitsandbytes repacks 4-bit weights for CPUs here
gc.collect()
qprune.runtime.memory.return_freed_memory()  # what the model holds, not what the allocator keeps for reuse
added = {key: status(key) - value for key, value in before.items()}
print(json.dumps({"params": parameter_bytes(model), "peak": status("VmHWM") - before["VmRSS"], **added}))
"""


def memory(modes: list[str | None], shape_name: str) -> None:
    """Each (checkpoint, mode) loaded in a fresh process: parameter bytes, and what the load added to
    the resident set (after one forward) and to its peak."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = shape_named(shape_name)
    with tempfile.TemporaryDirectory() as tmp:
        dense_dir, pruned_dir = Path(tmp) / "dense", Path(tmp) / "pruned"
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = Qwen3ForCausalLM(Qwen3Config(**shape.config_fields()))
        model.to(torch.bfloat16).save_pretrained(dense_dir)
        del model
        gc.collect()
        qprune.prune(str(dense_dir), pruned_dir, SHAPE_PLAN)
        print(f"\n{shape_name} shape, random bf16 weights; pruned: {SHAPE_PLAN} (25% of all blocks)")
        print(
            "each loaded in a fresh process: parameter bytes; what the load added to the resident set, as "
            "private (anonymous) memory and as checkpoint pages mapped from the file; the peak RSS added\n"
        )
        print("| model | quantize | parameter bytes | private memory | mapped checkpoint pages | peak RSS |")
        print("|---|---|---|---|---|---|")
        for label, path in (("dense", dense_dir), ("pruned", pruned_dir)):
            for mode in modes:
                out = subprocess.run(
                    [sys.executable, "-c", _LOAD_AND_MEASURE, str(path), mode or ""],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"| {label} | {mode or 'none (bf16)'} | {human_bytes(figures['params'])} | "
                    f"{human_bytes(figures['RssAnon'])} | {human_bytes(figures['RssFile'])} | "
                    f"{human_bytes(figures['peak'])} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="int8,nf4,torchao-int8", help=f"Any of {', '.join(MODES)}.")
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--tables", default="quality,memory", help="Which tables: quality, memory or both.")
    args = parser.parse_args()
    modes = [None, *args.modes.split(",")]
    if "quality" in args.tables:
        quality(modes)
    if "memory" in args.tables:
        memory(modes, args.shape)


if __name__ == "__main__":
    main()
