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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qprune.arch import FAMILIES, SLIDING_WINDOW_ATTENTION, family_of
from qprune.errors import QpruneError
from qprune.io.experts import check_experts, cut_config, expert_tensors, is_uniform
from qprune.io.output import atomic_output, check_output
from qprune.io.safetensors import SAFE_INDEX, SAFE_WEIGHTS, TensorEntry, read_header, write_shards
from qprune.io.source import Checkpoint, open_checkpoint, portable_name
from qprune.io.stock import stock_config
from qprune.io.width import check_width, is_uniform_width, width_config, width_tensors
from qprune.measure.patch import PATCH_RECORD, Patches, check_patchable
from qprune.measure.report import SearchReport
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
    stock: bool = False  # written as a stock checkpoint (a uniform expert or width cut and no block pruned)
    patches: Patches | None = None  # the corrections folded into kept weights (`prune --patch`)

    def summary(self) -> str:
        return summary(self)

    text = summary  # what `cli.options.show` prints


def pruned_config(config: dict, plan: Plan, base_model: str, base_path: str | None = None) -> dict:
    """The source's config.json with every architecture field kept and the plan added. The base is
    recorded twice: `qprune_base_model`, a portable name for cards, and `qprune_base_path`, where
    `qprune heal` finds it again (an absolute directory, or the hub id)."""
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
    if base_path is not None:
        out["qprune_base_path"] = base_path
    else:
        out.pop("qprune_base_path", None)
    return dict(sorted(family.portable_config(out).items()))


def base_location(config: dict, source: str) -> str | None:
    """Where the dense base of `source` can be found again: the base's location a qprune source
    records, else `source` itself (an absolute directory, or a hub id). None when a qprune source of
    before 0.3 records only its base's portable name (a hub id is its own location)."""
    if "qprune_base_path" in config:
        return config["qprune_base_path"]
    if "qprune_base_model" in config:
        name = config["qprune_base_model"]
        return name if "/" in name and not os.path.exists(name) else None
    path = Path(source).expanduser()
    return str(path.absolute()) if path.exists() else source


# Tokenizer classes a tokenizer_config.json can name that load the same in transformers 4.x and 5.x.
_GENERIC_TOKENIZERS = {
    "TokenizersBackend": "PreTrainedTokenizerFast",
    "PreTrainedTokenizerFast": "PreTrainedTokenizerFast",
}


