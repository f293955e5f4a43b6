"""Expert saliency of a Qwen3-MoE: how much each expert of each MoE layer matters on calibration data,
and the uniform expert cut it suggests. It measures; `ops.auto.auto_prune` (given an `ExpertTarget`) writes the cut.

    saliency = expert_saliency(model, batch)          # one pass over the batch, hooks on the MoE blocks
    saliency.scores["reap"][layer][e]                  # lower = safer to remove
    plan = saliency.plan(ratio=0.25, metric="reap")    # Plan(experts=...): the same count in every layer

Two measures per expert, from one forward pass (each MoE block's routing is recomputed from its input
exactly as the stock router computes it: softmax in float32 over the experts, top-k, renormalised when
`norm_topk_prob`):
- `frequency`: the share of the tokens routed to it (of all top-k slots);
- `reap`: REAP's saliency (Cerebras, "REAP the Experts", 2025): the mean over the tokens routed to it
  of its (normalised) gate weight times the L2 norm of its output. An expert never routed scores 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from qprune.errors import QpruneError
from qprune.measure.engine import engine_of
from qprune.measure.goal import EXPERT_METRICS
from qprune.plan import Plan

_TOKENS_AT_ONCE = 2048  # tokens per forward: the routing bookkeeping adds little beyond the forward


@dataclass
class ExpertSaliency:
    experts: int  # per MoE layer
    per_token: int  # experts each token runs
    scores: dict[str, dict[int, list[float]]]  # metric -> MoE layer -> one score per expert
    tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def plan(self, ratio: float, metric: str = "reap") -> Plan:
        """Remove the `ratio` share of every MoE layer's experts with the lowest `metric` (rounded to
        whole experts, at least one, and never below the experts each token runs)."""
        if metric not in EXPERT_METRICS:
            raise QpruneError(f"{{expert_metric}} {metric}: choose {' or '.join(EXPERT_METRICS)}")
        if not 0 < ratio < 1:
            raise QpruneError(f"{{expert_ratio}} must be between 0 and 1 (the share of experts removed), not {ratio}")
        count = max(1, round(ratio * self.experts))
        if self.experts - count < self.per_token:
            raise QpruneError(
                f"{{expert_ratio}} {ratio} would keep {self.experts - count} of {self.experts} experts, fewer than "
                f"the {self.per_token} each token runs"
            )
        removed = {}
        for layer, values in self.scores[metric].items():
            removed[layer] = tuple(sorted(sorted(range(self.experts), key=lambda e: (values[e], e))[:count]))
        return Plan(experts=removed)

    def to_dict(self) -> dict:
        return {
            "experts": self.experts,
            "experts_per_token": self.per_token,
            "tokens": self.tokens,
            "scores": {metric: {str(k): v for k, v in layers.items()} for metric, layers in self.scores.items()},
            "timings_s": {name: round(seconds, 3) for name, seconds in self.timings.items()},
        }

    def text(self) -> str:
        lines = [
            f"expert saliency on {self.tokens:,} tokens "
            f"({self.experts} experts per MoE layer, {self.per_token} per token)",
            f"{'layer':>5}  {'least salient by REAP (expert: score)':<44} {'least routed (expert: share)':<36}",
        ]
        for layer, reap in self.scores["reap"].items():
            frequency = self.scores["frequency"][layer]
            low = sorted(range(self.experts), key=lambda e: reap[e])[:3]
            rare = sorted(range(self.experts), key=lambda e: frequency[e])[:3]
            lines.append(
                f"{layer:>5}  {', '.join(f'{e}: {reap[e]:.3g}' for e in low):<44} "
                f"{', '.join(f'{e}: {frequency[e]:.1%}' for e in rare):<36}"
            )
        return "\n".join(line.rstrip() for line in lines)


def moe_blocks(model) -> dict[int, torch.nn.Module]:
    """The sparse MoE blocks the model runs, by layer (dense MLP layers and pruned blocks left out)."""
    pruned = set(getattr(model.config, "pruned_mlp_layers", None) or ())
    return {
        i: layer.mlp
        for i, layer in enumerate(model.model.layers)
        if i not in pruned and hasattr(getattr(layer, "mlp", None), "gate") and hasattr(layer.mlp, "experts")
    }


def _expert_weights(experts: torch.nn.Module, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert e's gate, up and down projections: transformers 5.x fuses them into 3-D parameters
    (`gate_up_proj` [E, 2I, H], gate then up; `down_proj` [E, H, I]); 4.57 keeps a Linear each."""
    if hasattr(experts, "gate_up_proj"):
        gate, up = experts.gate_up_proj[e].chunk(2, dim=0)
        return gate, up, experts.down_proj[e]
    expert = experts[e]
    return expert.gate_proj.weight, expert.up_proj.weight, expert.down_proj.weight


