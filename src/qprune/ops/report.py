"""What a checkpoint says about itself: the model card's section on the search that chose its plan
(`measure.report.SearchReport`, which `prune` also writes as `qprune_search.json`), and what `qprune info`
says about a checkpoint.

    section = search_section(report)          # markdown, for the card
    describe("qwen3-pruned")                  # {"attn": [...], "mlp": [...], "parameters": ..., ...}
"""

from __future__ import annotations

from pathlib import Path

from qprune.io.source import Checkpoint, open_checkpoint
from qprune.measure.report import SearchReport


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


class Description(dict):
    """What `qprune info` says about a checkpoint: a dict (its JSON), which also reads as text."""

    def to_dict(self) -> dict:
        return dict(self)

    def text(self) -> str:
        from qprune.words import format_layers, human_bytes

        def per_layer(lists: dict) -> str:
            counts = {len(items) for items in lists.values()}
            layers = f"{len(lists)} layer{'s' if len(lists) > 1 else ''}"
            if len(counts) == 1:
                return f"{counts.pop()} in each of {layers}" if len(lists) > 1 else f"{counts.pop()} in {layers}"
            return f"{sum(map(len, lists.values()))} over {layers} ({min(counts)} to {max(counts)} per layer)"

        removed = [
            f"{title}{per_layer(self[key])}\n" for key, title in _REMOVED if self.get(key)
        ]  # the experts and width the checkpoint lacks, as config.json records them
        return (
            f"{self['path']} ({self['model_type']}, {self['num_layers']} layers)\n"
            + (f"pruned from:      {self['base_model']}\n" if self["base_model"] else "")
            + f"attention pruned: {format_layers(self['attn'])}\nMLP pruned:       {format_layers(self['mlp'])}\n"
            + "".join(removed)
            + f"parameters: {self['parameters']:,}   bytes: {human_bytes(self['bytes'])}   "
            f"dtypes: {', '.join(self['dtypes'])}"
        )


_REMOVED = (
    ("experts_removed", "experts removed:  "),
    ("ffn_removed", "MLP channels removed: "),
    ("kv_heads_removed", "KV groups removed:    "),
)


def describe(path: str | Path | Checkpoint) -> Description:
    """A checkpoint's plan and sizes, as `qprune info --json` prints them."""
    from qprune.io.experts import recorded_experts
    from qprune.io.width import recorded_width

    checkpoint = open_checkpoint(path)
    config, plan, tensors = checkpoint.config, checkpoint.plan, checkpoint.tensors.values()
    width = recorded_width(config)
    lists = {
        "experts_removed": recorded_experts(config),
        "ffn_removed": dict(width.ffn),
        "kv_heads_removed": dict(width.kv_heads),
    }
    return Description(
        path=str(checkpoint.dir),
        model_type=config["model_type"],
        base_model=config.get("qprune_base_model"),
        num_layers=config["num_hidden_layers"],
        attn=list(plan.attn),
        mlp=list(plan.mlp),
        blocks_pruned=plan.num_blocks,
        **{key: {str(i): list(v) for i, v in value.items()} for key, value in lists.items() if value},
        parameters=sum(t.numel for t in tensors),
        bytes=sum(t.nbytes for t in tensors),
        dtypes=sorted({t.dtype for t in tensors}),
    )
