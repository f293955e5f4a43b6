"""What `prune --auto` is asked for: a `Target` (how much to remove) and `Constraints` (what may not
go) for blocks, and an `ExpertTarget` for the experts of a Qwen3-MoE. Light on purpose: the command
line builds its options from these fields without importing torch.

    Target(blocks=4)                              # or Target(param_ratio=0.25)
    Constraints(only="mlp", keep_first=2)         # candidates: MLP blocks of layers 2 and up
"""

from __future__ import annotations

from dataclasses import dataclass

from qprune.errors import QpruneError
from qprune.setting import setting

Block = tuple[int, str]  # (layer, "attn" | "mlp" | "layer"), as `measure.ablation` names blocks


@dataclass(frozen=True)
class Constraints:
    only: str | None = setting(None, "Remove only attention or only MLP blocks.", metavar="attn|mlp")
    keep_first: int = setting(0, "Never remove blocks of the first K layers.", metavar="K")
    keep_last: int = setting(0, "Never remove blocks of the last K layers.", metavar="K")
    # Candidates are layers (both blocks), not blocks.
    whole_layers: bool = setting(
        False, "Remove whole layers (both blocks; --blocks counts layers): exports to a stock Qwen3 at no cost."
    )

    def __post_init__(self) -> None:
        if self.only not in (None, "attn", "mlp"):
            raise QpruneError(f"{{only}} {self.only}: choose attn or mlp")
        if self.whole_layers and self.only is not None:
            raise QpruneError("{whole_layers} removes both blocks of a layer; it cannot be combined with {only}")

    def describe(self, already_pruned: bool = False) -> str:
        """What keeps blocks out of reach, naming the arguments: "{only} mlp, {keep_first} 2"."""
        parts = [f"{{only}} {self.only}"] if self.only else []
        parts += [f"{{{name}}} {value}" for name, value in vars(self).items() if name.startswith("keep_") and value]
        parts += ["{whole_layers}"] if self.whole_layers else []
        parts += ["the blocks the checkpoint already prunes"] if already_pruned else []
        return ", ".join(parts)

    def allows(self, block: Block, num_layers: int) -> bool:
        layer, kind = block
        return (
            (self.only is None or kind == self.only)
            and layer >= self.keep_first
            and layer < num_layers - self.keep_last
        )


@dataclass(frozen=True)
class Target:
    blocks: int | None = setting(None, "Number of blocks to remove.", metavar="N")
    param_ratio: float | None = setting(
        None, "Share of decoder parameters to remove, at most (e.g. 0.25).", metavar="SHARE"
    )

    def __post_init__(self) -> None:
        if (self.blocks is None) == (self.param_ratio is None):
            raise QpruneError("give exactly one of {blocks} and {param_ratio}")
        if self.blocks is not None and self.blocks < 1:
            raise QpruneError("{blocks} must be at least 1")
        if self.param_ratio is not None and not 0 < self.param_ratio < 1:
            raise QpruneError("{param_ratio} must be between 0 and 1 (the share of decoder parameters to remove)")

    def describe(self) -> dict:
        return {"blocks": self.blocks} if self.blocks is not None else {"param_ratio": self.param_ratio}


EXPERT_METRICS = ("reap", "frequency", "kl")
EXPERT_ALLOCATIONS = ("uniform", "nonuniform", "joint")


@dataclass(frozen=True)
class ExpertTarget:
    """Remove the `expert_ratio` share of the experts, those lowest by `expert_metric`
    (`measure.experts`): of every MoE layer (a uniform cut, written as a stock Qwen3-MoE), or with
    `expert_allocation="nonuniform"` of all layers together, counts free per layer (qprune's format).
    Or, with `expert_allocation="joint"`, blocks and experts together within `param_ratio` of the
    decoder's parameters, all ranked by the KL when each is removed alone, per parameter
    (`measure.joint`)."""

    expert_ratio: float | None = setting(
        None,
        "Qwen3-MoE: share of every MoE layer's experts to remove, e.g. 0.25 (writes a stock Qwen3-MoE).",
        metavar="SHARE",
    )
    expert_metric: str = setting(
        "reap",
        "With --expert-ratio: rank experts by reap (REAP's saliency), frequency, or kl (the KL divergence when "
        "each is masked alone: a replay per expert, in memory).",
        metavar="reap|frequency|kl",
    )
    expert_allocation: str = setting(
        "uniform",
        "With --expert-ratio: uniform (the same share of every MoE layer: a stock Qwen3-MoE) or nonuniform "
        "(the same total, fewest where they matter least). With --param-ratio: joint (attention blocks, MoE "
        "blocks and single experts against one budget, by KL per parameter).",
        metavar="uniform|nonuniform|joint",
    )
    param_ratio: float | None = None  # joint only: `Target.param_ratio` (the command line's --param-ratio)

    def __post_init__(self) -> None:
        if self.expert_metric not in EXPERT_METRICS:
            raise QpruneError(f"{{expert_metric}} {self.expert_metric}: choose {' or '.join(EXPERT_METRICS)}")
        if self.expert_allocation not in EXPERT_ALLOCATIONS:
            choices = " or ".join(EXPERT_ALLOCATIONS)
            raise QpruneError(f"{{expert_allocation}} {self.expert_allocation}: choose {choices}")
        if self.expert_ratio is not None and not 0 < self.expert_ratio < 1:
            raise QpruneError(
                f"{{expert_ratio}} must be between 0 and 1 (the share of experts removed), not {self.expert_ratio}"
            )
        if self.joint and (self.param_ratio is None or self.expert_ratio is not None):
            raise QpruneError(
                "{expert_allocation} joint takes {param_ratio} (one budget for blocks and experts), not {expert_ratio}"
            )
        if not self.joint and self.param_ratio is not None:
            raise QpruneError("{param_ratio} with experts: add {expert_allocation} joint, or give {expert_ratio} alone")
        if self.param_ratio is not None and not 0 < self.param_ratio < 1:
            raise QpruneError("{param_ratio} must be between 0 and 1 (the share of decoder parameters to remove)")

    @property
    def joint(self) -> bool:
        return self.expert_allocation == "joint"


