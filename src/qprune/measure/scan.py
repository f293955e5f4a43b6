"""`qprune scan`: how much every attention and MLP block matters (the model's "fMRI").

    result = scan_blocks(model, batch)          # model: PrunedQwen3ForCausalLM, batch: [samples, seq_len]
    print(result.table())

Per block, four measures, each reported so that lower means "safer to remove":
- one-pass, from a single forward with hooks: the cosine similarity between the block's input and its
  output (input + update), as ShortGPT and LLM-Drop use it (reported as is: higher = less important),
  and the update's norm relative to its input's;
- ablation, removing that block alone: the rise in mean next-token NLL, and the KL divergence of the
  next-token distribution from the unablated model's. Removal reuses the hidden states before the
  block (see `ablation.py`), so block b costs only the layers after it.

With `whole_layers`, every layer is scored the same four ways as one unit (both blocks removed; the
cosine between the layer's input and output is ShortGPT's Block Influence): the ranking for plans that
export to a stock Qwen3 at no cost.

`run_scan` adds loading, data, and the outputs: a JSON report, a heatmap PNG (with matplotlib), and the
table in the terminal.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qprune.io.output import atomic_output, check_output
from qprune.io.source import Checkpoint
from qprune.measure.ablation import KINDS, Block, TokenStats, all_blocks, micro_batches, token_stats
from qprune.measure.data import DataSpec
from qprune.measure.engine import engine_of
from qprune.measure.experts import ExpertSaliency, expert_saliency, write_expert_heatmap

# Each measure's importance: the lower, the safer to remove. Cosine similarity is turned around.
METRICS = {
    "cosine": ("cosine_similarity", lambda value: 1.0 - value),
    "update": ("relative_update_norm", lambda value: value),
    "nll": ("delta_nll", lambda value: value),
    "kl": ("kl", lambda value: value),
}


class _OnePass:
    """Per-token cosine(input, input + update) and |update| / |input| of every block, summed in float32,
    from hooks on one forward. Only the current layer's inputs are held, never the whole stream."""

    def __init__(self, model) -> None:
        self.sums: dict[Block, list[float]] = {}
        self._inputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for i, layer in enumerate(model.model.layers):
            self._handles += [
                layer.register_forward_pre_hook(self._keep_input("attn"), with_kwargs=True),
                layer.post_attention_layernorm.register_forward_pre_hook(self._keep_input("mlp")),
                layer.self_attn.register_forward_hook(self._measure((i, "attn"))),
                layer.mlp.register_forward_hook(self._measure((i, "mlp"))),
                layer.register_forward_hook(self._measure_layer(i, layer)),
            ]

    def _measure_layer(self, i: int, layer):
        def hook(module, args, output):
            if not (layer.prune_self_attn and layer.prune_mlp):  # a layer with nothing left is no candidate
                output = output[0] if isinstance(output, tuple) else output
                self.add((i, "layer"), self._inputs["attn"], output - self._inputs["attn"])

        return hook

    def _keep_input(self, kind: str):
        def hook(module, args, kwargs=None):
            self._inputs[kind] = args[0] if args else kwargs["hidden_states"]

        return hook

    def _measure(self, block: Block):
        def hook(module, args, output):
            self.add(block, self._inputs[block[1]], output[0] if isinstance(output, tuple) else output)

        return hook

    def add(self, block: Block, block_input: torch.Tensor, update: torch.Tensor) -> None:
        # From three per-token float32 reductions (|x|², |u|², x·u), which is several times faster than
        # F.cosine_similarity on the materialised output x + u.
        hidden = block_input.shape[-1]
        x = block_input.reshape(-1, 1, hidden).float()
        u = update.reshape(-1, hidden, 1).to(x.device).float()
        xx = torch.linalg.vector_norm(x, dim=-1).square().view(-1).clamp_min(1e-30)
        uu = torch.linalg.vector_norm(u, dim=1).square().view(-1)
        xu = torch.bmm(x, u).view(-1)
        yy = (xx + 2 * xu + uu).clamp_min(1e-30)  # |x + u|²
        sums = self.sums.setdefault(block, [0.0, 0.0, 0])
        sums[0] += float(((xx + xu) / (xx * yy).sqrt()).sum())
        sums[1] += float((uu / xx).sqrt().sum())
        sums[2] += xx.shape[0]

    def result(self, block: Block) -> tuple[float, float]:
        cosine, ratio, tokens = self.sums[block]
        return cosine / tokens, ratio / tokens

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def one_pass_metrics(
    model, batch: torch.Tensor, progress=None, *, stats: bool = True
) -> tuple[dict[Block, tuple[float, float]], TokenStats]:
    """(cosine similarity, relative update norm) of every block the model runs, and (with `stats`) the
    calibration NLL, from a single forward per micro-batch (a loaded model or a `StreamedModel`)."""
    engine = engine_of(model)
    metrics = _OnePass(engine.skeleton)
    try:
        dense = _forward_stats(engine, batch, progress, stats)
    finally:
        metrics.close()
    return {block: metrics.result(block) for block in metrics.sums}, dense


