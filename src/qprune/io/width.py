"""Width of a dense Qwen3: a plan's `ffn` (MLP channels) and `kv_heads` (KV groups, each with the query
heads that share it) as a stock Qwen3's config and tensors (`ops.prune` writes them; `verify` checks
a cut against its base with them).

    plan = Plan(ffn={i: (...) for i in range(28)}, kv_heads={i: (3,) for i in range(28)})
    check_width(checkpoint.config, plan, "SRC")   # ranges, one channel and one group kept, no pruned block
    config = width_config(checkpoint.config, plan)  # smaller sizes, qprune_pruned_width recorded
    entries = width_tensors(checkpoint, plan)       # the kept rows and columns, sliced in order

A removed MLP channel j is exactly a zero column j of `down_proj`; a removed KV group g (GQA: `rep` =
heads / KV heads query heads share it) is exactly zero `o_proj` columns for its `rep` query heads.
Slicing those columns, and the rows of `gate_proj` / `up_proj` and of `q_proj` (the group's heads),
`k_proj`, `v_proj` (and their biases), gives a stock Qwen3 with smaller `intermediate_size`,
`num_key_value_heads` and `num_attention_heads` (`head_dim` explicit) that computes exactly that.
So a cut that removes the same numbers in every layer is a stock checkpoint any engine runs at full
speed. Its config records the source's index of every removed channel and group per layer
(`qprune_pruned_width`), for provenance and for `verify`'s oracle.

Headers only, like `prune`: rows are copied byte ranges; columns are read a block of rows at a time.
"""

from __future__ import annotations

import re

from qprune.arch import family_of
from qprune.arch.qwen3 import QWEN3
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


def _sizes(config: dict) -> tuple[int, int, int]:
    """(MLP channels, KV groups, query heads per group) of every layer."""
    heads = QWEN3.config_field(config, "num_attention_heads")
    groups = QWEN3.config_field(config, "num_key_value_heads") or heads
    return QWEN3.config_field(config, "intermediate_size"), groups, heads // groups


def check_width(config: dict, plan: Plan, where: str) -> None:
    """Refuse a width plan this checkpoint cannot take: not a dense Qwen3, an index out of range, no
    channel or group left in a layer, a layer whose block is pruned, experts, or (not written yet) a
    cut that is not the same in every layer whose block remains."""
    family = family_of(config)
    if family is not QWEN3:
        raise QpruneError(f"{{ffn}} / {{kv_heads}}: {where} is a {family.title}; width cuts are a dense Qwen3's")
    channels, groups, _ = _sizes(config)
    source_plan = Plan.from_config(config)
    for field, size, blocks, what in (
        ("ffn", channels, set(plan.mlp) | set(source_plan.mlp), "MLP channels"),
        ("kv_heads", groups, set(plan.attn) | set(source_plan.attn), "KV groups"),
    ):
        for layer, indices in getattr(plan, field):
            if layer in blocks:
                block = "MLP" if field == "ffn" else "attention"
                raise QpruneError(f"{{{field}}}: layer {layer}'s {block} block is pruned whole; it takes no list")
            if indices[-1] >= size:
                raise QpruneError(f"{{{field}}}: layer {layer} has {what} 0..{size - 1}, not {indices[-1]}")
            if len(indices) >= size:
                raise QpruneError(f"{{{field}}}: layer {layer} would keep none of its {size} {what}; keep at least one")
    layers = range(config["num_hidden_layers"])
    for field, what, blocks in (
        ("ffn", "MLP channels", set(plan.mlp) | set(source_plan.mlp)),
        ("kv_heads", "KV groups", set(plan.attn) | set(source_plan.attn)),
    ):
        lists = dict(getattr(plan, field))
        if len({len(lists.get(i, ())) for i in layers if i not in blocks}) > 1:
            raise QpruneError(
                f"{{{field}}}: remove the same number of {what} from every layer whose block remains (a uniform "
                "cut); different counts per layer are not written yet"
            )


def width_config(config: dict, plan: Plan) -> dict:
    """The source's config.json after a uniform width cut: the smaller sizes (`head_dim` explicit) and
    the record of what went, in the numbering of the model the source was cut from (a source cut
    before keeps its record, extended)."""
    channels, groups, rep = _sizes(config)
    ffn, kv = dict(plan.ffn), dict(plan.kv_heads)
    lost_channels, lost_groups = len(next(iter(ffn.values()), ())), len(next(iter(kv.values()), ()))
    earlier = recorded_width(config)
    record = {}
    for field, plan_lists, before in (("ffn", ffn, dict(earlier.ffn)), ("kv_heads", kv, dict(earlier.kv_heads))):
        size = channels if field == "ffn" else groups
        merged = {}
        for layer in range(config["num_hidden_layers"]):
            gone_before = set(before.get(layer, ()))
            surviving = [i for i in range(size + len(gone_before)) if i not in gone_before]
            gone = gone_before | {surviving[i] for i in plan_lists.get(layer, ())}
            if gone:
                merged[str(layer)] = sorted(gone)
        if merged:
            record[field] = merged
    head_dim = QWEN3.config_field(config, "head_dim") or config["hidden_size"] // (groups * rep)
    return config | {
        "intermediate_size": channels - lost_channels,
        "num_key_value_heads": groups - lost_groups,
        "num_attention_heads": (groups - lost_groups) * rep,
        "head_dim": head_dim,
        WIDTH_RECORD: record,
    }


def width_tensors(checkpoint: Checkpoint, plan: Plan) -> list[TensorEntry]:
    """The source's tensors with the removed channels' and groups' rows and columns left out."""
    config = checkpoint.config
    channels, groups, rep = _sizes(config)
    head_dim = QWEN3.config_field(config, "head_dim") or config["hidden_size"] // (groups * rep)
    ffn, kv = dict(plan.ffn), dict(plan.kv_heads)
    entries = []
    for name, entry in checkpoint.tensors.items():
        match = _LAYER_TENSOR.match(name)
        if match is None:
            entries.append(entry)
            continue
        layer, block, module = int(match.group(1)), match.group(2), match.group(3)
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
