"""`qprune prune --auto`: search for a plan on calibration data, then write the pruned checkpoint.

    pruned, search = auto_prune("Qwen/Qwen3-0.6B", "qwen3-pruned", DataSpec(samples=64), Target(blocks=8))

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
from qprune.measure.search import METHODS, Constraints, Target, search
from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE, prune
from qprune.progress import as_progress

if TYPE_CHECKING:
    from qprune.measure.search import SearchResult
    from qprune.ops.prune import PruneResult
    from qprune.progress import Progress


def auto_prune(
    source: str | Path | Checkpoint,
    out,
    spec,
    target: Target,
    *,
    method: str = "greedy",
    metric: str | None = None,
    constraints: Constraints = Constraints(),
    dtype: str = "auto",
    max_shard_size: int | None = None,
    force: bool = False,
    progress: bool | Progress = True,
    max_memory: int | None = None,
) -> tuple[PruneResult, SearchResult]:
    """Choose a plan on `spec`'s calibration data, then write the pruned checkpoint with the search
    report in it. With `max_memory` (bytes), a model that does not fit is searched layer by layer within
    it (the same plan). Returns (PruneResult, SearchResult)."""
    from qprune.measure.data import load_for_measurement

    check_output(Path(out).absolute(), force, sources=[source])  # before minutes of search
    if method not in METHODS:
        raise QpruneError(f"{{method}} {method}: choose {' or '.join(METHODS)}")
    progress = as_progress(progress)
    checkpoint = open_checkpoint(source)  # once: every step below takes it, nothing is read twice
    model, batch = load_for_measurement(checkpoint, spec, dtype, progress, max_memory)
    config = model.config.to_dict()
    if not family_of(config).attention_prunable(config) and constraints.only != "mlp":
        raise QpruneError(SLIDING_WINDOW_ATTENTION + ": restrict {only} to mlp")
    unit = "layers" if constraints.whole_layers else "blocks"
    goal = f"{target.blocks} {unit}" if target.blocks else f"at most {target.param_ratio:.0%} of decoder parameters"
    progress.note(f"searching ({method}): {goal}")
    result = search(model, batch, target, method, metric, constraints, progress=progress)
    del model  # the weights are copied from the files, not from memory
    pruned = prune(
        checkpoint,
        Path(out),
        result.plan,
        max_shard_size=max_shard_size or DEFAULT_MAX_SHARD_SIZE,
        force=force,
        search=result.report(checkpoint.name, spec.describe(), dtype),
    )
    return pruned, result