def _activation(block: torch.nn.Module):
    experts = block.experts
    return experts.act_fn if hasattr(experts, "act_fn") else experts[0].act_fn


def expert_saliency(model, batch: torch.Tensor, progress=None) -> ExpertSaliency:
    """Frequency and REAP saliency of every expert of every MoE layer the model runs, on `batch`
    ([samples, seq_len] token ids), from one forward pass: in memory, or layer by layer for a model
    measured within `--max-memory` (the hooks fire while each layer's weights are resident)."""
    import time

    engine = engine_of(model)
    blocks = moe_blocks(engine.skeleton)
    if not blocks:
        raise QpruneError("the model has no MoE layer with experts to score (a dense Qwen3, or every MoE block pruned)")
    config = engine.skeleton.config
    experts, per_token = config.num_experts, config.num_experts_per_tok
    norm_topk = getattr(config, "norm_topk_prob", False)
    routed = {i: torch.zeros(experts, dtype=torch.float64) for i in blocks}
    reap = {i: torch.zeros(experts, dtype=torch.float64) for i in blocks}

    def hook(layer: int):
        def record(block, args, output) -> None:
            hidden = args[0].reshape(-1, args[0].shape[-1])
            logits = F.linear(hidden, block.gate.weight)
            probs = F.softmax(logits, dtype=torch.float, dim=-1)
            weights, chosen = torch.topk(probs, per_token, dim=-1)
            if norm_topk:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            act = _activation(block)
            for e in chosen.unique().tolist():
                slot = chosen == e
                tokens = slot.any(dim=-1)
                gate, up, down = _expert_weights(block.experts, e)
                x = hidden[tokens]
                out = F.linear(act(F.linear(x, gate)) * F.linear(x, up), down)
                gate_weight = (weights * slot).sum(dim=-1)[tokens]
                routed[layer][e] += float(tokens.sum())
                reap[layer][e] += float((gate_weight * out.float().norm(dim=-1)).sum())

        return record

    start = time.perf_counter()
    handles = [block.register_forward_hook(hook(i)) for i, block in blocks.items()]
    rows = max(1, _TOKENS_AT_ONCE // batch.shape[1])
    try:
        with torch.no_grad():
            for _ in engine.final_states(list(batch.split(rows)), progress, "expert saliency"):
                pass  # the hooks record; the final states are not needed
    finally:
        for handle in handles:
            handle.remove()
    tokens = batch.numel()
    scores = {
        "reap": {i: (reap[i] / routed[i].clamp(min=1)).tolist() for i in blocks},
        "frequency": {i: (routed[i] / (tokens * per_token)).tolist() for i in blocks},
    }
    return ExpertSaliency(experts, per_token, scores, tokens, {"saliency": time.perf_counter() - start})


def write_expert_heatmap(saliency: ExpertSaliency, path: Path, title: str) -> bool:
    """Two panels, MoE layers down and experts across: routing frequency and REAP's saliency, each
    coloured by its rank within the layer (what a uniform cut compares). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    layers = list(saliency.scores["reap"])
    fig, axes = plt.subplots(1, 2, figsize=(2 + 0.25 * saliency.experts * 2, 1.2 + 0.25 * len(layers)), squeeze=False)
    for ax, (metric, label) in zip(
        axes[0], (("frequency", "routing frequency"), ("reap", "REAP saliency")), strict=True
    ):
        grid = []
        for layer in layers:
            values = saliency.scores[metric][layer]
            order = sorted(range(saliency.experts), key=lambda e: values[e])
            grid.append([order.index(e) for e in range(saliency.experts)])
        ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
        ax.set(title=f"{label} (rank in its layer; dark = first to go)", xlabel="expert", ylabel="MoE layer")
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    fig.suptitle(f"{title}: experts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
