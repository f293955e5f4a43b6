"""One parameter budget over a Qwen3-MoE's blocks and experts: which attention blocks, MoE blocks and
single experts to remove together (`prune --auto --param-ratio R --expert-allocation joint`).

    plan = joint_plan(config, block_kl, expert_kl, param_ratio=0.3)

Every unit is scored by the same measure, the KL divergence of the model's next-token distribution
from the dense model's when that unit alone is removed (`measure.scan` for blocks, `measure.experts.
expert_kl` for experts), and ranked by KL per parameter it holds. Units are taken in that order while
they fit the budget (a share of the decoder's parameters, as `Target.param_ratio`): a MoE block taken
whole absorbs the experts already taken from it, and a layer keeps at least the experts a token runs.
One shot: the KLs of units removed together are not re-measured, so this is a ranking, not a search.
"""

from __future__ import annotations

from qprune.cost import Shape, block_parameters
from qprune.errors import QpruneError
from qprune.measure.goal import Block
from qprune.plan import Plan


def expert_size(shape: Shape) -> int:
    """Parameters one expert holds: its three projections and its router row."""
    return 3 * shape.hidden * shape.expert_intermediate + shape.hidden


def joint_plan(
    config: dict,
    block_kl: dict[Block, float],
    expert_kl: dict[int, list[float]],
    param_ratio: float,
    already: Plan = Plan(),
) -> Plan:
    """The blocks and experts to remove within `param_ratio` of the decoder's parameters (those
    `already` removed count against it), lowest KL per parameter first."""
    shape = Shape.from_config(config)
    sizes = {(i, kind): n for i in range(shape.layers) for kind, n in block_parameters(shape, i).items()}
    total = sum(sizes.values())
    budget = param_ratio * total
    removed = sum(sizes[(i, "attn")] for i in already.attn) + sum(sizes[(i, "mlp")] for i in already.mlp)
    if removed >= budget:
        raise QpruneError(
            f"the model already lacks {removed / total:.1%} of its decoder parameters, at least the "
            f"{{param_ratio}} {param_ratio}"
        )
    per_expert, per_token = expert_size(shape), shape.experts_per_token
    units = [(kl / sizes[block], "block", block) for block, kl in block_kl.items()]
    units += [(kl / per_expert, "expert", (layer, e)) for layer, kls in expert_kl.items() for e, kl in enumerate(kls)]
    blocks: set[Block] = set()
    experts: dict[int, set[int]] = {layer: set() for layer in expert_kl}
    for _, kind, unit in sorted(units, key=lambda u: (u[0], u[1], u[2])):
        if kind == "block":
            layer, block_kind = unit
            refund = len(experts.get(layer, ())) * per_expert if block_kind == "mlp" else 0
            if removed - refund + sizes[unit] <= budget:
                blocks.add(unit)
                removed += sizes[unit] - refund
                if block_kind == "mlp":
                    experts.pop(layer, None)  # the whole MoE block goes: no expert list for it
        else:
            layer, e = unit
            if layer not in experts or (layer, "mlp") in blocks:
                continue
            kept = len(expert_kl[layer]) - len(experts[layer])
            if kept - 1 >= per_token and removed + per_expert <= budget:
                experts[layer].add(e)
                removed += per_expert
    if not blocks and not any(experts.values()):
        raise QpruneError(f"{{param_ratio}} {param_ratio}: not even one expert fits the budget")
    return Plan(
        attn=tuple(sorted(i for i, kind in blocks if kind == "attn")),
        mlp=tuple(sorted(i for i, kind in blocks if kind == "mlp")),
        experts={layer: tuple(sorted(gone)) for layer, gone in experts.items() if gone},
    )
