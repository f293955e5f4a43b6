"""What a search produces besides its plan: the typed report of how the plan was chosen.

    report = SearchReport(model=..., data=..., ..., steps=(SearchStep(20, "attn", 0.012), ...))
    report.to_dict()            # what `prune` writes as qprune_search.json in the checkpoint

Measuring writes nothing: the search returns this report, and `ops` writes it (the checkpoint's
`qprune_search.json` and its card's section, `ops/report.py`). No torch here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