@torch.inference_mode()
def _forward_stats(engine, batch: torch.Tensor, progress, stats: bool) -> TokenStats:
    """The calibration stats of one forward per micro-batch (nothing summed without `stats`)."""
    model = engine.skeleton
    batches = micro_batches(batch, model.config.vocab_size)
    dense = TokenStats()
    for k, normed in engine.final_states(batches, progress, "one pass"):
        if stats:
            dense += token_stats(model, normed, batches[k])
    return dense


@dataclass
class ScanResult:
    num_layers: int
    dense: TokenStats  # the model as loaded (blocks it already prunes skipped)
    scores: dict[Block, dict[str, float]]  # per block: cosine_similarity, relative_update_norm, delta_nll, kl
    pruned: list[Block]  # blocks the model already prunes: not scored
    timings: dict[str, float] = field(default_factory=dict)

    def importance(self, metric: str, *, whole_layers: bool = False) -> dict[Block, float]:
        """Per block (or per `(layer, "layer")` with `whole_layers`): the lower, the safer to remove."""
        key, turn = METRICS[metric]
        return {
            unit: turn(scores[key])
            for unit, scores in self.scores.items()
            if key in scores and (unit[1] == "layer") == whole_layers
        }

    def to_dict(self) -> dict:
        blocks = []
        for block in all_blocks(self.num_layers):
            entry = {"layer": block[0], "block": block[1], "pruned": block in self.pruned}
            if block in self.scores:
                entry.update(self.scores[block])
                if "delta_nll" in entry:
                    entry["perplexity"] = math.exp(self.dense.mean_nll + entry["delta_nll"])
            blocks.append(entry)
        layers = [
            {"layer": layer, **scores}
            | ({"perplexity": math.exp(self.dense.mean_nll + scores["delta_nll"])} if "delta_nll" in scores else {})
            for (layer, kind), scores in sorted(self.scores.items())
            if kind == "layer"
        ]
        return {
            "num_layers": self.num_layers,
            "dense": {
                "nll": self.dense.mean_nll,
                "perplexity": math.exp(self.dense.mean_nll),
                "tokens": self.dense.tokens,
            },
            "blocks": blocks,
            **({"layers": layers} if layers else {}),
            "timings_s": {name: round(seconds, 3) for name, seconds in self.timings.items()},
        }

    def table(self) -> str:
        lines = [f"dense calibration perplexity {math.exp(self.dense.mean_nll):.3f}   (rank 1 = least important)"]
        lines += self._rows(all_blocks(self.num_layers), whole_layers=False)
        whole = [(layer, "layer") for layer in range(self.num_layers)]
        if any(unit in self.scores for unit in whole):
            lines += ["", "whole layers (both blocks removed; ranked among layers):"]
            lines += self._rows(whole, whole_layers=True)
        return "\n".join(lines)

    def _rows(self, units: list[Block], whole_layers: bool) -> list[str]:
        ranks = {metric: _ranks(self.importance(metric, whole_layers=whole_layers)) for metric in METRICS}
        lines = [
            f"{'layer':>5} {'block':<5} {'cosine':>8} {'update':>8} {'dNLL':>9} {'KL':>9} {'ppl':>10}"
            "   ranks cos/upd/nll/kl"
        ]
        for unit in units:
            kind = "both" if unit[1] == "layer" else unit[1]
            if unit not in self.scores or "delta_nll" not in self.scores[unit]:
                lines.append(f"{unit[0]:>5} {kind:<5} {'(pruned)':>8}")
                continue
            s = self.scores[unit]
            ppl = math.exp(self.dense.mean_nll + s["delta_nll"])
            rank = "/".join(str(ranks[m][unit]) for m in METRICS)
            lines.append(
                f"{unit[0]:>5} {kind:<5} {s['cosine_similarity']:>8.4f} {s['relative_update_norm']:>8.4f} "
                f"{s['delta_nll']:>9.4f} {s['kl']:>9.4f} {ppl:>10.3f}   {rank}"
            )
        return lines


