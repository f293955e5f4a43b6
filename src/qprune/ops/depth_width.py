"""One `--param-ratio` budget over depth and width of a dense Qwen3 (`prune --auto --param-ratio R
--width-allocation joint`): the search decides how much to take from blocks and how much from MLP
channels.

    result, report = depth_and_width(checkpoint, "out", spec, WidthTarget(param_ratio=0.25, width_allocation="joint"))

For each split of the budget (all of it, three quarters, half, a quarter, none of it for blocks),
qprune's greedy KL search removes blocks within that share, and whatever the budget has left goes to
width (Minitron's mean activation, measured once on the dense model; the same number in every layer
whose block remains, rounded down), so every candidate fills the budget: to MLP channels alone, and,
where the model has more than one KV group and the rest affords it, also to one KV group per layer
(with its query heads) and MLP channels for what is left. Each candidate is written to a
temporary checkpoint, loaded, and judged by the mean KL divergence of its next-token distribution from
the dense model's on the calibration data; the best is written as one plan (blocks and width: qprune's
format, or a stock Qwen3 when it took no block). Four searches and five candidates loaded beside the
dense model: several times the cost of a depth search, and memory for two models.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qprune.cost import Shape, block_parameters
from qprune.errors import QpruneError
from qprune.io.source import Checkpoint
from qprune.measure.goal import Constraints, Target, WidthTarget
from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE, PruneResult, prune
from qprune.plan import Plan

SPLITS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the share of the budget left to MLP channels (the rest: blocks)


@dataclass
class Candidate:
    width_share: float  # of the budget left to MLP channels at least (the blocks may leave them more)
    channels: int  # removed from every layer's MLP
    groups: int  # KV groups removed from every layer's attention (0 or 1)
    plan: Plan  # blocks and width, in the source's numbering
    kl: float  # mean KL from the dense model on the calibration data


@dataclass
class DepthWidthReport:
    budget: float
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return min(self.candidates, key=lambda c: (c.kl, -c.width_share))

    def text(self) -> str:
        lines = [f"depth and width within {self.budget:.0%} of the decoder's parameters (KL from the dense model):"]
        for c in self.candidates:
            mark = "  <- written" if c is self.best else ""
            blocks = Plan(c.plan.attn, c.plan.mlp)
            kv = f" and {c.groups} KV group" if c.groups else ""
            lines.append(f"  blocks {blocks}, then {c.channels} MLP channels{kv} per layer: KL {c.kl:.4f}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "candidates": [
                {
                    "width_share": c.width_share,
                    "channels": c.channels,
                    "kv_groups": c.groups,
                    "plan": c.plan.to_dict(),
                    "kl": c.kl,
                }
                for c in self.candidates
            ],
        }


def depth_and_width(
    checkpoint: Checkpoint,
    out: Path,
    model,
    batch,
    target: WidthTarget,
    constraints: Constraints = Constraints(),
    *,
    progress=None,
    force: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> tuple[PruneResult, DepthWidthReport]:
    """Search the split of `target.param_ratio` between blocks and MLP channels on `model` (the dense
    model, loaded) and `batch`, then write the best candidate to `out`."""
    from qprune.measure.search import search
    from qprune.measure.width import width_importance
    from qprune.runtime.load import load

    shape = Shape.from_config(checkpoint.config)
    sizes = {(i, kind): n for i in range(shape.layers) for kind, n in block_parameters(shape, i).items()}
    budget = target.param_ratio * sum(sizes.values())
    importance = width_importance(model, batch, progress)
    reference = _reference(model, batch)
    report = DepthWidthReport(target.param_ratio)
    with tempfile.TemporaryDirectory(prefix="qprune-depth-width-") as tmp:
        for share in SPLITS:
            blocks = Plan()
            if share < 1:
                try:
                    blocks = search(model, batch, Target(param_ratio=(1 - share) * target.param_ratio), "greedy", "kl",
                                    constraints).plan  # fmt: skip
                except QpruneError:
                    pass  # no block fits this share: all of it goes to width
            removed = sum(sizes[(i, "attn")] for i in blocks.attn) + sum(sizes[(i, "mlp")] for i in blocks.mlp)
            for groups in (0, 1) if shape.kv_heads > 1 else (0,):
                plan, channels = _fill(shape, importance, blocks, budget - removed, groups)
                if plan is None or plan.is_empty:
                    continue
                where = Path(tmp) / f"split-{share}-{groups}"
                prune(checkpoint, where, plan)
                candidate = load(where, dtype=model.dtype)
                kl = _kl(model, candidate, reference)
                del candidate
                report.candidates.append(Candidate(share, channels, groups, plan, kl))
                if progress:
                    kv = f" and {groups} KV group" if groups else ""
                    progress.note(
                        f"{1 - share:.0%} of the budget for blocks ({blocks}), {channels} channels{kv}: KL {kl:.4f}"
                    )
    if not report.candidates:
        raise QpruneError(f"{{param_ratio}} {target.param_ratio}: neither a block nor a channel fits the budget")
    result = prune(checkpoint, out, report.best.plan, force=force, max_shard_size=max_shard_size)
    return result, report


def _fill(shape: Shape, importance, blocks: Plan, left: float, groups: int) -> tuple[Plan | None, int]:
    """`blocks` and the width that spends what the budget has `left`: `groups` KV groups from every
    attention block that remains (None when they alone exceed it), then MLP channels from every MLP
    that remains (the same number, rounded down, at least one kept)."""
    attns, mlps = shape.layers - len(blocks.attn), shape.layers - len(blocks.mlp)
    rep = shape.heads // shape.kv_heads
    group_parameters = shape.hidden * shape.head_dim * (2 * rep + 2)  # q and o of its heads, k and v
    left -= groups * attns * group_parameters
    if left < 0 or (groups and not attns):
        return None, 0
    channels = min(int(left // (3 * shape.hidden * mlps)) if mlps else 0, shape.intermediate - 1)
    width = importance.plan(channels / shape.intermediate if channels else 0.0, groups / shape.kv_heads)
    ffn = {i: c for i, c in width.ffn if i not in set(blocks.mlp)}
    kv = {i: g for i, g in width.kv_heads if i not in set(blocks.attn)}
    return Plan(blocks.attn, blocks.mlp, ffn=ffn, kv_heads=kv), channels


def _reference(model, batch) -> list:
    """The dense model's final normed hidden states per micro-batch, for the KL."""
    import torch

    from qprune.measure.ablation import micro_batches

    device = model.get_input_embeddings().weight.device
    with torch.inference_mode():
        return [
            (ids, model.model(input_ids=ids.to(device), use_cache=False).last_hidden_state)
            for ids in micro_batches(batch, model.config.vocab_size)
        ]


def _kl(dense, model, reference: list) -> float:
    """Mean KL(dense || model) per predicted token over the calibration micro-batches."""
    import torch

    from qprune.measure.ablation import TokenStats, reference_logprobs, token_stats

    stats = TokenStats()
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode():
        for ids, dense_states in reference:
            states = model.model(input_ids=ids.to(device), use_cache=False).last_hidden_state
            stats += token_stats(model, states, ids, reference_logprobs(dense, dense_states))
    return stats.mean_kl
