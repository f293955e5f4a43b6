"""Removing experts of a Qwen3-MoE: a plan's `experts` as a stock Qwen3-MoE's config and tensors
(`ops.prune` writes them; `verify` checks a cut against its base with them).

    plan = Plan(experts={1: (0, 5), 3: (2, 7)})        # the same count in every MoE layer: uniform
    check_experts(checkpoint.config, plan, "SRC")      # ranges, dense layers, top-k kept
    config = cut_config(checkpoint.config, plan)       # num_experts smaller, qprune_pruned_experts
    entries = expert_tensors(checkpoint, plan)         # kept experts renumbered, router rows sliced

Removing an expert is exactly masking its router logit to -inf: the softmax and the top-k then run
over the kept experts (with or without `norm_topk_prob`), which is what a stock Qwen3-MoE with those
experts' router rows and weights removed computes. So a uniform cut is a stock checkpoint any engine
loads (transformers 4.57 and 5.x without remote code, vLLM natively): `model_type: qwen3_moe`,
`num_experts` reduced, the kept experts renumbered in order. Its config records the source's index of
every removed expert per layer (`qprune_pruned_experts`), for provenance and for `verify`'s oracle.
With attention or MLP blocks pruned as well, or different counts kept in different layers (`is_uniform`
false), the checkpoint is qprune's pruned format: `num_experts` the largest count and, where counts
differ, `layer_num_experts` giving each layer's (a layer whose MoE block is pruned whole has no experts
to cut).

Headers only, like `prune`: tensors are copied from the source's shards, no model is built.
"""

from __future__ import annotations

import re

from qprune.arch import family_of
from qprune.arch.qwen3_moe import LAYER_EXPERTS, QWEN3_MOE, expert_counts, num_experts
from qprune.errors import QpruneError
from qprune.io.safetensors import TensorEntry
from qprune.io.source import Checkpoint
from qprune.plan import Plan, expert_lists

EXPERTS_RECORD = "qprune_pruned_experts"  # config.json: {"layer": [source indices removed]}
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(.+)$")


def recorded_experts(config: dict) -> dict[int, tuple[int, ...]]:
    """The experts a checkpoint qprune wrote lacks, per layer, in its base's numbering ({} for none)."""
    return expert_lists(config.get(EXPERTS_RECORD) or {}, f"config.json's {EXPERTS_RECORD}")


def check_experts(config: dict, plan: Plan, where: str) -> None:
    """Refuse an expert plan this checkpoint cannot take: a dense model, a layer without experts (dense
    by `mlp_only_layers` / `decoder_sparse_step`, or its MoE block pruned), an index out of range, or
    fewer experts kept than a token runs (`num_experts_per_tok`). Layers whose MoE block is pruned, by
    the plan or the source, count as having no experts."""
    removed = plan.removed_experts
    if family_of(config) is not QWEN3_MOE:
        raise QpruneError(f"{{experts}}: {where} is a dense {family_of(config).title}; experts are Qwen3-MoE's")
    pruned_mlp = set(plan.mlp) | set(Plan.from_config(config).mlp)
    counts = expert_counts(config)
    per_token = QWEN3_MOE.config_field(config, "num_experts_per_tok")
    for layer, indices in removed.items():
        if layer in pruned_mlp:
            raise QpruneError(f"{{experts}}: layer {layer}'s MoE block is pruned whole; it takes no expert list")
        if layer not in counts:
            raise QpruneError(f"{{experts}}: layer {layer} of {where} has a dense MLP, no experts")
        if indices[-1] >= counts[layer]:
            raise QpruneError(f"{{experts}}: layer {layer} has experts 0..{counts[layer] - 1}, not {indices[-1]}")
        if counts[layer] - len(indices) < per_token:
            raise QpruneError(
                f"{{experts}}: layer {layer} would keep {counts[layer] - len(indices)} experts, fewer than the "
                f"{per_token} each token runs (num_experts_per_tok)"
            )


def kept_counts(config: dict, plan: Plan) -> dict[int, int]:
    """{MoE layer that runs: its experts after the cut} (layers whose MoE block is pruned left out)."""
    pruned_mlp = set(plan.mlp) | set(Plan.from_config(config).mlp)
    removed = plan.removed_experts
    counts = expert_counts(config)
    return {layer: n - len(removed.get(layer, ())) for layer, n in counts.items() if layer not in pruned_mlp}