def tokenizer_config(checkpoint: Checkpoint) -> str | None:
    """The source's tokenizer_config.json, with `tokenizer_class` added when it lacks one (None: copy
    it as it is). Without it, transformers 4.x's AutoTokenizer reads the output's config.json, whose
    `auto_map` names remote code, and stops 15 s to ask "trust_remote_code [y/N]"; with it, 4.x never
    reads config.json. (5.x reads config.json first whatever this file says, so it still asks; the
    class keeps it from guessing.) The class is the one transformers picks for the (stock) source,
    without "Fast" (4.x adds it back, 5.x has one class)."""
    src_dir = checkpoint.dir
    path = src_dir / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # copied as it is: the output's tokenizer is as damaged as the source's
    if not isinstance(config, dict) or config.get("tokenizer_class"):
        return None
    vocabulary = ("tokenizer.json", "vocab.json", "tokenizer.model")
    if not any((src_dir / name).is_file() for name in vocabulary) and not any(src_dir.glob("*.tiktoken")):
        return None  # no tokenizer to load (and transformers need not be imported to find that out)
    from qprune.runtime.load import load_tokenizer

    try:
        name = type(load_tokenizer(checkpoint)).__name__
    except QpruneError:
        return None  # the source has no loadable tokenizer: nothing to name
    name = _GENERIC_TOKENIZERS.get(name, name.removesuffix("Fast"))
    return json.dumps({**config, "tokenizer_class": name}, indent=2) + "\n"


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
    source: str | Path | Checkpoint,
    out: Path,
    plan: Plan,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    search: SearchReport | None = None,
    patches: Patches | None = None,
) -> PruneResult:
    """Prune `plan`'s blocks out of `source` (directory, hub id or opened Checkpoint) into the new checkpoint `out`.
    `search` says how the plan was chosen (`prune --auto`): it is written to `qprune_search.json` and
    summarised in the model card. `patches` (`measure.patch`, fitted for this plan on this source) are
    folded into the kept output projections they name: the same tensors, some with new values."""
    out = Path(out).absolute()
    if max_shard_size <= 0:
        raise QpruneError(f"max_shard_size must be positive, not {max_shard_size}")
    check_output(out, force, sources=[source])  # before any download or read
    source_checkpoint = open_checkpoint(source)
    src_dir, config = source_checkpoint.dir, source_checkpoint.config
    num_layers = config["num_hidden_layers"]
    plan.validate(num_layers)
    if plan.is_empty:
        raise QpruneError("the plan prunes no blocks: give {attn} or {mlp} layers (or {experts}, {ffn}, {kv_heads})")
    if plan.attn and not family_of(config).attention_prunable(config):
        raise QpruneError(SLIDING_WINDOW_ATTENTION)
    if patches is not None:
        check_patchable(plan)
    total = source_checkpoint.plan.union(plan)
    tensors = list(source_checkpoint.tensors.values())
    if plan.has_width:  # a dense Qwen3's: never with experts
        check_width(config, plan, source_checkpoint.name)
    if plan.experts:
        check_experts(config, plan, source_checkpoint.name)
        kept = [entry for entry in expert_tensors(source_checkpoint, plan) if not total.prunes(entry.name)]
    elif plan.has_width:
        kept = [entry for entry in width_tensors(source_checkpoint, plan) if not total.prunes(entry.name)]
    else:
        kept = [entry for entry in tensors if not total.prunes(entry.name)]
    shards = source_checkpoint.files
    inherited, left_out = inherited_files(src_dir, shards)
    # A uniform expert or width cut with no block pruned is a stock checkpoint.
    uniform = is_uniform(config, plan) if plan.experts else is_uniform_width(config, plan)
    stock = not total.num_blocks and (bool(plan.experts) or plan.has_width) and uniform

    params_before, bytes_before = _count(tensors)
    params_after, bytes_after = _count(kept)
    result = PruneResult(
        out,
        source_checkpoint.name,
        total,
        plan,
        num_layers,
        params_before,
        params_after,
        bytes_before,
        bytes_after,
        tuple(left_out),
        family_of(config).model_type,
        stock,
        patches,
    )
    base_model = portable_name(config.get("qprune_base_model", source_checkpoint.name))
    base_path = base_location(config, source_checkpoint.name)
    tokenizer_settings = tokenizer_config(source_checkpoint)
    with atomic_output(out, force, sources=[src_dir, *shards]) as tmp, tempfile.TemporaryDirectory() as scratch:
        if patches is not None:  # the patched tensors, from a scratch file, in place of the source's
            patched = _written(patches.folded(source_checkpoint), Path(scratch))
            kept = [patched.get(entry.name, entry) for entry in kept]
        write_shards(kept, tmp, max_shard_size)
        source_config = cut_config(config, plan) if plan.experts else config
        source_config = width_config(config, plan) if plan.has_width else source_config
        if stock:  # a stock Qwen3 or Qwen3-MoE: no plan fields, no modeling code
            all_layers = list(range(num_layers))
            base_fields = {"qprune_base_model": base_model} | ({"qprune_base_path": base_path} if base_path else {})
            new_config = stock_config(source_config, all_layers) | base_fields  # where heal finds its teacher
            new_config, modeling_files = dict(sorted(new_config.items())), ()
        else:
            new_config = pruned_config(source_config, total, base_model, base_path)
            modeling_files = family_of(config).modeling_files
            if patches is not None:
                new_config[PATCH_RECORD] = patches.record()
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2) + "\n")
        for name in modeling_files:
            shutil.copyfile(MODELING_DIR / name, tmp / name)
        for path in inherited:
            shutil.copyfile(path, tmp / path.name)
        if tokenizer_settings is not None:
            (tmp / "tokenizer_config.json").write_text(tokenizer_settings)
        if search is not None:
            (tmp / SEARCH_REPORT).write_text(json.dumps(search.to_dict(), indent=2) + "\n")
        card = stock_card(result, base_model) if stock else model_card(result, base_model, search)
        (tmp / "README.md").write_text(card)
    return result


