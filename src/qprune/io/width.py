"""Width of a dense Qwen3: a plan's `ffn` (MLP channels) and `kv_heads` (KV groups, each with the query
heads that share it) as a stock Qwen3's config and tensors (`ops.prune` writes them; `verify` checks
a cut against its base with them).

    plan = Plan(ffn={i: (...) for i in range(28)}, kv_heads={i: (3,) for i in range(28)})
    check_width(checkpoint.config, plan, "SRC")   # ranges, one channel and one group kept, no pruned block
    is_uniform_width(checkpoint.config, plan)     # the same sizes in every layer that runs: a stock Qwen3
    config = width_config(checkpoint.config, plan)  # smaller sizes, qprune_pruned_width recorded
    entries = width_tensors(checkpoint, plan)       # the kept rows and columns, sliced in order

A removed MLP channel j is exactly a zero column j of `down_proj`; a removed KV group g (GQA: `rep` =
heads / KV heads query heads share it) is exactly zero `o_proj` columns for its `rep` query heads.
Slicing those columns, and the rows of `gate_proj` / `up_proj` and of `q_proj` (the group's heads),
`k_proj`, `v_proj` (and their biases), gives a stock Qwen3 with smaller `intermediate_size`,
`num_key_value_heads` and `num_attention_heads` (`head_dim` explicit) that computes exactly that.
So a cut that removes the same numbers in every layer is a stock checkpoint any engine runs at full
speed. Different numbers per layer (or blocks pruned as well) give qprune's pruned format, whose
config states each layer's sizes (`arch.qwen3.layer_widths`). Either config records the source's index
of every removed channel and group per layer (`qprune_pruned_width`), for provenance and for `verify`'s
oracle.

Headers only, like `prune`: rows are copied byte ranges; columns are read a block of rows at a time.
"""

from __future__ import annotations

import re

from qprune.arch import family_of
from qprune.arch.qwen3 import LAYER_FFN, LAYER_KV_HEADS, QWEN3, head_dim_of, layer_widths
from qprune.errors import QpruneError
from qprune.io.safetensors import TensorEntry
from qprune.io.source import Checkpoint
from qprune.plan import Plan, index_lists

WIDTH_RECORD = "qprune_pruned_width"  # config.json: {"ffn": {"layer": [...]}, "kv_heads": {"layer": [...]}}
_LAYER_TENSOR = re.compile(r"^model\.layers\.(\d+)\.(mlp|self_attn)\.(\w+)\.(weight|bias)$")


def recorded_width(config: dict) -> Plan:
    """The MLP channels and KV groups a checkpoint qprune wrote lacks, per layer, in its base's
    numbering (an empty plan for none)."""
    record = config.get(WIDTH_RECORD) or {}
    where = f"config.json's {WIDTH_RECORD}"
    if not isinstance(record, dict) or not set(record) <= {"ffn", "kv_heads"}:
        raise QpruneError(f'{where} must be an object like {{"ffn": {{"0": [5]}}, "kv_heads": {{"0": [1]}}}}')
    lists = {field: index_lists(record.get(field, {}), where, field) for field in ("ffn", "kv_heads")}
    return Plan(ffn=lists["ffn"], kv_heads=lists["kv_heads"])


