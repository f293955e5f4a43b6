"""Removing experts of a Qwen3-MoE: a plan's `experts` as a stock Qwen3-MoE's config and tensors
(`ops.prune` writes them; `verify` checks a cut against its base with them).

    plan = Plan(experts={1: (0, 5), 3: (2, 7)})        # the same count in every MoE layer: uniform
    check_experts(checkpoint.config, plan, "SRC")      # ranges, dense layers, top-k kept, uniform
    fields = expert_fields(checkpoint.config, plan)    # num_experts smaller, qprune_pruned_experts
    entries = expert_tensors(checkpoint, plan)         # kept experts renumbered, router rows sliced

Removing an expert is exactly masking its router logit to -inf: the softmax and the top-k then run
over the kept experts (with or without `norm_topk_prob`), which is what a stock Qwen3-MoE with those
experts' router rows and weights removed computes. So a uniform cut is a stock checkpoint any engine
loads (transformers 4.57 and 5.x without remote code, vLLM natively): `model_type: qwen3_moe`,
`num_experts` reduced, the kept experts renumbered in order. Its config records the source's index of
every removed expert per layer (`qprune_pruned_experts`), for provenance and for `verify`'s oracle.
With attention or MLP blocks pruned as well, the checkpoint is qprune's pruned format with that smaller
`num_experts` (a layer whose MoE block is pruned whole has no experts to cut).

Headers only, like `prune`: tensors are copied from the source's shards, no model is built.
"""

from __future__ import annotations

import re

from qprune.arch import family_of
from qprune.arch.qwen3_moe import QWEN3_MOE, num_experts, sparse_layers
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
    by `mlp_only_layers` / `decoder_sparse_step`, or its MoE block pruned), an index out of range,
    fewer experts kept than a token runs (`num_experts_per_tok`), or different counts per layer (only
    a uniform cut is written yet). Layers whose MoE block is pruned, by the plan or the source, count
    as having no experts."""
    removed = plan.removed_experts
    if family_of(config) is not QWEN3_MOE:
        raise QpruneError(f"{{experts}}: {where} is a dense {family_of(config).title}; experts are Qwen3-MoE's")
    pruned_mlp = set(plan.mlp) | set(Plan.from_config(config).mlp)
    sparse = set(sparse_layers(config)) - pruned_mlp
    total = num_experts(config)
    per_token = QWEN3_MOE.config_field(config, "num_experts_per_tok")
    for layer, indices in removed.items():
        if layer in pruned_mlp:
            raise QpruneError(f"{{experts}}: layer {layer}'s MoE block is pruned whole; it takes no expert list")
        if layer not in sparse:
            raise QpruneError(f"{{experts}}: layer {layer} of {where} has a dense MLP, no experts")
        if indices[-1] >= total:
            raise QpruneError(f"{{experts}}: layer {layer} has experts 0..{total - 1}, not {indices[-1]}")
        if total - len(indices) < per_token:
            raise QpruneError(
                f"{{experts}}: layer {layer} would keep {total - len(indices)} experts, fewer than the "
                f"{per_token} each token runs (num_experts_per_tok)"
            )
    counts = {len(removed.get(layer, ())) for layer in sparse}
    if len(counts) > 1:
        raise QpruneError(
            "{experts}: remove the same number of experts from every MoE layer (a uniform cut, written as a "
            "stock Qwen3-MoE); different counts per layer are not supported yet"
        )


def expert_fields(config: dict, plan: Plan) -> dict:
    """The config.json fields an expert cut changes: the smaller expert count, and the record of which
    went, in the numbering of the model the source was cut from (a source cut before keeps its record,
    extended)."""
    removed, total = plan.removed_experts, num_experts(config)
    kept_count = total - len(next(iter(removed.values())))
    earlier = recorded_experts(config)
    record = {}
    for layer in sparse_layers(config):
        # The source's expert e is the base's e-th surviving expert.
        gone_before = set(earlier.get(layer, ()))
        surviving = [e for e in range(total + len(gone_before)) if e not in gone_before]
        record[str(layer)] = sorted(gone_before | {surviving[e] for e in removed.get(layer, ())})
    fields = {"num_experts": kept_count, EXPERTS_RECORD: record}
    if "num_local_experts" in config:
        fields["num_local_experts"] = kept_count
    return fields


def expert_tensors(checkpoint: Checkpoint, plan: Plan) -> list[TensorEntry]:
    """The source's tensors without the removed experts: the kept ones renumbered in order (names keep
    the source's order otherwise), each MoE layer's router `mlp.gate.weight` with only their rows."""
    removed = plan.removed_experts
    total = num_experts(checkpoint.config)
    kept = {layer: [e for e in range(total) if e not in set(gone)] for layer, gone in removed.items()}
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
