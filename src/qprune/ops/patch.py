"""`prune --patch` and `qprune.patch`: prune blocks and fold, for each run of them, a least-squares
correction into the output projection of the kept block before it (`measure.patch` fits it on
calibration data; `ops.prune` writes the checkpoint with those tensors changed).

    result = patch("Qwen/Qwen3-0.6B", "out", Plan(mlp=(20, 21)), PatchSettings(), data=DataSpec(samples=64))
"""

from __future__ import annotations

from pathlib import Path

from qprune.io.output import check_output
from qprune.io.source import Checkpoint, open_checkpoint
from qprune.measure.data import DataSpec, load_for_measurement
from qprune.measure.patch import Patches, PatchSettings, check_patchable, fit_patches
from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE, PruneResult, prune
from qprune.plan import Plan
from qprune.progress import Progress, as_progress


def patch(
    source: str | Path | Checkpoint,
    out: str | Path,
    plan: Plan,
    settings: PatchSettings = PatchSettings(),
    *,
    data: DataSpec = DataSpec(),
    dtype: str = "auto",
    max_memory: int | None = None,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    progress: bool | Progress = False,
) -> PruneResult:
    """Prune `plan`'s blocks out of `source` into `out`, patched (see the module docstring). The source
    model is read for the fit (in `dtype`; layer by layer within `max_memory`), never changed."""
    out = Path(out).absolute()
    check_output(out, force, sources=[source])  # before minutes of fitting
    checkpoint = open_checkpoint(source)
    plan.validate(checkpoint.config["num_hidden_layers"])
    check_patchable(plan)
    progress = as_progress(progress)
    model, batch = load_for_measurement(checkpoint, data, dtype, progress, max_memory)
    patches = fit(model, batch, plan, settings, data, progress)
    del model
    return prune(checkpoint, out, plan, max_shard_size=max_shard_size, force=force, patches=patches)


def fit(model, batch, plan: Plan, settings: PatchSettings, data: DataSpec, progress: Progress) -> Patches:
    progress.note(f"fitting a correction for each run of pruned blocks ({settings.patch_map}, {settings.patch_target})")
    patches = fit_patches(model, batch, plan, settings, progress)
    patches.data = data.describe()
    progress.note(patches.text())
    return patches
