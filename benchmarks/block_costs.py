"""Where the time goes on this machine: a Qwen3-0.6B-shaped random model with every MLP block pruned
(attention alone), every attention block pruned (MLP alone), both, and neither, measured as
`qprune bench` does, with the throughput each achieves in the roofline's units (prefill GFLOP/s,
decode GB/s). Explains measured speedups above the ideal: blocks that reach fewer GFLOP/s or GB/s than
the model's average save more time than their FLOPs or bytes when pruned.

    python benchmarks/block_costs.py          # about 3 minutes on a 2-core CPU
"""

from __future__ import annotations

import statistics
import time

import torch

from qprune.cost import QWEN3_SHAPES, decode_bytes_per_step, prefill_flops_per_token
from qprune.measure.bench import _Runner, random_pair
from qprune.plan import Plan

SHAPE = QWEN3_SHAPES["qwen3-0.6b"]
LAYERS = tuple(range(SHAPE.layers))
PLANS = {
    "dense": Plan(),
    "attention alone": Plan(mlp=LAYERS),
    "MLP alone": Plan(attn=LAYERS),
    "neither": Plan(LAYERS, LAYERS),
}
PROMPT, STEPS, REPEATS = 512, 16, 4


def main() -> None:
    dense, _ = random_pair(SHAPE, Plan(attn=(0,)), torch.bfloat16, "cpu")
    runners = {
        name: _Runner(random_pair(SHAPE, plan, torch.bfloat16, "cpu")[1] if plan.num_blocks else dense)
        for name, plan in PLANS.items()
    }
    for batch in (1, 8):
        prompt = torch.randint(SHAPE.vocab, (batch, PROMPT))
        prefill = {name: [] for name in PLANS}
        decode = {name: [] for name in PLANS}
        with torch.inference_mode():
            for _ in range(REPEATS + 1):  # the first round warms up
                for name, runner in runners.items():
                    start = time.perf_counter()
                    token, cache = runner.prefill(prompt)
                    prefill[name].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    runner.decode(token, cache, STEPS)
                    decode[name].append((time.perf_counter() - start) / STEPS)
        for name, plan in PLANS.items():
            p, d = statistics.median(prefill[name][1:]), statistics.median(decode[name][1:])
            flops = prefill_flops_per_token(SHAPE, plan, PROMPT) * PROMPT * batch
            read = decode_bytes_per_step(SHAPE, plan, batch, PROMPT, STEPS, 2)
            print(
                f"batch {batch}  {name:16} prefill {p:6.3f} s {flops / p / 1e9:7.1f} GFLOP/s   "
                f"decode {d * 1000:6.1f} ms/step {read / d / 1e9:5.1f} GB/s"
            )


if __name__ == "__main__":
    main()
