"""What qprune tells people about a checkpoint: the prune summary, the model card, `qprune info`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .source import open_checkpoint

if TYPE_CHECKING:
    from .export import ExportResult
    from .pruning import PruneResult


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _change(before: int, after: int) -> str:
    return f"{(after - before) / before:+.1%}" if before else "n/a"


def summary(result: PruneResult) -> str:
    blocks = 2 * result.num_layers
    return "\n".join(
        [
            f"pruned {result.added.num_blocks} blocks ({result.added}) -> {result.out}",
            f"blocks pruned in total: {result.plan.num_blocks} of {blocks} ({result.plan})",
            f"parameters: {result.params_before:,} -> {result.params_after:,} "
            f"({_change(result.params_before, result.params_after)})",
            f"bytes:      {human_bytes(result.bytes_before)} -> {human_bytes(result.bytes_after)} "
            f"({_change(result.bytes_before, result.bytes_after)})",
        ]
        + ([f"left out (not part of a model directory): {', '.join(result.left_out)}"] if result.left_out else [])
    )


def format_layers(layers: tuple[int, ...]) -> str:
    return ", ".join(map(str, layers)) or "none"


_CARD = """\
---
{front_matter}library_name: transformers
tags: [qprune, pruned, qwen3]
---

# {name}

`{base_model}` with {pruned} of {blocks} transformer blocks pruned by qprune. A pruned block is skipped:
the residual stream carries the signal past it, exactly as if its output projection were zero.

- Attention blocks pruned (layers): {attn}
- MLP blocks pruned (layers): {mlp}

| | before | after | change |
|---|---|---|---|
| parameters | {params_before:,} | {params_after:,} | {params_change} |
| bytes | {bytes_before} | {bytes_after} | {bytes_change} |

## How to load

With transformers alone (the modeling code ships in this directory):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{name}")
```

With qprune installed, no remote code is needed: `model = qprune.load("{name}")`.

Pruned tensors are absent from the weights and from the loaded model; any other missing tensor is an
error. Load in bfloat16 or float32: Qwen3 overflows in float16.
"""


def search_section(search: dict) -> str:
    """How an automatic plan was chosen: method, data, and the calibration figures after each step."""
    data = search.get("data", {})
    lines = [
        "## How the blocks were chosen",
        "",
        f"`qprune prune --auto`, method **{search['method']}** by **{search['metric']}**, target "
        f"{', '.join(f'{k} {v}' for k, v in search['target'].items())}, on {data.get('samples')} x "
        f"{data.get('seq_len')} tokens of `{data.get('source')}` (seed {data.get('seed')}). "
        f"Calibration perplexity before: {search['dense']['perplexity']:.3f}. Full trace: `qprune_search.json`.",
        "",
        f"| step | layer | block | {search['metric']} score | calibration perplexity after |",
        "|---|---|---|---|---|",
    ]
    for k, step in enumerate(search["steps"], 1):
        after = f"{step['perplexity']:.3f}" if "perplexity" in step else "—"
        lines.append(f"| {k} | {step['layer']} | {step['block']} | {step['score']:.4g} | {after} |")
    return "\n".join(lines) + "\n"


def model_card(result: PruneResult, base_model: str, search: dict | None = None) -> str:
    is_hub_id = "/" in base_model and not base_model.startswith((".", "/", "~"))
    return _CARD.format(
        front_matter=f"base_model: {base_model}\n" if is_hub_id else "",
        name=result.out.name,
        base_model=base_model,
        pruned=result.plan.num_blocks,
        blocks=2 * result.num_layers,
        attn=format_layers(result.plan.attn),
        mlp=format_layers(result.plan.mlp),
        params_before=result.params_before,
        params_after=result.params_after,
        params_change=_change(result.params_before, result.params_after),
        bytes_before=human_bytes(result.bytes_before),
        bytes_after=human_bytes(result.bytes_after),
        bytes_change=_change(result.bytes_before, result.bytes_after),
    ) + ("\n" + search_section(search) if search else "")


def _cost_rows(result: ExportResult) -> list[tuple[str, str, str]]:
    slim, stock = result.ideal["slim"], result.ideal["export"]
    return [
        ("bytes", human_bytes(result.slim_bytes), human_bytes(result.export_bytes)),
        ("layers", str(result.num_layers), str(result.num_layers - len(result.removed_layers))),
        ("ideal prefill speedup", f"{slim['prefill']:.2f}x", f"{stock['prefill']:.2f}x"),
        ("ideal decode speedup", f"{slim['decode']:.2f}x", f"{stock['decode']:.2f}x"),
        ("KV cache (share of the base's)", f"{slim['kv_share']:.0%}", f"{stock['kv_share']:.0%}"),
    ]


def export_summary(result: ExportResult) -> str:
    removed = format_layers(result.removed_layers)
    lines = [
        f"exported {result.source} as a stock Qwen3 -> {result.out}",
        f"layers removed (both blocks pruned): {removed}; blocks zero-filled: {result.zero_blocks}",
        f"{'':<31}{'qprune checkpoint':>18}{'stock Qwen3':>14}",
    ]
    lines += [f"{name:<31}{slim:>18}{stock:>14}" for name, slim, stock in _cost_rows(result)]
    if result.zero_blocks.num_blocks:
        lines.append(
            "zero-filled blocks still run and hold KV cache in a stock engine; plans of whole layers "
            "(prune --auto --whole-layers) export at no cost, or serve the qprune checkpoint with vLLM"
        )
    return "\n".join(lines)


def export_card(result: ExportResult, base_model: str, ideal_at: dict) -> str:
    is_hub_id = "/" in base_model and not base_model.startswith((".", "/", "~"))
    rows = "\n".join(f"| {name} | {slim} | {stock} |" for name, slim, stock in _cost_rows(result))
    return f"""\
---
{f"base_model: {base_model}" + chr(10) if is_hub_id else ""}library_name: transformers
tags: [qprune, pruned, qwen3]
---

# {result.out.name}

`{base_model}` pruned by qprune ({result.plan}) and exported as a stock Qwen3: `model_type: qwen3`,
no custom code. It loads in transformers, vLLM and the GGUF / MLX converters as any Qwen3 does, and
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

Load in bfloat16 or float32: Qwen3 overflows in float16.
"""


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