def _sizes(config: dict) -> list[tuple[int, int, int]]:
    """(MLP channels, KV groups, query heads per group) of each layer."""
    return [(inner, groups, heads // groups) for inner, groups, heads in layer_widths(config)]


def check_width(config: dict, plan: Plan, where: str) -> None:
    """Refuse a width plan this checkpoint cannot take: not a dense Qwen3, an index out of range, no
    channel or group left in a layer, a layer whose block is pruned, or experts."""
    family = family_of(config)
    if family is not QWEN3:
        raise QpruneError(f"{{ffn}} / {{kv_heads}}: {where} is a {family.title}; width cuts are a dense Qwen3's")
    sizes = _sizes(config)
    source_plan = Plan.from_config(config)
    for field, blocks, what in (
        ("ffn", set(plan.mlp) | set(source_plan.mlp), "MLP channels"),
        ("kv_heads", set(plan.attn) | set(source_plan.attn), "KV groups"),
    ):
        for layer, indices in getattr(plan, field):
            size = sizes[layer][0 if field == "ffn" else 1]
            if layer in blocks:
                block = "MLP" if field == "ffn" else "attention"
                raise QpruneError(f"{{{field}}}: layer {layer}'s {block} block is pruned whole; it takes no list")
            if indices[-1] >= size:
                raise QpruneError(f"{{{field}}}: layer {layer} has {what} 0..{size - 1}, not {indices[-1]}")
            if len(indices) >= size:
                raise QpruneError(f"{{{field}}}: layer {layer} would keep none of its {size} {what}; keep at least one")


def kept_widths(config: dict, plan: Plan = Plan()) -> tuple[dict[int, int], dict[int, int]]:
    """({layer whose MLP runs: its channels}, {layer whose attention runs: its KV groups}) after `plan`."""
    total = Plan.from_config(config).union(Plan(plan.attn, plan.mlp))
    ffn, kv = dict(plan.ffn), dict(plan.kv_heads)
    channels, groups = {}, {}
    for layer, (inner, group_count, _) in enumerate(_sizes(config)):
        if layer not in total.mlp:
            channels[layer] = inner - len(ffn.get(layer, ()))
        if layer not in total.attn:
            groups[layer] = group_count - len(kv.get(layer, ()))
    return channels, groups


def is_uniform_width(config: dict, plan: Plan = Plan()) -> bool:
    """Whether every MLP that runs after `plan` has the same channels, and every attention block the
    same KV groups: only then can the result be a stock Qwen3."""
    channels, groups = kept_widths(config, plan)
    return len(set(channels.values())) <= 1 and len(set(groups.values())) <= 1


def width_config(config: dict, plan: Plan) -> dict:
    """The source's config.json after a width cut: the sizes (the same in every layer, or, where they
    differ, `layer_intermediate_size` / `layer_num_key_value_heads` per layer with the global fields
    the largest; `head_dim` explicit), and the record of what went, in the numbering of the model the
    source was cut from (a source cut before keeps its record, extended)."""
    sizes = _sizes(config)
    rep = sizes[0][2]
    ffn, kv = dict(plan.ffn), dict(plan.kv_heads)
    after = [(inner - len(ffn.get(i, ())), groups - len(kv.get(i, ()))) for i, (inner, groups, _) in enumerate(sizes)]
    channels, groups = kept_widths(config, plan)
    top_channels = max(channels.values(), default=max(a for a, _ in after))
    top_groups = max(groups.values(), default=max(g for _, g in after))
    earlier = recorded_width(config)
    record = {}
    for field, plan_lists, before in (("ffn", ffn, dict(earlier.ffn)), ("kv_heads", kv, dict(earlier.kv_heads))):
        merged = {}
        for layer, layer_sizes in enumerate(sizes):
            size = layer_sizes[0 if field == "ffn" else 1]
            gone_before = set(before.get(layer, ()))
            surviving = [i for i in range(size + len(gone_before)) if i not in gone_before]
            gone = gone_before | {surviving[i] for i in plan_lists.get(layer, ())}
            if gone:
                merged[str(layer)] = sorted(gone)
        if merged:
            record[field] = merged
    out = {k: v for k, v in config.items() if k not in (LAYER_FFN, LAYER_KV_HEADS)} | {
        "intermediate_size": top_channels,
        "num_key_value_heads": top_groups,
        "num_attention_heads": top_groups * rep,
        "head_dim": head_dim_of(config),
        WIDTH_RECORD: record,
    }
    if not is_uniform_width(config, plan):
        # a layer whose block is pruned whole states the largest size: it builds nothing
        out[LAYER_FFN] = [channels.get(i, top_channels) for i in range(len(sizes))]
        out[LAYER_KV_HEADS] = [groups.get(i, top_groups) for i in range(len(sizes))]
    return out


def as_uniform_width(config: dict, where: str) -> dict:
    """The config with one width for every layer (the per-layer lists dropped), as a stock Qwen3 states
    it; an error when the blocks that run have different widths."""
    if not (config.get(LAYER_FFN) or config.get(LAYER_KV_HEADS)):
        return config
    if not is_uniform_width(config):
        channels, groups = kept_widths(config)
        sizes = [(what, set(values.values())) for what, values in (("MLP channels", channels), ("KV heads", groups))]
        what, values = next((what, values) for what, values in sizes if len(values) > 1)
        raise QpruneError(
            f"{where} has {min(values)} to {max(values)} {what} in different layers; a stock Qwen3 has one width for "
            "all (serve it as it is: transformers, qprune.load and the vLLM plugin run it)"
        )
    return width_config(config, Plan())


def width_tensors(checkpoint: Checkpoint, plan: Plan) -> list[TensorEntry]:
    """The source's tensors with the removed channels' and groups' rows and columns left out."""
    config = checkpoint.config
    sizes = _sizes(config)
    head_dim = head_dim_of(config)
    ffn, kv = dict(plan.ffn), dict(plan.kv_heads)
    entries = []
    for name, entry in checkpoint.tensors.items():
        match = _LAYER_TENSOR.match(name)
        if match is None:
            entries.append(entry)
            continue
        layer, block, module = int(match.group(1)), match.group(2), match.group(3)
        channels, groups, rep = sizes[layer]
        if module in ("down_proj", "o_proj") and match.group(4) == "bias":
            entries.append(entry)  # an output projection's bias is as wide as the residual stream
        elif block == "mlp" and layer in ffn:
            kept = [j for j in range(channels) if j not in set(ffn[layer])]
            entries.append(entry.columns(kept) if module == "down_proj" else entry.rows(kept))
        elif block == "self_attn" and layer in kv and module in ("q_proj", "k_proj", "v_proj", "o_proj"):
            kept_groups = [g for g in range(groups) if g not in set(kv[layer])]
            per = rep if module in ("q_proj", "o_proj") else 1  # query heads per group, or one KV head
            kept = [(g * per + h) * head_dim + d for g in kept_groups for h in range(per) for d in range(head_dim)]
            entries.append(entry.columns(kept) if module == "o_proj" else entry.rows(kept))
        else:
            entries.append(entry)
    return entries
