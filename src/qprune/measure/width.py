"""Width importance of a dense Qwen3: how much each MLP channel and each KV group (with the query heads
that share it) of each layer matters on calibration data, and the width cut it suggests (uniform, or
with counts free per layer). It measures; `ops.auto.auto_prune` (given a `WidthTarget`) writes the cut.

    importance = width_importance(model, batch)                   # one pass, hooks on down_proj / o_proj
    importance.scores["ffn"]["activation"][layer][j]               # lower = safer to remove
    plan = importance.plan(ffn_ratio=0.25, kv_head_ratio=0.0)      # Plan(ffn=..., kv_heads=...)
    plan = importance.plan(ffn_ratio=0.25, allocation="nonuniform")  # the same total, counts free per layer

Measures, from one forward pass (hooks on the input of `mlp.down_proj` and of `self_attn.o_proj`):
- `activation` (NVIDIA Minitron's criterion, as Model-Optimizer ranks neurons and heads): an MLP
  channel's mean |act(gate x) * up x| over tokens; a KV group's mean L2 norm of its query heads'
  attention output (the `o_proj` input it owns);
- `output`: the same weighted by what the unit writes to the residual stream: a channel's mean
  |activation| x the L2 norm of its `down_proj` column; a group's mean L2 norm of its heads' share of
  the `o_proj` output.
And for KV groups, with `kl=True`, a replay per group (`kl`): the mean KL divergence of the next-token
distribution from the dense model's with that group alone removed (its `o_proj` columns zeroed). MLP
channels are too many to replay one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qprune.errors import QpruneError
from qprune.measure.engine import engine_of
from qprune.measure.goal import WIDTH_ALLOCATIONS, width_count
from qprune.plan import Plan

_TOKENS_AT_ONCE = 2048


@dataclass
class WidthImportance:
    channels: int  # MLP channels per layer (the largest, where a cut left layers unequal)
    groups: int  # KV groups per layer (likewise)
    scores: dict[str, dict[str, dict[int, list[float]]]]  # "ffn" | "kv_heads" -> metric -> layer -> scores
    tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def plan(
        self,
        ffn_ratio: float = 0.0,
        kv_head_ratio: float = 0.0,
        metric: str = "activation",
        allocation: str = "uniform",
    ) -> Plan:
        """Remove the `ffn_ratio` share of the MLP channels and the `kv_head_ratio` share of the KV groups,
        those lowest by `metric`: of every layer's (`uniform`, rounded to whole units, at least one
        removed and one kept), or the same total across layers with counts free per layer
        (`nonuniform`: each score as a share of its layer's total, KL as it is; one unit kept per layer)."""
        if allocation not in WIDTH_ALLOCATIONS[:2]:
            raise QpruneError(f"{{width_allocation}} {allocation}: choose uniform or nonuniform")
        lists = {}
        for unit, ratio in (("ffn", ffn_ratio), ("kv_heads", kv_head_ratio)):
            if not ratio:
                continue
            by_metric = self.scores[unit]
            if metric not in by_metric:
                raise QpruneError(f"{{width_metric}} {metric}: choose {' or '.join(by_metric)} for {unit}")
            layers = by_metric[metric]
            take = {layer: width_count(ratio, len(values), unit) for layer, values in layers.items()}
            if allocation == "nonuniform":
                take = _free_counts(layers, sum(take.values()), scaled=metric != "kl")
            lists[unit] = {
                layer: tuple(sorted(sorted(range(len(values)), key=lambda j: (values[j], j))[: take[layer]]))
                for layer, values in layers.items()
                if take[layer]
            }
        return Plan(ffn=lists.get("ffn", {}), kv_heads=lists.get("kv_heads", {}))

    def text(self) -> str:
        lines = [
            f"width importance on {self.tokens:,} tokens "
            f"({self.channels} MLP channels, {self.groups} KV groups per layer)",
            f"{'layer':>5}  {'MLP channels: mean activation, lowest / median / highest':<58} KV groups (activation)",
        ]
        ffn, kv = self.scores["ffn"]["activation"], self.scores["kv_heads"]["activation"]
        for layer in sorted(set(ffn) | set(kv)):
            values = sorted(ffn.get(layer, []))
            spread = f"{values[0]:.3g} / {values[len(values) // 2]:.3g} / {values[-1]:.3g}" if values else "pruned"
            groups = ", ".join(f"{v:.3g}" for v in kv[layer]) if layer in kv else "pruned"
            lines.append(f"{layer:>5}  {spread:<58} {groups}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "mlp_channels": self.channels,
            "kv_groups": self.groups,
            "tokens": self.tokens,
            "scores": {
                unit: {metric: {str(k): v for k, v in layers.items()} for metric, layers in metrics.items()}
                for unit, metrics in self.scores.items()
            },
            "timings_s": {name: round(seconds, 3) for name, seconds in self.timings.items()},
        }


def _free_counts(layers: dict[int, list[float]], total: int, scaled: bool) -> dict[int, int]:
    """How many units each layer loses when the `total` lowest across layers go (scores as a share of
    their layer's total where `scaled`), each layer keeping at least one."""
    ranked = []
    for layer, values in layers.items():
        scale = (sum(values) or 1.0) if scaled else 1.0
        ranked += [(value / scale, layer, j) for j, value in enumerate(values)]
    take = dict.fromkeys(layers, 0)
    for _, layer, _ in sorted(ranked):
        if sum(take.values()) == total:
            break
        if take[layer] < len(layers[layer]) - 1:
            take[layer] += 1
    return take


def _geometry(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    groups = config.num_key_value_heads or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return groups, heads // groups, head_dim


def width_importance(model, batch: torch.Tensor, progress=None, kl: bool = False) -> WidthImportance:
    """`activation` and `output` importance of every MLP channel and KV group of every block the model
    runs, on `batch` ([samples, seq_len] token ids), from one forward pass: in memory, or layer by
    layer for a model measured within `--max-memory`. With `kl`, also each KV group's KL (in memory)."""
    import time

    engine = engine_of(model)
    skeleton = engine.skeleton
    config = skeleton.config
    if getattr(config, "num_experts", 0):
        raise QpruneError("width importance is a dense Qwen3's: this is a Qwen3-MoE (score its experts instead)")
    if kl and not engine.whole:
        raise QpruneError("{width_metric} kl replays the model per KV group in memory: drop {max_memory}")
    groups, rep, head_dim = _geometry(config)  # the largest; a layer of a cut model may have fewer
    layers = list(enumerate(skeleton.model.layers))
    ffn = {
        i: [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for _ in range(2)]
        for i, layer in layers
        if not layer.prune_mlp
    }
    attn = {
        i: [torch.zeros(layer.self_attn.o_proj.in_features // (rep * head_dim), dtype=torch.float64) for _ in range(2)]
        for i, layer in layers
        if not layer.prune_self_attn
    }

    def down_hook(i: int):
        def record(module, args) -> None:
            act = args[0].reshape(-1, args[0].shape[-1]).float().abs()
            mean_abs = act.sum(dim=0).double()
            ffn[i][0] += mean_abs
            ffn[i][1] += mean_abs * torch.linalg.vector_norm(module.weight.float(), dim=0).double().cpu()

        return record

    def o_hook(i: int):
        def record(module, args) -> None:
            x = args[0].reshape(-1, len(attn[i][0]), rep * head_dim).float()
            attn[i][0] += torch.linalg.vector_norm(x, dim=-1).sum(dim=0).double().cpu()
            weight = module.weight.float().reshape(module.weight.shape[0], len(attn[i][0]), rep * head_dim)
            out = torch.einsum("tgk,hgk->tgh", x, weight)  # each group's share of the o_proj output
            attn[i][1] += torch.linalg.vector_norm(out, dim=-1).sum(dim=0).double().cpu()

        return record

    start = time.perf_counter()
    handles = [layer.mlp.down_proj.register_forward_pre_hook(down_hook(i)) for i, layer in layers if i in ffn]
    handles += [layer.self_attn.o_proj.register_forward_pre_hook(o_hook(i)) for i, layer in layers if i in attn]
    rows = max(1, _TOKENS_AT_ONCE // batch.shape[1])
    try:
        with torch.no_grad():
            for _ in engine.final_states(list(batch.split(rows)), progress, "width importance"):
                pass  # the hooks record
    finally:
        for handle in handles:
            handle.remove()
    tokens = batch.numel()
    scores = {
        "ffn": {
            m: {i: (sums[k] / tokens).tolist() for i, sums in ffn.items()}
            for k, m in enumerate(("activation", "output"))
        },
        "kv_heads": {
            m: {i: (sums[k] / tokens).tolist() for i, sums in attn.items()}
            for k, m in enumerate(("activation", "output"))
        },
    }
    timings = {"importance": time.perf_counter() - start}
    if kl:
        scores["kv_heads"]["kl"] = kv_group_kl(model, batch, progress)
        timings["kl"] = time.perf_counter() - start - timings["importance"]
    return WidthImportance(config.intermediate_size, groups, scores, tokens, timings)


def kv_group_kl(model, batch: torch.Tensor, progress=None) -> dict[int, list[float]]:
    """{layer: per KV group, the mean KL(dense || model) per predicted token with that group alone
    removed (its query heads' `o_proj` columns zeroed)}, replayed from the layer's attention block."""
    from qprune.measure.ablation import BlockRunner, TokenStats, reference_logprobs, token_stats

    _, rep, head_dim = _geometry(model.config)
    layers = [i for i, layer in enumerate(model.model.layers) if not layer.prune_self_attn]
    groups = {i: model.model.layers[i].self_attn.o_proj.in_features // (rep * head_dim) for i in layers}
    stats = {i: [TokenStats() for _ in range(groups[i])] for i in layers}
    with BlockRunner(model, batch, kl=True) as runner, torch.inference_mode():
        work = [(path, i) for path in runner.paths for i in layers]
        for path, i in progress(work, "KV group KL (micro-batches x layers)") if progress else work:
            reference = reference_logprobs(model, path.reference)
            weight = model.model.layers[i].self_attn.o_proj.weight
            for g, total in enumerate(stats[i]):
                columns = slice(g * rep * head_dim, (g + 1) * rep * head_dim)
                saved = weight[:, columns].clone()
                weight[:, columns] = 0
                try:
                    total += token_stats(model, runner.replay(path, i, "attn"), path.input_ids, reference)
                finally:
                    weight[:, columns] = saved
    return {i: [s.mean_kl for s in totals] for i, totals in stats.items()}


def write_width_figure(importance: WidthImportance, path, title: str) -> bool:
    """Two panels: each layer's MLP channels sorted by mean activation (a curve per layer, as a share of
    the layer's largest: how many channels carry little), and the layers x KV groups mean activation.
    False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (curves, grid) = plt.subplots(1, 2, figsize=(11, 4))
    ffn = importance.scores["ffn"]["activation"]
    for layer, values in ffn.items():
        ordered = sorted(values)
        top = ordered[-1] or 1.0
        curves.plot([v / top for v in ordered], color=plt.cm.viridis(layer / max(1, len(ffn) - 1)), linewidth=1)
    curves.set(
        title="MLP channels by mean activation (sorted; colour = layer)", xlabel="channel rank", ylabel="share of max"
    )
    kv = importance.scores["kv_heads"]["activation"]
    image = grid.imshow([kv[layer] for layer in kv], aspect="auto", cmap="magma", interpolation="nearest")
    grid.set(title="KV groups: mean attention output norm", xlabel="KV group", ylabel="layer")
    grid.set_yticks(range(len(kv)), [str(i) for i in kv])
    fig.colorbar(image, ax=grid)
    fig.suptitle(f"{title}: width", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
