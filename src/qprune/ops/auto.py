"""`qprune prune --auto`: search for a plan on calibration data, then write the pruned checkpoint;
`prune --auto --expert-ratio`: score a Qwen3-MoE's experts, then write the cut;
`prune --auto --ffn-ratio / --kv-head-ratio`: score a dense Qwen3's width, then write the uniform cut.

    pruned, search = auto_prune("Qwen/Qwen3-0.6B", "qwen3-pruned", DataSpec(samples=64), Target(blocks=8))
    pruned, saliency = auto_prune("Qwen/Qwen3-30B-A3B", "a3b-cut", DataSpec(), ExpertTarget(expert_ratio=0.25))
    pruned, importance = auto_prune("Qwen/Qwen3-0.6B", "0.6b-narrow", DataSpec(), WidthTarget(ffn_ratio=0.25))

The search (`measure/search.py`) only measures: it returns the plan and its report. Writing is this
module's: `prune` copies the checkpoint with the plan applied, and records the report
(`qprune_search.json` and the card's section).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qprune.arch import SLIDING_WINDOW_ATTENTION, family_of
from qprune.errors import QpruneError
from qprune.io.output import check_output
from qprune.io.source import Checkpoint, open_checkpoint
from qprune.measure.goal import ExpertTarget, WidthTarget
from qprune.measure.patch import NOT_PATCHABLE, PatchSettings
from qprune.measure.search import METHODS, Constraints, Target, search
from qprune.ops.patch import fit
from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE, prune
from qprune.plan import Plan
from qprune.progress import as_progress

if TYPE_CHECKING:
    from qprune.measure.experts import ExpertSaliency
    from qprune.measure.search import SearchResult
    from qprune.ops.prune import PruneResult
    from qprune.progress import Progress


def auto_prune(
    source: str | Path | Checkpoint,
    out,
    spec,
    target: Target | ExpertTarget | WidthTarget,
    *,
    method: str = "greedy",
    metric: str | None = None,
    constraints: Constraints = Constraints(),
    dtype: str = "auto",
    max_shard_size: int | None = None,
    force: bool = False,
    progress: bool | Progress = True,
    max_memory: int | None = None,
    patch: PatchSettings | None = None,
) -> tuple[PruneResult, SearchResult | ExpertSaliency]:
    """Choose what to remove on `spec`'s calibration data, then write the pruned checkpoint.

    - A `Target` (blocks): search a plan (`method`, `metric`, `constraints`) and record the search
      report in the output. With `max_memory` (bytes), a model that does not fit is searched layer by
      layer within it (the same plan). Returns (PruneResult, SearchResult).
    - An `ExpertTarget` (a Qwen3-MoE's experts): score every expert (`measure.experts`) and write the
      cut (uniform: a stock Qwen3-MoE). Returns (PruneResult, ExpertSaliency).
    - `patch`: blocks only: fold a correction for the chosen blocks into kept weights (`ops.patch`),
      fitted on the same model and data."""
    from qprune.measure.data import load_for_measurement

    check_output(Path(out).absolute(), force, sources=[source])  # before minutes of search
    experts = isinstance(target, ExpertTarget)
    if patch is not None and not isinstance(target, Target):  # before any search
        raise QpruneError(NOT_PATCHABLE)
    if not experts and method not in METHODS:
        raise QpruneError(f"{{method}} {method}: choose {' or '.join(METHODS)}")
    progress = as_progress(progress)
    checkpoint = open_checkpoint(source)  # once: every step below takes it, nothing is read twice
    if experts:
        _check_expert_target(checkpoint, target)
    if isinstance(target, WidthTarget):
        _check_width_target(checkpoint, target)
    model, batch = load_for_measurement(checkpoint, spec, dtype, progress, max_memory)
    if isinstance(target, WidthTarget) and target.joint:
        from qprune.measure.engine import engine_of
        from qprune.ops.depth_width import depth_and_width

        if not engine_of(model).whole:
            raise QpruneError("{width_allocation} joint searches in memory: drop {max_memory}")
        size = max_shard_size or DEFAULT_MAX_SHARD_SIZE
        return depth_and_width(
            checkpoint,
            Path(out),
            model,
            batch,
            target,
            constraints,
            progress=progress,
            force=force,
            max_shard_size=size,
        )
    if isinstance(target, WidthTarget):
        found, report = _score_width(model, batch, target, progress), None
        ratios = (target.ffn_ratio or 0.0, target.kv_head_ratio or 0.0)
        plan = found.plan(*ratios, target.width_metric, target.width_allocation)
    elif experts:
        found, report = _score_experts(model, batch, target, progress), None
        if target.joint:
            plan = _joint(model, batch, target, found, checkpoint, constraints, progress)
        else:
            plan = found.plan(target.expert_ratio, target.expert_metric, target.expert_allocation)
    else:
        found = _search_blocks(model, batch, target, method, metric, constraints, progress)
        plan, report = found.plan, found.report(checkpoint.name, spec.describe(), dtype)
    patches = fit(model, batch, plan, patch, spec, progress) if patch is not None else None
    del model  # the weights are copied from the files, not from memory
    size = max_shard_size or DEFAULT_MAX_SHARD_SIZE
    result = prune(checkpoint, Path(out), plan, max_shard_size=size, force=force, search=report, patches=patches)
    return result, found


def _search_blocks(model, batch, target: Target, method, metric, constraints, progress) -> SearchResult:
    config = model.config.to_dict()
    if not family_of(config).attention_prunable(config) and constraints.only != "mlp":
        raise QpruneError(SLIDING_WINDOW_ATTENTION + ": restrict {only} to mlp")
    unit = "layers" if constraints.whole_layers else "blocks"
    goal = f"{target.blocks} {unit}" if target.blocks else f"at most {target.param_ratio:.0%} of decoder parameters"
    progress.note(f"searching ({method}): {goal}")
    return search(model, batch, target, method, metric, constraints, progress=progress)


def _joint(model, batch, target: ExpertTarget, saliency, checkpoint: Checkpoint, constraints, progress) -> Plan:
    """Blocks and experts against one budget (`measure.joint`); `constraints` keep blocks out of reach."""
    from qprune.measure.joint import joint_plan
    from qprune.measure.scan import scan_blocks

    progress.note(f"scoring every block to weigh it against the experts (at most {target.param_ratio:.0%})")
    scan = scan_blocks(model, batch, progress=progress)
    layers = checkpoint.config["num_hidden_layers"]
    block_kl = {b: s["kl"] for b, s in scan.scores.items() if "kl" in s and constraints.allows(b, layers)}
    return joint_plan(checkpoint.config, block_kl, saliency.scores["kl"], target.param_ratio, checkpoint.plan)


def _check_width_target(checkpoint: Checkpoint, target: WidthTarget) -> None:
    """Refuse before any data is read: not a dense Qwen3, or a share that removes none or all."""
    from qprune.arch.qwen3 import QWEN3
    from qprune.measure.goal import width_count

    config = checkpoint.config
    if family_of(config) is not QWEN3:
        raise QpruneError(f"{{ffn_ratio}} / {{kv_head_ratio}}: {checkpoint.name} is not a dense Qwen3")
    if target.joint:
        return
    heads = QWEN3.config_field(config, "num_attention_heads")
    width_count(target.ffn_ratio, QWEN3.config_field(config, "intermediate_size"), "ffn")
    width_count(target.kv_head_ratio, QWEN3.config_field(config, "num_key_value_heads") or heads, "kv_heads")


def _score_width(model, batch, target: WidthTarget, progress):
    from qprune.measure.width import width_importance

    progress.note(f"scoring every MLP channel and KV group ({target.width_metric})")
    return width_importance(model, batch, progress, kl=target.width_metric == "kl")


def _check_expert_target(checkpoint: Checkpoint, target: ExpertTarget) -> None:
    from qprune.arch.qwen3_moe import QWEN3_MOE

    if target.expert_ratio is None and not target.joint:
        raise QpruneError("give {expert_ratio}: the share of every MoE layer's experts to remove")
    family = family_of(checkpoint.config)
    if family is not QWEN3_MOE:
        raise QpruneError(f"{{expert_ratio}}: {checkpoint.name} is a dense {family.title}; experts are Qwen3-MoE's")


def _score_experts(model, batch, target: ExpertTarget, progress) -> ExpertSaliency:
    from qprune.measure.experts import expert_saliency

    if target.joint:
        progress.note("scoring every expert by the KL when masked alone")
        return expert_saliency(model, batch, progress, kl=True)
    share = f"{target.expert_ratio:.0%}"
    where = "of each MoE layer's" if target.expert_allocation == "uniform" else "of all, counts free per layer"
    progress.note(f"scoring experts ({target.expert_metric}) to remove {share} {where}")
    return expert_saliency(model, batch, progress, kl=target.expert_metric == "kl")
