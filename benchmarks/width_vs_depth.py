"""Width or depth: on the shipped model, at equal shares of the decoder's parameters, held-out perplexity
before and after a short heal, and measured prefill / decode speed, of removing blocks (qprune's greedy
KL search), MLP channels (Minitron's mean activation; the same count in every layer, or counts free per
layer), MLP channels plus one KV group per layer, and the joint search (which splits the budget between
blocks and width: `--width-allocation joint`); then the measured speed of uniform width cuts against
depth cuts of the same size at Qwen3-0.6B's and Qwen3-8B's shapes (random weights).

    python benchmarks/width_vs_depth.py                  # about 35 minutes on a 2-core CPU
    python benchmarks/width_vs_depth.py --heal-tokens 0 --skip-shapes   # unhealed, shipped model only

Quality: calibration on the shipped calibration text (32 x 256 tokens), perplexity on the shipped
held-out text (every 256-token window), float32. Healing: `qprune heal`'s defaults (KD from the dense
model on all kept weights) for --heal-tokens tokens of the shipped calibration text. Speed: `qprune bench`'s measurement
(`measure.bench.measure`: dense and cut alternate, median of --repeats) at batch 1, float32 on the
shipped model, bfloat16 where the CPU computes it natively at the shapes. Every figure is measured in
this run, side by side with its dense model; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

import qprune
from qprune.cost import Shape, block_parameters, shape_named
from qprune.healing.distill import HealSettings, heal
from qprune.measure.bench import BenchSettings, measure, random_pair
from qprune.measure.data import DataSpec, load_token_batches
from qprune.measure.goal import Target, WidthTarget
from qprune.ops.auto import auto_prune
from qprune.plan import Plan
from qprune.runtime.load import load_tokenizer
from qprune.runtime.precision import auto_dtype
from qprune.shipped import EMBEDDED_MODEL, HELDOUT_TEXT

SEQ_LEN = 256
BUDGETS = (0.10, 0.25, 0.40)


def decoder_parameters(shape: Shape) -> int:
    return sum(sum(block_parameters(shape, i).values()) for i in range(shape.layers))


def group_parameters(shape: Shape) -> int:
    """What one KV group holds in one layer: its query heads' q and o rows/columns, its k and v rows."""
    rep = shape.heads // shape.kv_heads
    return shape.hidden * shape.head_dim * (2 * rep + 2)


def width_targets(shape: Shape, budget: float, nonuniform: bool = False) -> dict[str, WidthTarget]:
    """MLP channels only (and, with `nonuniform`, the same number with counts free per layer), and one
    KV group per layer plus MLP channels, each removing `budget` of the decoder's parameters (to the
    nearest channel)."""
    total, per_channel = decoder_parameters(shape), 3 * shape.hidden * shape.layers
    ffn_ratio = round(budget * total / per_channel) / shape.intermediate
    targets = {"width: MLP channels": WidthTarget(ffn_ratio=ffn_ratio)}
    if nonuniform:
        targets["width: MLP channels, free per layer"] = WidthTarget(ffn_ratio=ffn_ratio, width_allocation="nonuniform")
    kv_share = group_parameters(shape) * shape.layers / total
    if kv_share < budget and shape.kv_heads > 1:
        channels = round((budget - kv_share) * total / per_channel)
        targets["width: 1 KV group + MLP channels"] = WidthTarget(
            ffn_ratio=channels / shape.intermediate, kv_head_ratio=1 / shape.kv_heads
        )
    return targets


def held_out_perplexity(model, rows: torch.Tensor) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in rows.split(16):
            loss = model(input_ids=batch, labels=batch).loss
            total, count = total + loss.item() * batch.numel(), count + batch.numel()
    return math.exp(total / count)


def speed(dense, cut, settings: BenchSettings) -> tuple[float, float]:
    row = measure(dense, cut, settings, "cpu", progress=False)[0]
    return row["prefill_speedup"], row["decode_speedup"]


