"""The search report (how `prune --auto` chose its plan), the model card's section on it, and what
`qprune info` says about a checkpoint.

    report = SearchReport(model=..., data=..., ..., steps=(SearchStep(20, "attn", 0.012), ...))
    (out / "qprune_search.json").write_text(json.dumps(report.to_dict()))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qprune.io.source import open_checkpoint
from qprune.plan import Plan


@dataclass(frozen=True)
class SearchStep:
    """One block (or whole layer) the search removed, in order."""

    layer: int
    block: str  # "attn", "mlp", or "layer" for both
    score: float  # by the search's metric, when the block was chosen
    # Greedy: the calibration figures of the model once this block is gone (one-shot has none).
    nll: float | None = None
    perplexity: float | None = None
    kl: float | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class SearchReport:
    """How a plan was chosen: `qprune_search.json` in the pruned checkpoint, and its card's section."""

    model: str  # the source, as given
    data: dict  # the calibration data: source, samples, seq_len, seed
    dtype: str
    method: str  # "greedy" or "oneshot"
    metric: str
    target: dict  # {"blocks": n} or {"param_ratio": r}
    constraints: dict
    plan: Plan  # what the search chose (not what the model had pruned already)
    dense: dict  # calibration nll and perplexity before the search
    steps: tuple[SearchStep, ...]
    params_removed_share: float  # of all decoder-layer parameters, counting blocks pruned before
    timings_s: dict

    def to_dict(self) -> dict:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return fields | {"plan": self.plan.to_dict(), "steps": [step.to_dict() for step in self.steps]}


def search_section(search: SearchReport) -> str:
    """How an automatic plan was chosen: method, data, and the calibration figures after each step."""
    data = search.data
    lines = [
        "## How the blocks were chosen",
        "",
        f"`qprune prune --auto`, method **{search.method}** by **{search.metric}**, target "
        f"{', '.join(f'{k} {v}' for k, v in search.target.items())}, on {data.get('samples')} x "
        f"{data.get('seq_len')} tokens of `{data.get('source')}` (seed {data.get('seed')}). "
        f"Calibration perplexity before: {search.dense['perplexity']:.3f}. Full trace: `qprune_search.json`.",
        "",
        f"| step | layer | block | {search.metric} score | calibration perplexity after |",
        "|---|---|---|---|---|",
    ]
    for k, step in enumerate(search.steps, 1):
        after = f"{step.perplexity:.3f}" if step.perplexity is not None else "—"
        lines.append(f"| {k} | {step.layer} | {step.block} | {step.score:.4g} | {after} |")
    return "\n".join(lines) + "\n"


def describe(path: str) -> dict:
    """A checkpoint's plan and sizes, as `qprune info --json` prints them."""
    checkpoint = open_checkpoint(path)
    config, plan, tensors = checkpoint.config, checkpoint.plan, checkpoint.tensors.values()
    return {
        "path": str(checkpoint.dir),
        "model_type": config["model_type"],
        "base_model": config.get("qprune_base_model"),
        "num_layers": config["num_hidden_layers"],
        "attn": list(plan.attn),
        "mlp": list(plan.mlp),
        "blocks_pruned": plan.num_blocks,
        "parameters": sum(t.numel for t in tensors),
        "bytes": sum(t.nbytes for t in tensors),
        "dtypes": sorted({t.dtype for t in tensors}),
    }