def _ranks(importance: dict[Block, float]) -> dict[Block, int]:
    return {block: rank for rank, block in enumerate(sorted(importance, key=importance.get), 1)}


def scan_blocks(
    model, batch: torch.Tensor, progress=None, *, ablation: bool = True, whole_layers: bool = False
) -> ScanResult:
    """Score every block the model still has on the calibration batch (see the module docstring), and
    with `whole_layers` every layer it still has whole. Without `ablation`, only the one-pass measures
    (cosine, update): a single forward. `model` is a loaded model or a `StreamedModel` (layer by layer
    within its `max_memory`; the same scores)."""
    engine = engine_of(model)
    start = time.perf_counter()
    runner = None
    try:  # a layer-by-layer runner holds states on disk: closed however this ends
        if ablation:
            # The one-pass hooks ride on the runner's first pass over the layers.
            metrics = _OnePass(engine.skeleton)
            try:
                runner = engine.runner(batch, kl=True, progress=progress)
            finally:
                metrics.close()
            one_pass, dense = {block: metrics.result(block) for block in metrics.sums}, runner.dense_stats
        else:
            one_pass, dense = one_pass_metrics(model, batch, progress)
        first_pass = time.perf_counter() - start
        scores = {
            block: {"cosine_similarity": cosine, "relative_update_norm": ratio}
            for block, (cosine, ratio) in one_pass.items()
            if whole_layers or block[1] != "layer"
        }
        if ablation:
            layers = [unit for unit in scores if unit[1] == "layer"]
            ablated = runner.evaluate(runner.candidates() + layers, progress=progress)
            for block, stats in ablated.items():
                scores[block] |= {"delta_nll": stats.mean_nll - dense.mean_nll, "kl": stats.mean_kl}
    finally:
        if runner is not None:
            runner.close()
    num_layers = len(engine.skeleton.model.layers)
    pruned = sorted(b for b in all_blocks(num_layers) if b not in scores)
    timings = {"one_pass": first_pass, "ablation": time.perf_counter() - start - first_pass}
    return ScanResult(num_layers, dense, scores, pruned, timings)