def shipped_table(settings: BenchSettings, work: Path, heal_tokens: int) -> None:
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    heldout = load_token_batches(DataSpec(str(HELDOUT_TEXT), samples=None, seq_len=SEQ_LEN), tokenizer)
    spec = DataSpec(samples=32, seq_len=SEQ_LEN)
    dense = qprune.load(EMBEDDED_MODEL, dtype=torch.float32).eval()
    shape = Shape.from_config(dense.config)
    base = held_out_perplexity(dense, heldout)
    print(f"\nshipped model: dense held-out perplexity {base:.3f} ({heldout.numel():,} tokens)\n")
    healed = f"healed ({heal_tokens:,} tokens)"
    print(
        f"| decoder parameters removed | cut | what went | perplexity | change | {healed} | change | prefill | decode |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for budget in BUDGETS:
        cuts: dict[str, Target | WidthTarget] = {"depth: blocks": Target(param_ratio=budget)}
        cuts |= width_targets(shape, budget, nonuniform=True)
        cuts["joint: the search splits the budget"] = WidthTarget(param_ratio=budget, width_allocation="joint")
        for name, target in cuts.items():
            out = work / f"cut-{budget}-{len(name)}"
            kwargs = {"metric": "kl"} if isinstance(target, Target) else {}
            result, _ = auto_prune(
                EMBEDDED_MODEL, out, spec, target, dtype="float32", progress=False, force=True, **kwargs
            )
            cut = qprune.load(out, dtype=torch.float32).eval()
            removed = 1 - (result.params_after - _embeddings(shape)) / (result.params_before - _embeddings(shape))
            ppl = held_out_perplexity(cut, heldout)
            prefill, decode = speed(dense, cut, settings)
            after = "-"
            if heal_tokens:
                heal(out, work / "healed", HealSettings(tokens=heal_tokens), base=EMBEDDED_MODEL, force=True,
                     progress=False)  # fmt: skip
                after = held_out_perplexity(qprune.load(work / "healed", dtype=torch.float32).eval(), heldout)
            what = str(Plan(result.plan.attn, result.plan.mlp)) if not isinstance(target, WidthTarget) else ""
            if isinstance(target, WidthTarget):
                what = _width_words(cut.config, shape) + (
                    f"; blocks {Plan(result.plan.attn, result.plan.mlp)}" if result.plan.num_blocks else ""
                )
            row = [
                f"{budget:.0%}",
                name,
                what,
                f"{ppl:.3f}",
                f"{ppl / base - 1:+.1%}",
                f"{after:.3f}" if heal_tokens else "-",
                f"{after / base - 1:+.1%}" if heal_tokens else "-",
                f"{prefill:.2f}x",
                f"{decode:.2f}x",
            ]
            note = "" if abs(removed - budget) < 0.02 else f" (removed {removed:.1%})"
            print("| " + " | ".join(row) + " |" + note)


def _embeddings(shape: Shape) -> int:
    return shape.vocab * shape.hidden * (1 if shape.tied else 2) + shape.hidden


def _width_words(config, shape: Shape) -> str:
    inner = getattr(config, "layer_intermediate_size", None)
    kv = getattr(config, "layer_num_key_value_heads", None)
    inner = f"{min(inner)}..{max(inner)}" if inner else config.intermediate_size
    kv = f"{min(kv)}..{max(kv)}" if kv else config.num_key_value_heads
    return f"intermediate {shape.intermediate} -> {inner}, KV heads {shape.kv_heads} -> {kv}"


def shapes_table(settings: BenchSettings, layers: dict[str, int]) -> None:
    """Random-weight models of released shapes: a uniform width cut and a depth cut of about the same
    size (whole MLP blocks of the last layers, then attention blocks), each against its dense twin."""
    dtype, _ = auto_dtype(on_cuda=False)
    print(f"\nshapes ({dtype}, batch 1, prompt {settings.prompt_len}, {settings.new_tokens} new tokens)\n")
    print("| shape | cut | decoder parameters removed | prefill | decode |")
    print("|---|---|---|---|---|")
    for name, depth in layers.items():
        shape = shape_named(name).with_layers(depth)
        dense, _ = random_pair(shape, Plan(), dtype, "cpu")
        for budget in (0.25,):
            target = next(iter(width_targets(shape, budget).values()))
            channels = round(target.ffn_ratio * shape.intermediate)
            narrow = Shape(**{**shape.to_dict(), "intermediate": shape.intermediate - channels})
            width_model, _ = random_pair(narrow, Plan(), dtype, "cpu", seed=1)
            removed = 1 - decoder_parameters(narrow) / decoder_parameters(shape)
            prefill, decode = speed(dense, width_model, settings)
            cut = f"width: {channels} of {shape.intermediate} MLP channels"
            print(f"| {name} ({depth} layers) | {cut} | {removed:.1%} | {prefill:.2f}x | {decode:.2f}x |")
            del width_model
            mlp = block_parameters(shape, 0)["mlp"]
            count = max(1, round(budget * decoder_parameters(shape) / mlp))
            plan = Plan(mlp=tuple(range(shape.layers - count, shape.layers)))
            _, depth_model = random_pair(shape, plan, dtype, "cpu")
            removed = count * mlp / decoder_parameters(shape)
            prefill, decode = speed(dense, depth_model, settings)
            cut = f"depth: {count} MLP blocks"
            print(f"| {name} ({depth} layers) | {cut} | {removed:.1%} | {prefill:.2f}x | {decode:.2f}x |")
            del depth_model
        del dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-shapes", action="store_true")
    parser.add_argument("--heal-tokens", type=int, default=100_000, help="Heal every cut this long (0: do not heal).")
    args = parser.parse_args()
    small = BenchSettings(prompt_len=256, new_tokens=32, batches=(1,), repeats=args.repeats, warmup=1)
    with tempfile.TemporaryDirectory(prefix="qprune-width-") as work:
        shipped_table(small, Path(work), args.heal_tokens)
    if not args.skip_shapes:
        shapes_table(small, {"qwen3-0.6b": 28, "qwen3-8b": 4})


if __name__ == "__main__":
    main()