def _written(tensors: dict, scratch: Path) -> dict[str, TensorEntry]:
    """Tensors held in memory as entries of a safetensors file in `scratch`, to be copied like the rest."""
    from safetensors.torch import save_file

    path = scratch / "patched.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path))
    return {entry.name: entry for entry in read_header(path)}


# -- what the summary and the card say -------------------------------------------------------------


def _change(before: int, after: int) -> str:
    return f"{(after - before) / before:+.1%}" if before else "n/a"


def summary(result: PruneResult) -> str:
    blocks = 2 * result.num_layers
    head = []
    kind = f" (a stock {family_of({'model_type': result.model_type}).title})" if result.stock else ""
    if result.added.experts:
        head.append(f"removed {removed_text(result.added)} -> {result.out}{kind}")
    if result.added.has_width:
        head.append(f"removed {width_text(result.added)} -> {result.out}{kind}")
    if result.added.num_blocks or not (result.added.experts or result.added.has_width):
        head.append(
            f"pruned {result.added.num_blocks} blocks ({Plan(result.added.attn, result.added.mlp)}) -> {result.out}"
        )
    if result.plan.num_blocks:
        head.append(
            f"blocks pruned in total: {result.plan.num_blocks} of {blocks} ({Plan(result.plan.attn, result.plan.mlp)})"
        )
    return "\n".join(
        head
        + [
            f"parameters: {result.params_before:,} -> {result.params_after:,} "
            f"({_change(result.params_before, result.params_after)})",
            f"bytes:      {human_bytes(result.bytes_before)} -> {human_bytes(result.bytes_after)} "
            f"({_change(result.bytes_before, result.bytes_after)})",
        ]
        + ([f"left out (not part of a model directory): {', '.join(result.left_out)}"] if result.left_out else [])
        + ([result.patches.text()] if result.patches else [])
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
- MLP blocks pruned (layers): {mlp}{experts}

| | before | after | change |
|---|---|---|---|
| parameters | {params_before:,} | {params_after:,} | {params_change} |
| bytes | {bytes_before} | {bytes_after} | {bytes_change} |

## How to load

With transformers alone (the modeling code ships in this directory):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)  # no question asked
```

With qprune installed, no remote code is needed: `model = qprune.load("{name}")`.

Pruned tensors are absent from the weights and from the loaded model; any other missing tensor is an
error. Load in bfloat16 or float32: {title} overflows in float16.
"""


_STOCK_CARD = """\
---
{front_matter}library_name: transformers
tags: [qprune, pruned, {tag}, {model_type}]
---

# {name}

`{base_model}` with {removed} removed by qprune. It is a stock {title}: {how} It computes exactly what
the original computes with {oracle}. `{record}` in config.json lists, per layer, the original index of
every {unit} removed.

| | before | after | change |
|---|---|---|---|
| parameters | {params_before:,} | {params_after:,} | {params_change} |
| bytes | {bytes_before} | {bytes_after} | {bytes_change} |

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}")  # no remote code
tokenizer = AutoTokenizer.from_pretrained("{name}")
```
"""


def _card_fields(result: PruneResult, base_model: str) -> dict[str, object]:
    """What every card says: the model, where it came from, and its sizes before and after."""
    is_hub_id = "/" in base_model and not base_model.startswith((".", "/", "~"))
    family = family_of({"model_type": result.model_type})
    return dict(
        model_type=family.model_type,
        title=family.title,
        front_matter=f"base_model: {base_model}\n" if is_hub_id else "",
        name=result.out.name,
        base_model=base_model,
        params_before=result.params_before,
        params_after=result.params_after,
        params_change=_change(result.params_before, result.params_after),
        bytes_before=human_bytes(result.bytes_before),
        bytes_after=human_bytes(result.bytes_after),
        bytes_change=_change(result.bytes_before, result.bytes_after),
    )


def removed_text(plan: Plan) -> str:
    """'4 experts from each of 6 MoE layers', or '20 experts from 6 MoE layers (2 to 5 per layer)'."""
    counts = [len(experts) for experts in plan.removed_experts.values()]
    if len(set(counts)) == 1:
        return f"{counts[0]} experts from each of {len(counts)} MoE layers"
    return f"{sum(counts)} experts from {len(counts)} MoE layers ({min(counts)} to {max(counts)} per layer)"


def width_text(plan: Plan) -> str:
    """'64 MLP channels and 1 KV group (with its query heads) from each of 28 layers', or, where
    counts differ, '1,800 MLP channels from 28 layers (12 to 130 per layer)'."""
    parts = []
    for lists, what in ((plan.ffn, "MLP channels"), (plan.kv_heads, "KV groups (with their query heads)")):
        counts = [len(indices) for _, indices in lists]
        if not counts:
            continue
        if len(set(counts)) == 1:
            parts.append(f"{counts[0]} {what}" if counts[0] > 1 else f"1 {what.replace('groups', 'group')}")
        else:
            parts.append(f"{sum(counts):,} {what} ({min(counts)} to {max(counts)} per layer)")
    layers = {layer for layer, _ in plan.ffn + plan.kv_heads}
    uniform = all(
        len({len(i) for _, i in lists}) <= 1 and len(lists) == len(layers)
        for lists in (plan.ffn, plan.kv_heads)
        if lists
    )
    return f"{' and '.join(parts)} from {'each of ' if uniform else ''}{len(layers)} layers"


def stock_card(result: PruneResult, base_model: str) -> str:
    """The card of a stock checkpoint: a uniform expert cut, or a uniform width cut."""
    if result.added.experts:
        words = dict(
            tag="experts",
            removed=removed_text(result.added),
            how="`num_experts` is smaller, the kept experts are renumbered in order and the router keeps their rows.",
            oracle="the removed experts' router logits set to -inf",
            record="qprune_pruned_experts",
            unit="expert",
        )
    else:
        words = dict(
            tag="width",
            removed=width_text(result.added),
            how="`intermediate_size`, `num_key_value_heads` and `num_attention_heads` are smaller, the kept "
            "channels and heads in their order.",
            oracle="the removed channels' `down_proj` columns and the removed heads' `o_proj` columns zeroed",
            record="qprune_pruned_width",
            unit="channel and KV group",
        )
    return _STOCK_CARD.format(**words, **_card_fields(result, base_model))


def model_card(result: PruneResult, base_model: str, search: SearchReport | None = None) -> str:
    return (
        _CARD.format(
            pruned=result.plan.num_blocks,
            blocks=2 * result.num_layers,
            attn=format_layers(result.plan.attn),
            mlp=format_layers(result.plan.mlp),
            experts=f"\n- Experts removed: {removed_text(result.added)} (`qprune_pruned_experts` in config.json)"
            if result.added.experts
            else "",
            **_card_fields(result, base_model),
        )
        + ("\n" + report.search_section(search) if search else "")
        + (_patch_section(result.patches) if result.patches else "")
    )


def _patch_section(patches: Patches) -> str:
    """The card's "Patched" section: what was folded where (config.json's `qprune_patch` has the record)."""
    lines = "\n".join(f"    {line.strip()}" for line in patches.text().splitlines()[1:])
    return f"""
## Patched

Without training, for each run of pruned blocks, a least-squares correction fitted on calibration data
({patches.tokens:,} tokens of `{patches.data.get("source", "?")}`) was folded into the output projection of the
kept block before it ({patches.settings.patch_map} map, {patches.settings.patch_target} target, ridge
{patches.settings.patch_ridge:g}; `qprune_patch` in config.json). Those weights differ from the base's; the
tensors are the same.

{lines}
"""