def is_uniform(config: dict, plan: Plan = Plan()) -> bool:
    """Whether every MoE layer that runs keeps the same number of experts after `plan`: only then can
    the result be a stock Qwen3-MoE."""
    return len(set(kept_counts(config, plan).values())) <= 1


def cut_config(config: dict, plan: Plan) -> dict:
    """The source's config.json after the expert cut (see `expert_fields`)."""
    out = config | expert_fields(config, plan)
    if out[LAYER_EXPERTS] is None:
        del out[LAYER_EXPERTS]
    return out


def as_uniform(config: dict, where: str) -> dict:
    """The config with one expert count for every MoE layer (`layer_num_experts` dropped), as a stock
    Qwen3-MoE states it; an error when the MoE layers that run keep different counts."""
    if config.get(LAYER_EXPERTS) is None:
        return config
    counts = set(kept_counts(config, Plan()).values())
    if len(counts) > 1:
        raise QpruneError(
            f"{where} keeps {min(counts)} to {max(counts)} experts in different MoE layers; a stock Qwen3-MoE has one "
            "count for all (serve it as it is: transformers, qprune.load and the vLLM plugin run it)"
        )
    out = {k: v for k, v in config.items() if k != LAYER_EXPERTS}
    count = counts.pop() if counts else num_experts(config)
    return out | {"num_experts": count} | ({"num_local_experts": count} if "num_local_experts" in config else {})


def expert_fields(config: dict, plan: Plan) -> dict:
    """The config.json fields an expert cut changes: the expert count (the same in every MoE layer, or
    `layer_num_experts` when they differ, `num_experts` then the largest), and the record of which
    went, in the numbering of the model the source was cut from (a source cut before keeps its record,
    extended)."""
    removed, counts = plan.removed_experts, expert_counts(config)
    after = {layer: count - len(removed.get(layer, ())) for layer, count in counts.items()}
    running = kept_counts(config, plan)
    largest = max(running.values() or after.values())
    earlier = recorded_experts(config)
    record = {}
    for layer, count in counts.items():
        # The source's expert e is the base's e-th surviving expert.
        gone_before = set(earlier.get(layer, ()))
        surviving = [e for e in range(count + len(gone_before)) if e not in gone_before]
        record[str(layer)] = sorted(gone_before | {surviving[e] for e in removed.get(layer, ())})
    fields = {"num_experts": largest, EXPERTS_RECORD: record, LAYER_EXPERTS: None}
    if not is_uniform(config, plan):
        # a layer whose MoE block is pruned states the largest count: it builds nothing
        layers = range(config["num_hidden_layers"])
        fields[LAYER_EXPERTS] = [after[i] if i in running else largest if i in counts else 0 for i in layers]
    if "num_local_experts" in config:
        fields["num_local_experts"] = largest
    return fields


def expert_tensors(checkpoint: Checkpoint, plan: Plan) -> list[TensorEntry]:
    """The source's tensors without the removed experts: the kept ones renumbered in order (names keep
    the source's order otherwise), each MoE layer's router `mlp.gate.weight` with only their rows."""
    removed = plan.removed_experts
    counts = expert_counts(checkpoint.config)
    kept = {layer: [e for e in range(counts[layer]) if e not in set(gone)] for layer, gone in removed.items()}
    new_index = {layer: {old: new for new, old in enumerate(experts)} for layer, experts in kept.items()}
    entries = []
    for name, entry in checkpoint.tensors.items():
        match = _EXPERT.match(name)
        if match is not None and int(match.group(1)) in removed:
            layer, expert = int(match.group(1)), int(match.group(2))
            if expert in new_index[layer]:
                renamed = f"model.layers.{layer}.mlp.experts.{new_index[layer][expert]}.{match.group(3)}"
                entries.append(TensorEntry(renamed, entry.file, entry.dtype, entry.shape, entry.start, entry.end))
            continue
        layer_gate = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.gate\.weight", name)
        if layer_gate is not None and int(layer_gate.group(1)) in removed:
            entries.append(entry.rows(kept[int(layer_gate.group(1))]))
            continue
        entries.append(entry)
    return entries
