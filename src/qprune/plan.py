"""Pruning plans: which layers lose their attention block and which their MLP block, which experts
of a Qwen3-MoE's layers go (`experts`: layer -> the source's indices of the experts removed), and how
much width a dense Qwen3's layers lose (`ffn`: layer -> MLP channels removed; `kv_heads`: layer -> KV
groups removed, each with the query heads that share it).

Which tensors make up a block is the architecture's business (`arch.family.tensor_block`);
`Plan.prunes(name)` answers for one tensor name, which is all the streaming pruner needs.

    plan = Plan.parse(attn="0,5", mlp="3,20-23")  # as typed on the command line
    plan = Plan.from_json("plan.json")          # {"attn": [0, 5], "mlp": [3]}
    plan = Plan(experts={3: (0, 7), 4: (1, 2)})   # {"experts": {"3": [0, 7], "4": [1, 2]}}
    plan = Plan(ffn={0: (5, 9)}, kv_heads={0: (1,)})  # {"ffn": {"0": [5, 9]}, "kv_heads": {"0": [1]}}
    plan.validate(num_layers=28)

This module imports neither torch nor transformers, so pruning a checkpoint never loads them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from qprune.arch import tensor_block
from qprune.errors import QpruneError

# No Qwen3 comes near this; a range is checked against it before it is expanded (`0-100000000000`
# would otherwise take gigabytes), and against the model's own depth by `Plan.validate`.
MAX_LAYERS = 10_000
# The plan as a checkpoint's config.json stores it.
PLAN_FIELDS = ("pruned_attn_layers", "pruned_mlp_layers")


def _parse_layers(text: str | None, option: str) -> tuple[int, ...]:
    layers = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        match = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", item)
        if match is None:
            raise QpruneError(f"{{{option}}}: {item!r} is not a layer number or a range like 20-27")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if min(first, last) < 0:
            raise QpruneError(f"{{{option}}}: layer {min(first, last)} is negative")
        if last < first:
            raise QpruneError(f"{{{option}}}: the range {item!r} runs backwards")
        if last >= MAX_LAYERS:
            raise QpruneError(f"{{{option}}}: layer {last} is out of range")
        layers.extend(range(first, last + 1))
    return tuple(layers)


# The per-layer index lists a plan may hold: its field, and what one index names.
INDEX_LISTS = {"experts": "expert", "ffn": "MLP channel", "kv_heads": "KV group"}


def index_lists(value: object, where: str, field: str = "experts") -> dict[int, tuple[int, ...]]:
    """{layer: sorted indices} from a mapping of layer (int, or its decimal string in JSON) to a list
    of distinct non-negative indices (experts, MLP channels or KV groups removed, as `field` says);
    anything else is a `QpruneError` saying where."""
    what = INDEX_LISTS[field]
    if not isinstance(value, dict):
        raise QpruneError(f'{where}: "{field}" must be an object like {{"3": [0, 7]}} (layer: {what}s removed)')
    out = {}
    for key, indices in value.items():
        layer = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < MAX_LAYERS:
            raise QpruneError(f"{where}: {field}: {key!r} is not a layer number")
        valid = isinstance(indices, (list, tuple)) and all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in indices
        )
        if not valid:
            raise QpruneError(f"{where}: {field} of layer {layer} must be a list of {what} indices, not {indices!r}")
        if len(set(indices)) != len(indices):
            raise QpruneError(f"{where}: {field} of layer {layer} lists the same {what} twice: {list(indices)}")
        if layer in out:
            raise QpruneError(f"{where}: {field}: layer {layer} is given twice")
        if indices:
            out[layer] = tuple(sorted(indices))
    return dict(sorted(out.items()))


def expert_lists(experts: object, where: str) -> dict[int, tuple[int, ...]]:
    """`index_lists` of experts."""
    return index_lists(experts, where, "experts")


@dataclass(frozen=True)
class Plan:
    attn: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()
    # Qwen3-MoE: per layer, the experts removed (indices of the source's numbering), as sorted pairs
    # (layer, experts) so that a Plan stays hashable; `Plan(experts={3: [0, 7]})` is accepted.
    experts: tuple[tuple[int, tuple[int, ...]], ...] = ()
    # Dense Qwen3, width: per layer, the MLP channels and the KV groups removed (source numbering).
    ffn: tuple[tuple[int, tuple[int, ...]], ...] = ()
    kv_heads: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "attn", tuple(sorted(set(self.attn))))
        object.__setattr__(self, "mlp", tuple(sorted(set(self.mlp))))
        for field in INDEX_LISTS:
            value = getattr(self, field)
            value = value if isinstance(value, dict) else dict(value)
            object.__setattr__(self, field, tuple(index_lists(value, field, field).items()))

    @property
    def has_width(self) -> bool:
        """Whether the plan removes MLP channels or KV groups."""
        return bool(self.ffn or self.kv_heads)

    @property
    def is_empty(self) -> bool:
        return not (self.num_blocks or self.experts or self.has_width)

    @property
    def removed_experts(self) -> dict[int, tuple[int, ...]]:
        """{layer: the experts removed from it}, for the layers that lose any."""
        return dict(self.experts)

    @classmethod
    def parse(cls, attn: str | None = None, mlp: str | None = None) -> Plan:
        return cls(_parse_layers(attn, "attn"), _parse_layers(mlp, "mlp"))

    @classmethod
    def from_json(cls, path: str | Path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise QpruneError(f"plan file {path} does not exist") from None
        except (OSError, ValueError) as error:
            raise QpruneError(f"plan file {path} is not valid JSON: {error}") from None
        if not isinstance(data, dict) or not set(data) <= {"attn", "mlp", *INDEX_LISTS}:
            raise QpruneError(
                f'plan file {path} must be an object like {{"attn": [0, 5], "mlp": [3]}} (also "experts", "ffn", '
                '"kv_heads": {"4": [0, 7]})'
            )
        lists = {key: data.get(key, []) for key in ("attn", "mlp")}
        for key, layers in lists.items():
            if not isinstance(layers, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise QpruneError(f"plan file {path}: {key!r} must be a list of layer numbers")
            if any(i < 0 for i in layers):
                raise QpruneError(f"plan file {path}: {key!r} holds a negative layer")
        indexed = {field: index_lists(data.get(field, {}), f"plan file {path}", field) for field in INDEX_LISTS}
        return cls(tuple(lists["attn"]), tuple(lists["mlp"]), **{k: tuple(v.items()) for k, v in indexed.items()})

    @classmethod
    def from_config(cls, config: dict, where: str | Path = "config.json") -> Plan:
        """The plan a checkpoint's config.json already carries (empty for a dense Qwen3 that has no plan
        fields). A plan field that is not a sorted list of distinct layer numbers below
        `num_hidden_layers` (null, a string, floats, booleans, negative, out of range, unsorted) is a
        `QpruneError` naming the field: qprune writes plans canonical, so anything else is damage."""
        depth = config.get("num_hidden_layers")
        depth = depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else None
        plan = {}
        for name in PLAN_FIELDS:
            layers = config.get(name, [])
            valid = (
                isinstance(layers, list)
                and all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i < (depth or MAX_LAYERS) for i in layers
                )
                and layers == sorted(set(layers))
            )
            if not valid:
                span = f"0..{depth - 1}" if depth else "0 and up"
                raise QpruneError(
                    f"{where}: {name} must be a sorted list of distinct layer numbers in {span}, not {layers!r}"
                )
            plan[name] = tuple(layers)
        return cls(plan["pruned_attn_layers"], plan["pruned_mlp_layers"])

    def union(self, other: Plan) -> Plan:
        """Both plans' blocks (expert and width lists are not combined here: a checkpoint records the
        experts and width it lacks apart from its plan, see `io/experts.py` and `io/width.py`)."""
        return Plan(
            self.attn + other.attn,
            self.mlp + other.mlp,
            self.experts or other.experts,
            self.ffn or other.ffn,
            self.kv_heads or other.kv_heads,
        )

    def validate(self, num_layers: int) -> None:
        for option, layers in (("attn", self.attn), ("mlp", self.mlp)):
            bad = [i for i in layers if i >= num_layers]
            if bad:
                last = num_layers - 1
                raise QpruneError(
                    f"{{{option}}}: layer {bad[0]} is out of range: the model has {num_layers} layers (0..{last})"
                )
        for field in INDEX_LISTS:
            bad = [i for i, _ in getattr(self, field) if i >= num_layers]
            if bad:
                raise QpruneError(
                    f"{{{field}}}: layer {bad[0]} is out of range: the model has {num_layers} layers "
                    f"(0..{num_layers - 1})"
                )

    @property
    def num_blocks(self) -> int:
        return len(self.attn) + len(self.mlp)

    def prunes(self, tensor_name: str) -> bool:
        # A plan holds no config, so no family: the family-independent rule, which every family's
        # `Family.tensor_block` is (all name their blocks model.layers.N.self_attn / .mlp).
        block = tensor_block(tensor_name)
        return block is not None and block[0] in (self.attn if block[1] == "attn" else self.mlp)

    def to_dict(self) -> dict:
        indexed = {
            field: {str(i): list(e) for i, e in getattr(self, field)} for field in INDEX_LISTS if getattr(self, field)
        }
        return {"attn": list(self.attn), "mlp": list(self.mlp), **indexed}

    def __str__(self) -> str:
        def layers(xs: tuple[int, ...]) -> str:
            return ", ".join(map(str, xs)) or "none"

        text = f"attention: {layers(self.attn)}; MLP: {layers(self.mlp)}"
        for field, title in (("experts", "experts"), ("ffn", "MLP channels"), ("kv_heads", "KV groups")):
            if getattr(self, field):
                text += f"; {title}: " + "; ".join(f"layer {i}: {layers(e)}" for i, e in getattr(self, field))
        return text
