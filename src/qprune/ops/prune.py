"""`prune()`: write a slim checkpoint without the pruned blocks' tensors.

    from qprune.plan import Plan
    result = prune("Qwen/Qwen3-0.6B", Path("qwen3-pruned"), Plan(attn=(0, 5), mlp=(3,)))
    print(result.summary())

It streams: headers are read, kept tensors are copied byte for byte into new shards, and the model is
never built, so memory stays near zero and dtypes are preserved. The output carries the pruning plan in
its config (`model_type: pruned_qwen3` or `pruned_qwen3_moe`), the modeling code (so
`trust_remote_code=True` loads it where qprune is not installed), the tokenizer files, and a model
card. A qprune checkpoint as the source is pruned further; the plans combine.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from qprune.arch import FAMILIES, SLIDING_WINDOW_ATTENTION, attention_prunable, family_of
from qprune.errors import QpruneError
from qprune.io.output import atomic_output, check_output
from qprune.io.safetensors import SAFE_INDEX, SAFE_WEIGHTS, TensorEntry, write_shards
from qprune.io.source import open_checkpoint, portable_name
from qprune.ops import report
from qprune.plan import Plan
from qprune.words import format_layers, human_bytes

MODELING_DIR = Path(__file__).parent.parent / "modeling"
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
SEARCH_REPORT = "qprune_search.json"
# What the output takes from the source besides the weights: the tokenizer, chat template, generation
# config and licence. Nothing else belongs in a model directory (pickles, .gguf, .npy, other code):
# such files are left out and named. Weights, config.json and the card are written anew.
_INHERITED_NAMES = {
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "NOTICE.txt", "USE_POLICY.md",
}  # fmt: skip
_INHERITED_SUFFIXES = {".tiktoken"}
_REWRITTEN = {"config.json", "README.md", SAFE_INDEX, SAFE_WEIGHTS, SEARCH_REPORT} | {
    name for family in FAMILIES for name in family.modeling_files
}


@dataclass(frozen=True)
class PruneResult:
    out: Path
    source: str
    plan: Plan  # everything pruned in the output, including what the source had pruned already
    added: Plan  # what this run pruned
    num_layers: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    left_out: tuple[str, ...] = ()  # files of the source that do not belong in a model directory
    model_type: str = "qwen3"  # the stock family's

    def summary(self) -> str:
        return summary(self)


def pruned_config(config: dict, plan: Plan, base_model: str) -> dict:
    """The source's config.json with every architecture field kept and the plan added."""
    family = family_of(config)
    out = dict(config)
    out.pop("_name_or_path", None)
    out.update(
        model_type=family.pruned_model_type,
        architectures=[family.pruned_class],
        auto_map=family.auto_map,
        pruned_attn_layers=list(plan.attn),
        pruned_mlp_layers=list(plan.mlp),
        qprune_base_model=base_model,
    )
    return dict(sorted(family.portable_config(out).items()))


def inherited_files(src_dir: Path, shards: list[Path]) -> tuple[list[Path], list[str]]:
    """The source's files the output copies, and the names of those it leaves out."""
    copied, left_out = [], []
    for path in sorted(src_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.name in _REWRITTEN or path in shards:
            continue
        if path.name in _INHERITED_NAMES or path.suffix in _INHERITED_SUFFIXES:
            copied.append(path)
        else:
            left_out.append(path.name)
    return copied, left_out


def _count(entries: list[TensorEntry]) -> tuple[int, int]:
    return sum(e.numel for e in entries), sum(e.nbytes for e in entries)


def prune(
    source: str,
    out: Path,
    plan: Plan,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    search: report.SearchReport | None = None,
) -> PruneResult:
    """Prune `plan`'s blocks out of `source` (directory or hub id) into the new checkpoint `out`.
    `search` says how the plan was chosen (`prune --auto`): it is written to `qprune_search.json` and
    summarised in the model card."""
    out = Path(out).absolute()
    if max_shard_size <= 0:
        raise QpruneError(f"max_shard_size must be positive, not {max_shard_size}")
    check_output(out, force, sources=[source])  # before any download or read
    source_checkpoint = open_checkpoint(source)
    src_dir, config = source_checkpoint.dir, source_checkpoint.config
    num_layers = config["num_hidden_layers"]
    plan.validate(num_layers)
    if plan.num_blocks == 0:
        raise QpruneError("the plan prunes no blocks: give {attn} or {mlp} layers")
    if plan.attn and not attention_prunable(config):
        raise QpruneError(SLIDING_WINDOW_ATTENTION)
    total = source_checkpoint.plan.union(plan)
    tensors = list(source_checkpoint.tensors.values())
    kept = [entry for entry in tensors if not total.prunes(entry.name)]
    shards = source_checkpoint.files
    inherited, left_out = inherited_files(src_dir, shards)

    params_before, bytes_before = _count(tensors)
    params_after, bytes_after = _count(kept)
    result = PruneResult(
        out,
        source,
        total,
        plan,
        num_layers,
        params_before,
        params_after,
        bytes_before,
        bytes_after,
        tuple(left_out),
        family_of(config).model_type,
    )
    base_model = portable_name(config.get("qprune_base_model", source))
    with atomic_output(out, force, sources=[src_dir, *shards]) as tmp:
        write_shards(kept, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(pruned_config(config, total, base_model), indent=2) + "\n")
        for name in family_of(config).modeling_files:
            shutil.copyfile(MODELING_DIR / name, tmp / name)
        for path in inherited:
            shutil.copyfile(path, tmp / path.name)
        if search is not None:
            (tmp / SEARCH_REPORT).write_text(json.dumps(search.to_dict(), indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(result, base_model, search))
    return result


# -- what the summary and the card say -------------------------------------------------------------


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


_CARD = """\
---
{front_matter}library_name: transformers
tags: [qprune, pruned, {model_type}]
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
error. Load in bfloat16 or float32: {title} overflows in float16.
"""


def model_card(result: PruneResult, base_model: str, search: report.SearchReport | None = None) -> str:
    is_hub_id = "/" in base_model and not base_model.startswith((".", "/", "~"))
    family = family_of({"model_type": result.model_type})
    return _CARD.format(
        model_type=family.model_type,
        title=family.title,
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
    ) + ("\n" + report.search_section(search) if search else "")