def write_heatmap(result: ScanResult, path: Path, title: str) -> bool:
    """One panel per measure, layers down, {attention, MLP} across. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("cosine", "1 - cosine similarity"),
        ("update", "relative update norm"),
        ("nll", "NLL rise when removed"),
        ("kl", "KL from dense when removed"),
    ]
    n = result.num_layers
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 1.2 + 0.3 * n), squeeze=False)
    cmap = plt.get_cmap("magma_r").with_extremes(bad="lightgrey")
    for ax, (metric, label) in zip(axes[0], panels, strict=True):
        # Colour by rank, not value: one dominant block (often layer 0) would wash out the rest.
        importance = result.importance(metric)
        ranks = _ranks(importance)
        grid = [[ranks.get((layer, kind), math.nan) for kind in ("attn", "mlp")] for layer in range(n)]
        ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest", vmin=1, vmax=max(len(ranks), 2))
        if n <= 48:
            for (layer, kind), value in importance.items():
                shade = ranks[(layer, kind)] > 0.6 * len(ranks)
                ax.text(
                    KINDS.index(kind),
                    layer,
                    f"{value:.3g}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if shade else "black",
                )
        ax.set_title(label, fontsize=9)
        ax.set_xticks([0, 1], ["attention", "MLP"], fontsize=8)
        ax.set_yticks(range(n), [str(i) for i in range(n)], fontsize=6 if n > 24 else 8)
        ax.set_ylabel("layer", fontsize=8)
    fig.suptitle(f"{title} — block importance: colour = rank, darker matters more; grey = pruned", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@dataclass
class ScanReport:
    result: ScanResult
    report: dict
    out: Path | None
    heatmap: bool
    experts: ExpertSaliency | None = None  # with `experts=True`: every expert's saliency

    def to_dict(self) -> dict:
        return self.report

    def text(self) -> str:
        lines = [self.result.table()] + (["", self.experts.text()] if self.experts is not None else [])
        if self.out is not None:
            lines.append(f"\nreport: {self.out / 'scan.json'}")
            lines.append(
                f"heatmap: {self.out / 'scan.png'}" + (f", {self.out / 'experts.png'}" if self.experts else "")
                if self.heatmap
                else "heatmap: skipped, needs matplotlib: pip install matplotlib"
            )
        return "\n".join(lines)


def run_scan(
    source: str | Path | Checkpoint,
    spec: DataSpec,
    out: Path | None = None,
    *,
    dtype: str = "auto",
    force: bool = False,
    progress: bool = True,
    whole_layers: bool = False,
    max_memory: int | None = None,
    experts: bool = False,
    expert_kl: bool = False,
    width: bool = False,
) -> ScanReport:
    """Load `source`, scan it on `spec`'s data, and write `out`/scan.json and `out`/scan.png. With
    `max_memory` (bytes), a model that does not fit is scanned layer by layer within it. With `experts`,
    every expert of a Qwen3-MoE is scored too (`measure.experts`), and with `expert_kl` also by the KL
    when masked alone (a replay per expert, in memory). With `width`, every MLP channel and KV group of
    a dense Qwen3 (`measure.width`; the KV groups' KL too when the model is in memory), drawn in
    `width.png`."""
    from qprune.io.source import open_checkpoint
    from qprune.measure.data import load_for_measurement
    from qprune.progress import as_progress

    if out is not None:
        check_output(Path(out), force, sources=[source])
    start = time.perf_counter()
    progress = as_progress(progress)
    checkpoint = open_checkpoint(source)
    model, batch = load_for_measurement(checkpoint, spec, dtype, progress, max_memory)
    loaded = time.perf_counter()
    progress.note(f"scanning {2 * model.config.num_hidden_layers} blocks")
    result = scan_blocks(model, batch, progress=progress, whole_layers=whole_layers)
    saliency = None
    if experts or expert_kl:
        progress.note("scoring every expert (frequency, REAP" + (", KL when masked)" if expert_kl else ")"))
        saliency = expert_saliency(model, batch, progress, kl=expert_kl)
        result.timings["experts"] = saliency.timings["saliency"]
    importance = None
    if width:
        from qprune.measure.width import width_importance

        whole = engine_of(model).whole
        progress.note("scoring every MLP channel and KV group" + ("" if whole else " (no KL: layer by layer)"))
        importance = width_importance(model, batch, progress, kl=whole)
        result.timings["width"] = sum(importance.timings.values())
    result.timings = {"load": loaded - start, **result.timings}
    result.timings["total"] = time.perf_counter() - start
    report = {
        "model": checkpoint.name,
        "data": spec.describe(),
        "seed": spec.seed,
        "dtype": dtype,
        "device": str(model.device),
        **({"max_memory": limit} if (limit := engine_of(model).max_memory) is not None else {}),
        **result.to_dict(),
        **({"experts": saliency.to_dict()} if saliency is not None else {}),
        **({"width": importance.to_dict()} if importance is not None else {}),
    }
    heatmap = False
    if out is not None:
        with atomic_output(Path(out), force, sources=[checkpoint.dir]) as tmp:
            (tmp / "scan.json").write_text(json.dumps(report, indent=2) + "\n")
            title = Path(checkpoint.name.rstrip("/")).name
            heatmap = write_heatmap(result, tmp / "scan.png", title)
            if saliency is not None:
                write_expert_heatmap(saliency, tmp / "experts.png", title)
            if importance is not None:
                from qprune.measure.width import write_width_figure

                write_width_figure(importance, tmp / "width.png", title)
    return ScanReport(result, report, Path(out) if out is not None else None, heatmap, saliency)
