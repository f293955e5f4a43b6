"""Choosing which blocks to prune: the search behind `qprune prune --auto`, which writes nothing.

    target = Target(blocks=4)                    # or Target(param_ratio=0.25)
    result = greedy_search(model, batch, target, metric="nll")
    result.plan                                  # Plan(attn=(...), mlp=(...))

- greedy (BlockPruner / SLEB style): remove one block at a time, each step the one whose removal raises
  the calibration NLL (or the KL from the dense model) least given what is already removed. Each
  candidate replays only the layers after it (`ablation.BlockRunner`), and the selections equal those of
  a full forward per candidate (`naive=True`, kept as the reference the tests and benchmarks use).
- oneshot (ShortGPT / LLM-Drop style): score every block once (`scan`), remove the N least important.

A target is a number of blocks, or a share of the decoder layers' parameters that may go: blocks are
removed while the removed share stays within it (attention and MLP blocks differ in size).
`Constraints` keep blocks out of reach: `only` one kind, the first or last K layers. With
`whole_layers` a candidate is a layer, both its blocks at once (`(layer, "layer")`, counted as one
toward `blocks`): such plans export to a stock Qwen3 at no cost (`qprune export`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from qprune.cost import Shape, block_parameters
from qprune.errors import QpruneError, warn
from qprune.measure.ablation import Block, FullForwardRunner, all_blocks, expand
from qprune.measure.engine import engine_of
from qprune.measure.goal import Constraints, Target
from qprune.measure.report import SearchReport, SearchStep
from qprune.plan import Plan

METHODS = ("greedy", "oneshot")
SEARCH_METRICS = ("nll", "kl")
ONESHOT_METRICS = ("cosine", "update", "nll", "kl")


class _Budget:
    """Which candidates a target still allows, given what is removed."""

    def __init__(self, target: Target, config, already: set[Block]) -> None:
        self.target = target
        shape = Shape.from_config(config)
        self.sizes = {(i, kind): size for i in range(shape.layers) for kind, size in block_parameters(shape, i).items()}
        self.total = sum(self.sizes.values())
        self.removed = set(already)
        self.removed_params = sum(self.sizes[block] for block in already)
        if target.param_ratio is not None and self.removed_params / self.total >= target.param_ratio:
            raise QpruneError(
                f"the model already lacks {self.removed_params / self.total:.1%} of its decoder parameters, "
                f"at least the {{param_ratio}} {target.param_ratio}"
            )
        self.chosen = 0

    def size(self, candidate: Block) -> int:
        """Parameters that removing `candidate` takes away (a layer's blocks not removed already)."""
        return sum(self.sizes[block] for block in expand(candidate) - self.removed)

    def fits(self, block: Block) -> bool:
        if self.target.blocks is not None:
            return self.chosen < self.target.blocks
        return self.removed_params + self.size(block) <= self.target.param_ratio * self.total

    def check_any_fits(self, candidates: list[Block]) -> None:
        if not any(self.fits(b) for b in candidates):
            smallest = min(self.size(b) for b in candidates)
            raise QpruneError(
                f"{{param_ratio}} {self.target.param_ratio}: no block fits; the smallest that may be removed holds "
                f"{smallest / self.total:.1%} of the decoder parameters"
            )

    def take(self, block: Block) -> None:
        self.chosen += 1
        self.removed_params += self.size(block)
        self.removed |= expand(block)

    @property
    def removed_share(self) -> float:
        return self.removed_params / self.total


@dataclass
class SearchResult:
    method: str
    metric: str
    target: Target
    constraints: Constraints
    plan: Plan  # the blocks this search chose (not those the model had pruned already)
    dense: dict  # calibration nll / perplexity (and kl 0) of the model before the search
    steps: list[SearchStep]  # per chosen block: its score and, for greedy, the calibration figures after it
    params_removed_share: float  # of all decoder-layer parameters, counting blocks pruned before
    timings: dict[str, float] = field(default_factory=dict)

    def report(self, model: str, data: dict, dtype: str) -> SearchReport:
        """What the pruned checkpoint records about this search, and the data it ran on."""
        return SearchReport(
            model=model,
            data=data,
            dtype=dtype,
            method=self.method,
            metric=self.metric,
            target=self.target.describe(),
            constraints=vars(self.constraints),
            plan=self.plan,
            dense=self.dense,
            steps=tuple(self.steps),
            params_removed_share=self.params_removed_share,
            timings_s={name: round(seconds, 3) for name, seconds in self.timings.items()},
        )

    def table(self) -> str:
        lines = [f"{self.method} search by {self.metric}: calibration perplexity {self.dense['perplexity']:.3f} before"]
        for k, step in enumerate(self.steps, 1):
            shown = ("perplexity", "kl") if step.perplexity is not None else ("score",)  # greedy: the model after it
            values = step.to_dict()
            figures = "   ".join(f"{key} {values[key]:.4f}" for key in shown if key in values)
            kind = "both" if step.block == "layer" else step.block
            lines.append(f"{k:>3}. layer {step.layer:>3} {kind:<4}  {figures}")
        lines.append(f"decoder parameters removed: {self.params_removed_share:.1%}")
        return "\n".join(lines)

    text = table  # what `cli.options.show` prints


def _candidates(model, removed: set[Block], constraints: Constraints) -> list[Block]:
    n = len(model.model.layers)
    if constraints.whole_layers:
        every = [(layer, "layer") for layer in range(n)]
        blocks = [b for b in every if not expand(b) <= removed and constraints.allows(b, n)]
    else:
        blocks = [b for b in all_blocks(n) if b not in removed and constraints.allows(b, n)]
    if not blocks:
        raise QpruneError(f"no block may be removed{_out_of_reach(constraints, removed)}")
    return blocks


def _out_of_reach(constraints: Constraints, removed: set[Block]) -> str:
    """Why no more candidates exist, for a message: " under {keep_first} 2, {only} mlp" or " in this model"."""
    why = constraints.describe(already_pruned=bool(removed))
    return f" under {why}" if why else " in this model"


def _check_reachable(target: Target, candidates: list[Block], constraints: Constraints, removed: set[Block]) -> None:
    if target.blocks is not None and target.blocks > len(candidates):
        unit = "layers" if constraints.whole_layers else "blocks"
        where = _out_of_reach(constraints, removed)
        advice = "lower {blocks}" + (" or loosen the constraints" if where.startswith(" under") else "")
        raise QpruneError(f"{{blocks}} {target.blocks}: only {len(candidates)} {unit} may be removed{where}; {advice}")


def _warn_if_short(target: Target, budget: _Budget, exhausted: bool, constraints: Constraints, removed) -> None:
    """A --param-ratio the search stopped short of because every allowed candidate was taken (not just
    because the next one would overshoot): say so, or the plan reads as if the target were met."""
    if target.param_ratio is None or not exhausted:
        return
    unit = "layers" if constraints.whole_layers else "blocks"
    warn(
        f"{{param_ratio}} {target.param_ratio}: removed {budget.removed_share:.1%} of the decoder parameters; "
        f"the target could not be met: no more {unit} may be removed{_out_of_reach(constraints, removed)}"
    )


def greedy_search(
    model,
    batch,
    target: Target,
    metric: str = "nll",
    constraints: Constraints = Constraints(),
    *,
    naive: bool = False,
    progress=None,
) -> SearchResult:
    """Remove blocks one at a time, each step the one that raises `metric` least (ties: forward order)."""
    if metric not in SEARCH_METRICS:
        raise QpruneError(f"{{metric}} {metric}: the greedy search uses {' or '.join(SEARCH_METRICS)}")
    start = time.perf_counter()
    kl = metric == "kl"
    engine = engine_of(model)
    structure = engine.skeleton
    with engine.runner(batch, kl=kl, progress=progress, naive=naive) as runner:
        initial = set(runner.removed)
        candidates = _candidates(structure, runner.removed, constraints)
        _check_reachable(target, candidates, constraints, initial)
        budget = _Budget(target, structure.config, runner.removed)
        budget.check_any_fits(candidates)
        dense = _figures(runner.dense_stats.mean_nll, 0.0 if kl else None)
        steps: list[SearchStep] = []
        while True:
            eligible = [b for b in candidates if budget.fits(b)]
            if not eligible:
                break
            step = f"greedy step {len(steps) + 1}" + (f" of {target.blocks}" if target.blocks else "")
            stats = runner.evaluate(eligible, progress=progress, description=step)
            best = min(eligible, key=lambda b: stats[b].metric(metric))
            runner.remove(best)
            budget.take(best)
            candidates.remove(best)
            chosen = stats[best]
            figures = _figures(chosen.mean_nll, chosen.mean_kl if kl else None)
            steps.append(SearchStep(best[0], best[1], chosen.metric(metric), **figures))
        chosen_plan = _plan(runner.removed - _initial(structure))
        _warn_if_short(target, budget, not candidates, constraints, initial)
    return SearchResult(
        "greedy",
        metric,
        target,
        constraints,
        chosen_plan,
        dense,
        steps,
        budget.removed_share,
        {"search": time.perf_counter() - start},
    )


def oneshot_search(
    model, batch, target: Target, metric: str = "cosine", constraints: Constraints = Constraints(), *, progress=None
) -> SearchResult:
    """Score every block once (a scan) and remove the least important that the target allows."""
    from qprune.measure.scan import scan_blocks

    if metric not in ONESHOT_METRICS:
        raise QpruneError(f"{{metric}} {metric}: the one-shot method ranks by {', '.join(ONESHOT_METRICS)}")
    start = time.perf_counter()
    scan = scan_blocks(
        model, batch, progress=progress, ablation=metric in SEARCH_METRICS, whole_layers=constraints.whole_layers
    )
    structure = engine_of(model).skeleton
    removed = _initial(structure)
    candidates = _candidates(structure, removed, constraints)
    _check_reachable(target, candidates, constraints, removed)
    budget = _Budget(target, structure.config, removed)
    budget.check_any_fits(candidates)
    importance = scan.importance(metric, whole_layers=constraints.whole_layers)
    steps = []
    for block in sorted(candidates, key=lambda b: importance[b]):
        if budget.fits(block):
            budget.take(block)
            steps.append(SearchStep(block[0], block[1], importance[block]))
    plan = _plan({(s.layer, s.block) for s in steps})
    _warn_if_short(target, budget, len(steps) == len(candidates), constraints, removed)
    return SearchResult(
        "oneshot",
        metric,
        target,
        constraints,
        plan,
        _figures(scan.dense.mean_nll, 0.0),
        steps,
        budget.removed_share,
        {"search": time.perf_counter() - start},
    )


def search(
    model,
    batch,
    target: Target,
    method: str = "greedy",
    metric: str | None = None,
    constraints: Constraints = Constraints(),
    *,
    progress=None,
) -> SearchResult:
    if method not in METHODS:
        raise QpruneError(f"{{method}} {method}: choose {' or '.join(METHODS)}")
    if method == "greedy":
        return greedy_search(model, batch, target, metric or "nll", constraints, progress=progress)
    return oneshot_search(model, batch, target, metric or "cosine", constraints, progress=progress)


def _initial(model) -> set[Block]:
    """Blocks the loaded checkpoint prunes already (their weights are absent)."""
    config = model.config
    return {(i, "attn") for i in config.pruned_attn_layers} | {(i, "mlp") for i in config.pruned_mlp_layers}


def _plan(candidates: set[Block]) -> Plan:
    blocks = set().union(*map(expand, candidates))
    return Plan(attn=tuple(i for i, k in blocks if k == "attn"), mlp=tuple(i for i, k in blocks if k == "mlp"))


def _figures(nll: float, kl: float | None) -> dict:
    figures = {"nll": nll, "perplexity": math.exp(nll)}
    return figures if kl is None else figures | {"kl": kl}


def calibration_nll(model, batch, plan: Plan) -> float:
    """Mean next-token NLL on `batch` of the model with `plan`'s blocks skipped as well."""
    blocks = {(i, "attn") for i in plan.attn} | {(i, "mlp") for i in plan.mlp}
    return FullForwardRunner(model, batch).stats(_initial(model) | blocks).mean_nll
