"""Which experts to remove: held-out perplexity of a small trained Qwen3-MoE after removing 25, 50 and
75% of its experts, chosen by REAP's saliency (qprune's default), by routing frequency, by the KL when
each is masked alone, and at random; each (but random) uniform (the same count in every layer) and
non-uniform (the same total, counts free per layer).

    python benchmarks/experts.py                  # trains the model first (about 5 minutes on 2 cores)
    python benchmarks/experts.py --steps 200      # a shorter training, for a quick look

The model (4 layers, 16 experts of width 128 per layer, 2 per token, the shipped model's 4096-token
tokenizer) is trained on ../shared/corpus/python-docs-train.txt (or --train FILE) and cached in --out.
Experts are scored on the shipped calibration text (32 x 256 tokens) and the cut is judged on the
shipped held-out text (every 256-token window), float32. A cut is evaluated as stock transformers with
the removed experts' router logits at -inf (`measure.verify.mask_experts`), which is exactly the stock
checkpoint `prune` writes (tests/test_experts.py). Random: the mean over 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

import qprune
from qprune.arch import family_of
from qprune.cost import Shape, block_parameters
from qprune.measure.data import DataSpec, load_token_batches
from qprune.measure.experts import expert_saliency
from qprune.measure.goal import Target
from qprune.measure.joint import expert_size, joint_plan
from qprune.measure.scan import scan_blocks
from qprune.measure.search import search
from qprune.measure.verify import mask_experts
from qprune.plan import Plan
from qprune.shipped import CALIBRATION_TEXT, EMBEDDED_MODEL, HELDOUT_TEXT

ROOT = Path(__file__).resolve().parents[1]
EXPERTS, PER_TOKEN, SEQ_LEN = 16, 2, 256


def train(out: Path, text: Path, steps: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL)
    ids = torch.tensor(tokenizer(text.read_text())["input_ids"], dtype=torch.long)
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=EXPERTS,
        num_experts_per_tok=PER_TOKEN, norm_topk_prob=True, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
        router_aux_loss_coef=0.01, output_router_logits=True,  # the load-balancing loss, as Qwen3-MoE trains
    )  # fmt: skip
    model = Qwen3MoeForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    rng = random.Random(seed)
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = torch.stack([ids[s : s + SEQ_LEN] for s in (rng.randrange(len(ids) - SEQ_LEN) for _ in range(16))])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.config.output_router_logits = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, default=ROOT.parent / "shared/corpus/python-docs-train.txt")
    parser.add_argument("--out", type=Path, default=Path("/tmp/qprune-bench-moe"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--only", choices=["joint"], help="only the table of blocks and experts under one budget")
    args = parser.parse_args()
    if not (args.out / "config.json").exists():
        print(f"training a {EXPERTS}-expert Qwen3-MoE on {args.train} for {args.steps} steps", flush=True)
        train(args.out, args.train, args.steps)
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    calibration = load_token_batches(DataSpec(str(CALIBRATION_TEXT), samples=32, seq_len=SEQ_LEN), tokenizer)
    heldout = load_token_batches(DataSpec(str(HELDOUT_TEXT), samples=None, seq_len=SEQ_LEN), tokenizer)

    def perplexity(removed: dict[int, tuple[int, ...]], blocks: Plan = Plan()) -> float:
        """Stock transformers with the removed experts masked and the removed blocks' output projections
        zeroed: exactly what the checkpoint `prune` writes computes (tests/test_experts*.py)."""
        model = Qwen3MoeForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
        family = family_of(model.config.to_dict())
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                block = family.tensor_block(name)
                if block is not None and block[0] in (blocks.attn if block[1] == "attn" else blocks.mlp):
                    if family.is_output_projection(name, block[1]):
                        parameter.zero_()
        mask_experts(model, removed)
        total, count = 0.0, 0
        with torch.no_grad():
            for rows in heldout.split(16):
                loss = model(input_ids=rows, labels=rows).loss
                total, count = total + loss.item() * rows.numel(), count + rows.numel()
        return math.exp(total / count)

    saliency = expert_saliency(qprune.load(args.out, dtype=torch.float32), calibration, kl=True)
    if args.only != "joint":
        experts_table(saliency, perplexity)
    joint_table(args.out, saliency, calibration, perplexity)


def experts_table(saliency, perplexity) -> None:
    layers = list(saliency.scores["reap"])
    took = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in saliency.timings.items())
    print(f"\ncalibration {saliency.tokens} tokens; held-out: every {SEQ_LEN}-token window")
    print(f"dense held-out perplexity: {perplexity({}):.3f}  (scoring took: {took})\n")
    metrics = ("reap", "frequency", "kl")
    print(
        "| experts removed | "
        + " | ".join(f"{m} {a}" for m in metrics for a in ("uniform", "non-uniform"))
        + " | random (mean of 3) | non-uniform counts per layer (kl) |"
    )
    print("|---" * 9 + "|")
    for ratio in (0.25, 0.5, 0.75):
        count = round(ratio * EXPERTS)
        cells = []
        for metric in metrics:
            for allocation in ("uniform", "nonuniform"):
                cells.append(f"{perplexity(saliency.plan(ratio, metric, allocation).removed_experts):.3f}")
        randoms = []
        for seed in range(3):
            rng = random.Random(seed)
            randoms.append(perplexity({layer: tuple(sorted(rng.sample(range(EXPERTS), count))) for layer in layers}))
        uneven = saliency.plan(ratio, "kl", "nonuniform").removed_experts
        counts = "/".join(str(len(uneven.get(layer, ()))) for layer in layers)
        random_mean = sum(randoms) / 3
        print(f"| {count} of {EXPERTS} per layer ({ratio:.0%}) | {' | '.join(cells)} | {random_mean:.3f} | {counts} |")


def joint_table(path: Path, saliency, calibration: torch.Tensor, perplexity) -> None:
    """At the decoder-parameter share a uniform REAP cut removes: experts only, blocks only (qprune's
    greedy KL search) and the joint ranking (blocks and experts by KL per parameter)."""
    config = json.loads((path / "config.json").read_text())
    shape = Shape.from_config(config)
    decoder = sum(sum(block_parameters(shape, i).values()) for i in range(shape.layers))
    scan = scan_blocks(qprune.load(path, dtype=torch.float32), calibration)
    block_kl = {block: scores["kl"] for block, scores in scan.scores.items()}
    print("\n| decoder parameters removed | experts only (REAP, uniform) | blocks only (greedy search, KL) "
          "| joint (KL per parameter) | joint plan |")  # fmt: skip
    print("|---|---|---|---|---|")
    for ratio in (0.25, 0.5):
        experts = saliency.plan(ratio, "reap")
        share = sum(len(gone) for gone in experts.removed_experts.values()) * expert_size(shape) / decoder
        joint = joint_plan(config, block_kl, saliency.scores["kl"], share)
        model = qprune.load(path, dtype=torch.float32)
        blocks = search(model, calibration, Target(param_ratio=share), "greedy", "kl").plan
        described = f"blocks {Plan(joint.attn, joint.mlp)}; experts " + "/".join(
            str(len(joint.removed_experts.get(layer, ()))) for layer in saliency.scores["kl"]
        )
        print(
            f"| {share:.1%} | {perplexity(experts.removed_experts):.3f} | {perplexity({}, blocks):.3f} ({blocks}) "
            f"| {perplexity(joint.removed_experts, joint):.3f} | {described} |"
        )


if __name__ == "__main__":
    main()
