"""`qprune export PRUNED DEST`: a pruned checkpoint as an exact stock Qwen3 that any engine loads.

    result = export("qwen3-pruned", Path("qwen3-pruned-stock"))
    print(result.summary())

The output is `model_type: qwen3` with no code, so it loads in plain transformers, vLLM's native
Qwen3, and the GGUF (llama.cpp) and MLX converters. It computes exactly what the pruned model
computes:
- a layer whose attention and MLP are both pruned is removed, and the layers after it renumbered
  (`num_hidden_layers`, `layer_types`, `max_window_layers` follow);
- a block pruned alone is written back as zeros. With its output projection zero it adds nothing to
  the residual stream, which is what skipping it computes.

Portability costs what the zero-filled blocks weigh and compute: a stock engine runs them and keeps
their KV cache. The summary and the card give both checkpoints' bytes and the ideal speedups and KV
share each keeps (`cost.py`); plans of whole layers (`prune --auto --whole-layers`) export at no cost.

Like `prune`, it streams: headers are read, kept tensors are copied byte for byte under their new
names, zeros are written for the rest, and the model is never built.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from qprune.arch import family_of
from qprune.cost import Shape, ideal_speedups, kept_blocks
from qprune.errors import QpruneError
from qprune.io.experts import as_uniform
from qprune.io.output import atomic_output, check_output
from qprune.io.safetensors import write_shards
from qprune.io.source import Checkpoint, open_checkpoint, portable_name
from qprune.io.stock import stock_config, stock_tensors
from qprune.io.width import as_uniform_width
from qprune.ops.prune import DEFAULT_MAX_SHARD_SIZE, inherited_files
from qprune.plan import Plan
from qprune.words import format_layers, human_bytes

# What the card's ideal figures assume (bench's defaults): one sequence, a 512-token prompt, 64 new
# tokens, 2-byte weights and cache.
_IDEAL_AT = {"batch": 1, "prompt_len": 512, "new_tokens": 64, "dtype_bytes": 2}


@dataclass(frozen=True)
class ExportResult:
    out: Path
    source: str
    plan: Plan  # the pruned checkpoint's plan
    num_layers: int  # before: the pruned checkpoint's layers
    removed_layers: tuple[int, ...]  # layers with both blocks pruned: gone from the export
    zero_blocks: Plan  # blocks pruned alone: zero-filled in the export
    slim_bytes: int
    export_bytes: int
    ideal: dict  # {"slim": {...}, "export": {...}}: prefill and decode speedups, KV share vs the dense base
    model_type: str = "qwen3"  # the stock family's

    def summary(self) -> str:
        return summary(self)

    text = summary  # what `cli.options.show` prints


def _ideal(config: dict, plan: Plan) -> dict:
    shape = Shape.from_config(config)
    speedups = ideal_speedups(shape, Plan(), plan, **_IDEAL_AT)
    attention, _ = kept_blocks(shape, plan)
    return {"prefill": speedups.prefill, "decode": speedups.decode, "kv_share": attention / shape.layers}


def export(
    source: str | Path | Checkpoint, out: Path, *, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, force: bool = False
) -> ExportResult:
    """Write `source` (a qprune checkpoint) to `out` as a stock model of its family (Qwen3, Qwen3-MoE)
    that computes the same function."""
    out = Path(out).absolute()
    if max_shard_size <= 0:
        raise QpruneError(f"{{max_shard_size}} must be positive, not {max_shard_size}")
    check_output(out, force, sources=[source])
    checkpoint = open_checkpoint(source)
    source, config = checkpoint.name, checkpoint.config
    family = family_of(config)
    if config["model_type"] != family.pruned_model_type:
        raise QpruneError(
            f"{source} is a stock {family.title} already, not a qprune checkpoint: there is nothing to export"
        )
    if config.get("quantization_config") is not None:
        raise QpruneError(f"{source} holds pre-quantized weights; export the unquantized checkpoint")
    if config.get("use_sliding_window"):
        raise QpruneError(f"{source} is a sliding-window {family.title}; exporting it is not supported")
    # A cut that left different expert counts or widths in different layers has no stock form: one line says so.
    config = as_uniform_width(as_uniform(config, source), source)
    plan, num_layers = checkpoint.plan, config["num_hidden_layers"]
    removed = tuple(sorted(set(plan.attn) & set(plan.mlp)))
    if len(removed) == num_layers:
        raise QpruneError(f"{source} prunes every block of every layer; a {family.title} needs at least one layer")
    kept_layers = [i for i in range(num_layers) if i not in removed]
    zero_blocks = Plan(tuple(set(plan.attn) - set(removed)), tuple(set(plan.mlp) - set(removed)))
    entries = stock_tensors(checkpoint, kept_layers, zero_blocks, config)
    inherited, _ = inherited_files(checkpoint.dir, checkpoint.files)
    whole = Plan(removed, removed)
    result = ExportResult(
        out,
        source,
        plan,
        num_layers,
        removed,
        zero_blocks,
        slim_bytes=sum(e.nbytes for e in checkpoint.tensors.values()),
        export_bytes=sum(e.nbytes for e in entries),
        ideal={"slim": _ideal(config, plan), "export": _ideal(config, whole)},
        model_type=family.model_type,
    )
    base_model = portable_name(config.get("qprune_base_model", source))
    with atomic_output(out, force, sources=[checkpoint.dir, *checkpoint.files]) as tmp:
        write_shards(entries, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(stock_config(config, kept_layers), indent=2) + "\n")
        for path in inherited:
            shutil.copyfile(path, tmp / path.name)
        (tmp / "README.md").write_text(card(result, base_model, _IDEAL_AT))
    return result


# -- what the summary and the card say -------------------------------------------------------------


def _cost_rows(result: ExportResult) -> list[tuple[str, str, str]]:
    slim, stock = result.ideal["slim"], result.ideal["export"]
    return [
        ("bytes", human_bytes(result.slim_bytes), human_bytes(result.export_bytes)),
        ("layers", str(result.num_layers), str(result.num_layers - len(result.removed_layers))),
        ("ideal prefill speedup", f"{slim['prefill']:.2f}x", f"{stock['prefill']:.2f}x"),
        ("ideal decode speedup", f"{slim['decode']:.2f}x", f"{stock['decode']:.2f}x"),
        ("KV cache (share of the base's)", f"{slim['kv_share']:.0%}", f"{stock['kv_share']:.0%}"),
    ]


def summary(result: ExportResult) -> str:
    removed = format_layers(result.removed_layers)
    stock = f"stock {family_of({'model_type': result.model_type}).title}"
    lines = [
        f"exported {result.source} as a {stock} -> {result.out}",
        f"layers removed (both blocks pruned): {removed}; blocks zero-filled: {result.zero_blocks}",
        f"{'':<31}{'qprune checkpoint':>18}{stock:>14}",
    ]
    lines += [f"{name:<31}{slim:>18}{stock:>14}" for name, slim, stock in _cost_rows(result)]
    if result.zero_blocks.num_blocks:
        lines.append(
            "zero-filled blocks still run and hold KV cache in a stock engine; plans of whole layers "
            "(prune --auto --whole-layers) export at no cost, or serve the qprune checkpoint with vLLM"
        )
    return "\n".join(lines)


def card(result: ExportResult, base_model: str, ideal_at: dict) -> str:
    is_hub_id = "/" in base_model and not base_model.startswith((".", "/", "~"))
    rows = "\n".join(f"| {name} | {slim} | {stock} |" for name, slim, stock in _cost_rows(result))
    model_type, title = result.model_type, family_of({"model_type": result.model_type}).title
    return f"""\
---
{f"base_model: {base_model}" + chr(10) if is_hub_id else ""}library_name: transformers
tags: [qprune, pruned, {model_type}]
---

# {result.out.name}

`{base_model}` pruned by qprune ({result.plan}) and exported as a stock {title}: `model_type: {model_type}`,
no custom code. It loads in transformers, vLLM and the GGUF / MLX converters as any {title} does, and
computes exactly what the pruned model computes:

- layers removed (attention and MLP both pruned), the rest renumbered: {format_layers(result.removed_layers)}
- blocks pruned alone, stored as zeros (a zero output projection adds nothing): {result.zero_blocks}

## What portability costs

Against the qprune checkpoint it was exported from. Ideal speedups are against the dense base, from the
plan's FLOPs (prefill) and bytes read (decode), at batch {ideal_at["batch"]}, a {ideal_at["prompt_len"]}-token
prompt and {ideal_at["new_tokens"]} new tokens in 16-bit weights: a stock engine runs the zero-filled
blocks, so only removed layers save compute and KV cache here.

| | qprune checkpoint | this export |
|---|---|---|
{rows}

```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{result.out.name}")
```

Load in bfloat16 or float32: {title} overflows in float16.
"""