WIDTH_METRICS = ("activation", "output", "kl")
WIDTH_ALLOCATIONS = ("uniform", "nonuniform", "joint")


@dataclass(frozen=True)
class WidthTarget:
    """Remove the `ffn_ratio` share of every layer's MLP channels and the `kv_head_ratio` share of its
    KV groups, those lowest by `width_metric` (`measure.width`): a uniform cut, written as a stock Qwen3.
    With `width_allocation="nonuniform"`, the same totals with counts free per layer (qprune's format).
    Or, with `width_allocation="joint"`, blocks and MLP channels within `param_ratio` of the decoder's
    parameters, the split chosen by a search (`ops.depth_width`)."""

    ffn_ratio: float | None = setting(
        None,
        "Dense Qwen3: share of every layer's MLP channels to remove, e.g. 0.25 (writes a stock Qwen3).",
        metavar="SHARE",
    )
    kv_head_ratio: float | None = setting(
        None,
        "Dense Qwen3: share of every layer's KV groups to remove, each with its query heads (a stock Qwen3).",
        metavar="SHARE",
    )
    width_metric: str = setting(
        "activation",
        "With --ffn-ratio / --kv-head-ratio: rank by activation (Minitron's mean activation), output (weighted by "
        "what reaches the residual stream), or kl (KV groups only: the KL when each is removed alone).",
        metavar="activation|output|kl",
    )
    width_allocation: str = setting(
        "uniform",
        "uniform (with --ffn-ratio / --kv-head-ratio: a stock Qwen3), nonuniform (the same totals, counts free per "
        "layer: qprune's format), or joint with --param-ratio: the search splits one budget between blocks and MLP "
        "channels (dense Qwen3).",
        metavar="uniform|nonuniform|joint",
    )
    param_ratio: float | None = None  # joint only: `Target.param_ratio` (the command line's --param-ratio)

    @property
    def joint(self) -> bool:
        return self.width_allocation == "joint"

    def __post_init__(self) -> None:
        if self.width_metric not in WIDTH_METRICS:
            raise QpruneError(f"{{width_metric}} {self.width_metric}: choose {' or '.join(WIDTH_METRICS)}")
        if self.width_allocation not in WIDTH_ALLOCATIONS:
            raise QpruneError(f"{{width_allocation}} {self.width_allocation}: choose {' or '.join(WIDTH_ALLOCATIONS)}")
        if self.joint:
            if self.param_ratio is None or self.ffn_ratio is not None or self.kv_head_ratio is not None:
                raise QpruneError("{width_allocation} joint takes {param_ratio}, not {ffn_ratio} or {kv_head_ratio}")
            if not 0 < self.param_ratio < 1:
                raise QpruneError("{param_ratio} must be between 0 and 1 (the share of decoder parameters to remove)")
            return
        if self.param_ratio is not None:
            raise QpruneError("{param_ratio} with width: add {width_allocation} joint")
        if self.ffn_ratio is None and self.kv_head_ratio is None:
            raise QpruneError("give {ffn_ratio} or {kv_head_ratio}: the share of every layer's width to remove")
        for name in ("ffn_ratio", "kv_head_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise QpruneError(f"{{{name}}} must be between 0 and 1 (the share removed), not {value}")
        if self.width_metric == "kl" and self.ffn_ratio is not None:
            raise QpruneError("{width_metric} kl ranks KV groups only (MLP channels are too many to replay one by one)")


def width_count(ratio: float | None, size: int, unit: str) -> int:
    """How many of a layer's `size` MLP channels (`unit` "ffn") or KV groups ("kv_heads") the share
    `ratio` removes: rounded, at least one removed and one kept (0 for no ratio)."""
    if not ratio:
        return 0
    count = round(ratio * size)
    if count < 1 or count >= size:
        what, option = ("MLP channels", "ffn_ratio") if unit == "ffn" else ("KV groups", "kv_head_ratio")
        raise QpruneError(
            f"{{{option}}} {ratio} removes {count} of {size} {what} per layer: give a share that removes at least "
            "one and keeps at least one"
        )
    return count
