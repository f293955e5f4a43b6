"""Expert saliency of a Qwen3-MoE: how much each expert of each MoE layer matters on calibration data,
and the expert cut it suggests. It measures; `ops.auto.auto_prune` (given an `ExpertTarget`) writes the cut.

    saliency = expert_saliency(model, batch)          # one pass over the batch, hooks on the MoE blocks
    saliency.scores["reap"][layer][e]                  # lower = safer to remove
    plan = saliency.plan(ratio=0.25, metric="reap")    # Plan(experts=...): the same count in every layer
    plan = saliency.plan(0.25, "reap", "nonuniform")   # the same total, counts free per layer

Two measures per expert, from one forward pass (each MoE block's routing is recomputed from its input
exactly as the stock router computes it: softmax in float32 over the experts, top-k, renormalised when
`norm_topk_prob`):
- `frequency`: the share of the tokens routed to it (of all top-k slots);
- `reap`: REAP's saliency (Cerebras, "REAP the Experts", 2025): the mean over the tokens routed to it
  of its (normalised) gate weight times the L2 norm of its output. An expert never routed scores 0.

And, with `kl=True`, a third that costs a replay per expert (`expert_kl`):
- `kl`: the mean KL divergence of the model's next-token distribution from the dense model's when that
  expert alone is masked (its router logit at -inf, so its tokens go to the next expert), replayed from
  its layer's MLP block on the recorded residual stream (`measure.ablation.BlockRunner.replay`).

A non-uniform cut (`allocation="nonuniform"`) removes the same total but lets the counts differ per
layer: experts are ranked across layers by their score as a share of their layer's total (KL as it is:
it is the same quantity in every layer), never leaving a layer fewer than the experts a token runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from qprune.errors import QpruneError
from qprune.measure.engine import engine_of
from qprune.measure.goal import EXPERT_ALLOCATIONS
from qprune.plan import Plan

_TOKENS_AT_ONCE = 2048  # tokens per forward: the routing bookkeeping adds little beyond the forward


@dataclass
class ExpertSaliency:
    experts: int  # per MoE layer
    per_token: int  # experts each token runs
    scores: dict[str, dict[int, list[float]]]  # metric -> MoE layer -> one score per expert
    tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def plan(self, ratio: float, metric: str = "reap", allocation: str = "uniform") -> Plan:
        """Remove the `ratio` share of the experts with the lowest `metric`: of every MoE layer's
        (`uniform`: rounded to whole experts, at least one), or of all of them with counts free per
        layer (`nonuniform`). Never below the experts each token runs."""
        if metric not in self.scores:
            unmeasured = " (kl is measured only when asked: expert_saliency(kl=True))" if metric == "kl" else ""
            raise QpruneError(f"{{expert_metric}} {metric}: choose {' or '.join(self.scores)}{unmeasured}")
        if not 0 < ratio < 1:
            raise QpruneError(f"{{expert_ratio}} must be between 0 and 1 (the share of experts removed), not {ratio}")
        if allocation not in EXPERT_ALLOCATIONS:
            raise QpruneError(f"{{expert_allocation}} {allocation}: choose {' or '.join(EXPERT_ALLOCATIONS)}")
        layers = self.scores[metric]
        counts = {layer: len(values) for layer, values in layers.items()}
        if allocation == "uniform":
            take = {layer: max(1, round(ratio * n)) for layer, n in counts.items()}
        else:
            take = self._nonuniform_counts(metric, max(1, round(ratio * sum(counts.values()))))
        for layer, n in counts.items():
            if n - take[layer] < self.per_token:
                raise QpruneError(
                    f"{{expert_ratio}} {ratio} would keep {n - take[layer]} of {n} experts in layer {layer}, fewer "
                    f"than the {self.per_token} each token runs"
                )
        removed = {}
        for layer, values in layers.items():
            removed[layer] = tuple(sorted(sorted(range(counts[layer]), key=lambda e: (values[e], e))[: take[layer]]))
        return Plan(experts={layer: gone for layer, gone in removed.items() if gone})

    def _nonuniform_counts(self, metric: str, total: int) -> dict[int, int]:
        """How many experts each layer loses when the `total` lowest across layers go: scores as a share
        of their layer's (KL as it is), each layer keeping at least `per_token`."""
        ranked = []
        for layer, values in self.scores[metric].items():
            scale = 1.0 if metric == "kl" else (sum(values) or 1.0)
            ranked += [(value / scale, layer, e) for e, value in enumerate(values)]
        take = dict.fromkeys(self.scores[metric], 0)
        room = {layer: len(values) - self.per_token for layer, values in self.scores[metric].items()}
        for _, layer, _ in sorted(ranked):
            if sum(take.values()) == total:
                break
            if take[layer] < room[layer]:
                take[layer] += 1
        return take

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
            low = sorted(range(len(reap)), key=lambda e: reap[e])[:3]
            rare = sorted(range(len(reap)), key=lambda e: frequency[e])[:3]
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


