"""The figures a lent GPU produces in one short session: one stage per call, each appending a JSON line.

    python benchmarks/gpu_figures.py STAGE --out figures.jsonl    # STAGE: env, bench-0.6b, bench-8b,
                                                                   # bench-30b-a3b, scan-search, heal
    python benchmarks/gpu_figures.py STAGE --out f.jsonl --smoke   # 2 layers, few tokens: try it on a CPU

Run as separate processes (one per stage, each under `timeout`), so a stage that fails or runs long
costs only itself; `benchmarks/gpu_figures.sh` runs them all. Every model is random-weight bf16 of a
released shape; the plans prune 25% of the blocks (attention and MLP of the last quarter of layers but
the very last), as in the README's CPU table.
- bench-*: `qprune bench` (prefill and decode speedups, measured / ideal, KV and peak bytes) at batch
  1 and 8, 512-token prompts, 64 new tokens (32 and 3 repeats for the MoE). Qwen3-30B-A3B runs its first 24 of 48
  layers, which keeps the pair within one 80 GB GPU.
- scan-search: `qprune scan` and `prune --auto --blocks 4` (greedy with prefix reuse) of a saved
  Qwen3-0.6B-shaped checkpoint on 16 x 512 calibration tokens, wall times.
- heal: `qprune heal` (KD, all kept weights) of that checkpoint pruned by 25%: tokens per second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from qprune.measure.bench import BenchSettings, run_bench
from qprune.plan import Plan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMOKE = False  # --smoke: every model 2 layers deep and every run short, to try the stages anywhere
BENCHES = {  # name: (shape, layers kept, plan, new tokens)
    "bench-0.6b": ("qwen3-0.6b", None, Plan.parse("20-26", "20-26"), 64),
    "bench-8b": ("qwen3-8b", None, Plan.parse("26-34", "26-34"), 64),
    "bench-30b-a3b": ("qwen3-30b-a3b", 24, Plan.parse("17-22", "17-22"), 32),
}
REPEATS = {"bench-30b-a3b": 3}  # transformers runs MoE experts one by one: its decode steps are slow


def env() -> dict:
    import transformers

    props = torch.cuda.get_device_properties(0) if DEVICE == "cuda" else None
    return {
        "gpu": props.name if props else "none",
        "memory_gib": round(props.total_memory / 2**30, 1) if props else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }


def bench(name: str) -> dict:
    shape, layers, plan, new_tokens = BENCHES[name]
    settings = BenchSettings(512, new_tokens, (1, 8), REPEATS.get(name, 5), warmup=1)
    if SMOKE:
        layers, plan, settings = 2, Plan(attn=(1,), mlp=(1,)), BenchSettings(16, 2, (1,), 1, 0)
    dtype = "bfloat16" if DEVICE == "cuda" else "float32"
    report = run_bench(
        shape=shape, plan=plan, settings=settings, dtype=dtype, device=DEVICE, progress=False, layers=layers
    )
    return report.to_dict()


def _random_checkpoint(path: Path) -> Path:
    """A random bf16 checkpoint of Qwen3-0.6B's shape with the embedded tokenizer (its 4,096 ids are a
    subset of the 151,936-entry vocabulary)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from qprune.cost import shape_named
    from qprune.shipped import EMBEDDED_MODEL

    shape = shape_named("qwen3-0.6b")
    shape = shape.with_layers(2) if SMOKE else shape
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(Qwen3Config(**shape.config_fields())).to(torch.bfloat16)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(EMBEDDED_MODEL / name, path / name)
    return path


def scan_search() -> dict:
    from qprune.measure.data import DataSpec
    from qprune.measure.scan import run_scan
    from qprune.measure.search import Target
    from qprune.ops.auto import auto_prune

    spec = DataSpec(samples=4, seq_len=64) if SMOKE else DataSpec(samples=16, seq_len=512)
    blocks = 1 if SMOKE else 4
    with tempfile.TemporaryDirectory() as tmp:
        base = _random_checkpoint(Path(tmp) / "base")
        start = time.perf_counter()
        run_scan(str(base), spec, dtype="auto")  # progress on stderr: the log shows where time goes
        scan_s = time.perf_counter() - start
        start = time.perf_counter()
        target = Target(blocks=blocks)
        _, result = auto_prune(str(base), Path(tmp) / "auto", spec, target, dtype="auto")
        search_s = time.perf_counter() - start
    return {
        "scan_s": scan_s,
        "auto_prune_s": search_s,
        "blocks": blocks,
        "data": spec.describe(),
        "search": result.timings,
    }


def heal() -> dict:
    import qprune
    from qprune.healing.distill import HealSettings, heal

    with tempfile.TemporaryDirectory() as tmp:
        base = _random_checkpoint(Path(tmp) / "base")
        qprune.prune(
            str(base), Path(tmp) / "pruned", Plan(attn=(1,), mlp=(1,)) if SMOKE else Plan.parse("20-26", "20-26")
        )
        settings = HealSettings(tokens=262_144, seq_len=512, batch_size=8, eval_tokens=20_000)
        settings = HealSettings(tokens=512, seq_len=64, batch_size=2, eval_tokens=200) if SMOKE else settings
        result = heal(str(Path(tmp) / "pruned"), Path(tmp) / "healed", settings, base=str(base), progress=False)
    report = result.report
    return {key: report[key] for key in ("tokens_trained", "train_seconds", "tokens_per_second") if key in report} | {
        "summary": result.summary()
    }


STAGES = {"env": env, "scan-search": scan_search, "heal": heal} | {name: (lambda n=name: bench(n)) for name in BENCHES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    parser.add_argument("--smoke", action="store_true", help="2-layer models and short runs, to try a stage")
    args = parser.parse_args()
    global SMOKE
    SMOKE = args.smoke
    start = time.perf_counter()
    figures = STAGES[args.stage]()
    line = {"stage": args.stage, "seconds": round(time.perf_counter() - start, 1), "figures": figures}
    with args.out.open("a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    print(json.dumps(line, default=str)[:2000])


if __name__ == "__main__":
    main()
