"""One `--param-ratio` budget over depth and width of a dense Qwen3 (`prune --auto --param-ratio R
--width-allocation joint`): the search decides how much to take from blocks and how much from MLP
channels.

    result, report = depth_and_width(checkpoint, "out", spec, WidthTarget(param_ratio=0.25, width_allocation="joint"))

For each split of the budget (none, a quarter, half, three quarters, all of it as MLP channels), the
channels go by Minitron's mean activation, measured once on the dense model, the same number in every
layer; the narrowed model is written to a temporary stock checkpoint and qprune's greedy KL search
removes blocks from it for the rest of the budget. Each candidate is judged by the mean KL divergence of
its next-token distribution from the dense model's on the calibration data, and the best is written as
one plan (blocks and width: qprune's format, or a stock Qwen3 when it took no block). Five searches:
about five times the cost of a depth search.
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

SPLITS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the share of the budget taken as MLP channels


@dataclass
class Candidate:
    width_share: float  # of the budget
    channels: int  # removed from every layer's MLP
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
            lines.append(f"  {c.width_share:>4.0%} as width ({c.channels} channels per layer), blocks {blocks}: "
                         f"KL {c.kl:.4f}{mark}")  # fmt: skip
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "budget": self.budget,
            "candidates": [
                {"width_share": c.width_share, "channels": c.channels, "plan": c.plan.to_dict(), "kl": c.kl}
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
    dtype: str = "auto",
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
    total = sum(sum(block_parameters(shape, i).values()) for i in range(shape.layers))
    per_channel = 3 * shape.hidden * shape.layers  # one channel of every layer's MLP
    budget = target.param_ratio * total
    importance = width_importance(model, batch, progress)
    reference = _reference(model, batch)
    report = DepthWidthReport(target.param_ratio)
    with tempfile.TemporaryDirectory(prefix="qprune-depth-width-") as tmp:
        for share in SPLITS:
            channels = min(round(share * budget / per_channel), shape.intermediate - 1)
            width = importance.plan(channels / shape.intermediate) if channels else Plan()
            candidate = model
            if channels:
                narrow = Path(tmp) / f"narrow-{channels}"
                if not narrow.exists():
                    prune(checkpoint, narrow, width)
                candidate = load(narrow, dtype=model.dtype)
            left = budget - channels * per_channel
            narrow_total = total - channels * per_channel
            blocks = Plan()
            if left / narrow_total > 1e-3:
                try:
                    found = search(
                        candidate, batch, Target(param_ratio=left / narrow_total), "greedy", "kl", constraints
                    )
                    blocks = found.plan
                except QpruneError:
                    blocks = Plan()  # no block fits what is left
            kl = _kl(candidate, batch, reference, blocks)
            mlp = set(blocks.mlp)
            plan = Plan(blocks.attn, blocks.mlp, ffn={i: c for i, c in width.ffn if i not in mlp})
            report.candidates.append(Candidate(share, channels, plan, kl))
            if progress:
                progress.note(f"{share:.0%} of the budget as width: {channels} channels, blocks {blocks}: KL {kl:.4f}")
            del candidate
    best = report.best
    if best.plan.is_empty:
        raise QpruneError(f"{{param_ratio}} {target.param_ratio}: neither a block nor a channel fits the budget")
    return prune(checkpoint, out, best.plan, force=force, max_shard_size=max_shard_size), report


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


def _kl(model, batch, reference: list, blocks: Plan) -> float:
    """Mean KL(dense || model with `blocks` skipped) per predicted token."""
    import torch

    from qprune.measure.ablation import TokenStats, reference_logprobs, skipping, token_stats

    stats = TokenStats()
    skipped = {(i, "attn") for i in blocks.attn} | {(i, "mlp") for i in blocks.mlp}
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode(), skipping(model, skipped):
        for ids, dense_states in reference:
            states = model.model(input_ids=ids.to(device), use_cache=False).last_hidden_state
            stats += token_stats(model, states, ids, reference_logprobs(model, dense_states))
    return stats.mean_kl
