"""Expert pruning at Qwen3-30B-A3B's shape on a CPU: time and peak memory of `prune --auto
--expert-ratio 0.25` (expert saliency, then the stock cut written), whole in memory and within
`--max-memory`, side by side in one run.

    python benchmarks/experts_a3b.py              # 2 of its 48 layers, random bf16 weights: ~3.7 GB on disk
    python benchmarks/experts_a3b.py --layers 4

The checkpoint has the released shape (hidden 2048, 128 experts of width 768 per layer, 8 per token,
vocabulary 151936) with only the first `--layers` layers, random weights, and the shipped model's
tokenizer (its ids are a subset of the vocabulary). Each run is its own process, started from one
that never held a model; its peak RSS comes from `wait4`. Calibration: 8 x 128 tokens of the
shipped text.
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

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from qprune.cost import shape_named
from qprune.shipped import EMBEDDED_MODEL


def make_checkpoint(path: Path, layers: int) -> None:
    shape = shape_named("qwen3-30b-a3b").with_layers(layers)
    fields = shape.config_fields() | {"max_position_embeddings": 40960, "rope_theta": 1e6, "rms_norm_eps": 1e-6}
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**fields)).to(torch.bfloat16)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                parameter.normal_(0, 0.5)  # a router with real choices to make
    model.save_pretrained(path, max_shard_size="2GB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(EMBEDDED_MODEL / name, path / name)


def run(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and the last output line of `qprune ARGS` in its own process."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", "from qprune.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"qprune {' '.join(args)} failed:\n{output[-2000:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024, output.strip().splitlines()[-3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-memory", default="2GB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qprune-a3b-") as scratch:
        base = Path(scratch) / "a3b"
        start = time.perf_counter()
        # In a process of its own: a child forked from a parent that held the model would report the
        # parent's memory as its peak (ru_maxrss counts the pages shared at fork).
        write = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import experts_a3b as b; "
        write += f"b.make_checkpoint(b.Path({str(base)!r}), {args.layers})"
        subprocess.run([sys.executable, "-c", write], check=True, capture_output=True)
        size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        made = time.perf_counter() - start
        print(f"checkpoint: {args.layers} layers of Qwen3-30B-A3B, {size / 1e9:.2f} GB ({made:.0f} s to write)")
        common = ["--auto", "--expert-ratio", "0.25", "--samples", "8", "--seq-len", "128", "--dtype", "bfloat16", "-q"]
        print("\n| run | wall | peak RSS | result |")
        print("|---|---|---|---|")
        for label, extra in (
            ("whole in memory", []),
            (f"--max-memory {args.max_memory}", ["--max-memory", args.max_memory]),
        ):
            out = Path(scratch) / "cut"
            wall, peak, line = run(["prune", str(base), str(out), *common, *extra])
            print(f"| {label} | {wall:.0f} s | {peak / 1e9:.2f} GB | {line} |", flush=True)
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