def expert_saliency(model, batch: torch.Tensor, progress=None, kl: bool = False) -> ExpertSaliency:
    """Frequency and REAP saliency of every expert of every MoE layer the model runs, on `batch`
    ([samples, seq_len] token ids), from one forward pass: in memory, or layer by layer for a model
    measured within `--max-memory` (the hooks fire while each layer's weights are resident). With `kl`,
    also each expert's `expert_kl` (in memory only)."""
    import time

    engine = engine_of(model)
    blocks = moe_blocks(engine.skeleton)
    if not blocks:
        raise QpruneError("the model has no MoE layer with experts to score (a dense Qwen3, or every MoE block pruned)")
    if kl and not engine.whole:
        raise QpruneError("{expert_metric} kl replays the model per expert in memory: drop {max_memory}, or use reap")
    config = engine.skeleton.config
    per_token = config.num_experts_per_tok
    norm_topk = getattr(config, "norm_topk_prob", False)
    counts = {i: block.gate.weight.shape[0] for i, block in blocks.items()}  # a cut may leave them unequal
    routed = {i: torch.zeros(counts[i], dtype=torch.float64) for i in blocks}
    reap = {i: torch.zeros(counts[i], dtype=torch.float64) for i in blocks}

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
    timings = {"saliency": time.perf_counter() - start}
    if kl:
        scores["kl"] = expert_kl(model, batch, progress)
        timings["kl"] = time.perf_counter() - start - timings["saliency"]
    return ExpertSaliency(max(counts.values()), per_token, scores, tokens, timings)


def expert_kl(model, batch: torch.Tensor, progress=None) -> dict[int, list[float]]:
    """{MoE layer: per expert, the mean KL(dense || model) per predicted token with that expert alone
    masked}. One forward records the residual stream; each expert then costs a replay from its layer's
    MLP block (a model loaded by qprune, in memory)."""
    from qprune.measure.ablation import BlockRunner, TokenStats, reference_logprobs, token_stats
    from qprune.measure.verify import mask_experts

    blocks = moe_blocks(model)
    stats = {layer: [TokenStats() for _ in range(block.gate.weight.shape[0])] for layer, block in blocks.items()}
    with BlockRunner(model, batch, kl=True) as runner, torch.inference_mode():
        work = [(path, layer) for path in runner.paths for layer in blocks]
        for path, layer in progress(work, "expert KL (micro-batches x MoE layers)") if progress else work:
            reference = reference_logprobs(model, path.reference)
            for e, total in enumerate(stats[layer]):
                unmask = mask_experts(model, {layer: (e,)})
                try:
                    total += token_stats(model, runner.replay(path, layer, "mlp"), path.input_ids, reference)
                finally:
                    unmask()
    return {layer: [s.mean_kl for s in totals] for layer, totals in stats.items()}


_PANELS = (("frequency", "routing frequency"), ("reap", "REAP saliency"), ("kl", "KL when masked alone"))


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
    panels = [(m, label) for m, label in _PANELS if m in saliency.scores]
    size = (2 + 0.25 * saliency.experts * len(panels), 1.2 + 0.25 * len(layers))
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        grid = []
        for layer in layers:
            values = saliency.scores[metric][layer]
            order = sorted(range(len(values)), key=lambda e: values[e])
            padding = [float("nan")] * (saliency.experts - len(values))  # a layer with fewer experts (uneven cut)
            grid.append([order.index(e) for e in range(len(values))] + padding)
        ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
        ax.set(title=f"{label} (rank in its layer; dark = first to go)", xlabel="expert", ylabel="MoE layer")
        ax.set_yticks(range(len(layers)), [str(i) for i in layers])
    fig.suptitle(f"{title}: experts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
