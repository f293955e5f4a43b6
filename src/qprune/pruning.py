"""`prune()`: write a slim checkpoint without the pruned blocks' tensors.

    from qprune.plan import Plan
    result = prune("Qwen/Qwen3-0.6B", Path("qwen3-pruned"), Plan(attn=(0, 5), mlp=(3,)))
    print(result.summary())

It streams: headers are read, kept tensors are copied byte for byte into new shards, and the model is
never built, so memory stays near zero and dtypes are preserved. The output carries the pruning plan in
its config (`model_type: pruned_qwen3`), the modeling code (so `trust_remote_code=True` loads it where
qprune is not installed), the tokenizer files, and a model card. A qprune checkpoint as the source is
pruned further; the plans combine.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import report
from .checkpoint import TensorEntry, atomic_output, check_output, read_checkpoint, write_shards
from .errors import QpruneError
from .plan import Plan
from .source import read_qwen3_config, resolve_model_dir

MODELING_DIR = Path(__file__).parent / "modeling"
MODELING_FILES = ("configuration_pruned_qwen3.py", "modeling_pruned_qwen3.py")
AUTO_MAP = {
    "AutoConfig": "configuration_pruned_qwen3.PrunedQwen3Config",
    "AutoModelForCausalLM": "modeling_pruned_qwen3.PrunedQwen3ForCausalLM",
}
# Files of the source that the output must not inherit: weights (rewritten), config and card
# (rewritten), code (ours is written), and anything pickled.
_NOT_COPIED_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".py", ".pkl"}
_NOT_COPIED_NAMES = {"config.json", "README.md", "model.safetensors.index.json", "pytorch_model.bin.index.json"}
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
SEARCH_REPORT = "qprune_search.json"


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

    def summary(self) -> str:
        return report.summary(self)


def pruned_config(config: dict, plan: Plan, base_model: str) -> dict:
    """The source's config.json with every architecture field kept and the plan added."""
    out = dict(config)
    out.pop("_name_or_path", None)
    out.update(
        model_type="pruned_qwen3",
        architectures=["PrunedQwen3ForCausalLM"],
        auto_map=AUTO_MAP,
        pruned_attn_layers=list(plan.attn),
        pruned_mlp_layers=list(plan.mlp),
        qprune_base_model=base_model,
    )
    return dict(sorted(out.items()))


def _inherited(path: Path) -> bool:
    """Tokenizer, chat template, generation config, licence: what the output takes from the source."""
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.suffix not in _NOT_COPIED_SUFFIXES
        and path.name not in _NOT_COPIED_NAMES
    )


def _count(entries: list[TensorEntry]) -> tuple[int, int]:
    return sum(e.numel for e in entries), sum(e.nbytes for e in entries)


def prune(
    source: str,
    out: Path,
    plan: Plan,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    search: dict | None = None,
) -> PruneResult:
    """Prune `plan`'s blocks out of `source` (directory or hub id) into the new checkpoint `out`.
    `search` (a `SearchResult.to_dict()` with the data it ran on) says how the plan was chosen: it is
    written to `qprune_search.json` and summarised in the model card."""
    out = Path(out).absolute()
    check_output(out, force)  # before any download or read
    if max_shard_size <= 0:
        raise QpruneError("--max-shard-size must be positive")
    src_dir = resolve_model_dir(source)
    if src_dir.resolve() == out.resolve():
        raise QpruneError("the output directory is the source; choose another OUT")
    config = read_qwen3_config(src_dir)
    num_layers = config["num_hidden_layers"]
    plan.validate(num_layers)
    if plan.num_blocks == 0:
        raise QpruneError("the plan prunes no blocks: give --attn, --mlp or --plan")
    if plan.attn and config.get("use_sliding_window"):
        raise QpruneError("pruning attention blocks of a sliding-window Qwen3 is not supported")
    total = Plan.from_config(config).union(plan)
    tensors = list(read_checkpoint(src_dir).values())
    kept = [entry for entry in tensors if not total.prunes(entry.name)]

    params_before, bytes_before = _count(tensors)
    params_after, bytes_after = _count(kept)
    result = PruneResult(out, source, total, plan, num_layers, params_before, params_after, bytes_before, bytes_after)
    base_model = config.get("qprune_base_model", source)
    with atomic_output(out, force) as tmp:
        write_shards(kept, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(pruned_config(config, total, base_model), indent=2) + "\n")
        for name in MODELING_FILES:
            shutil.copyfile(MODELING_DIR / name, tmp / name)
        for path in sorted(src_dir.iterdir()):
            if _inherited(path):
                shutil.copyfile(path, tmp / path.name)
        if search is not None:
            (tmp / SEARCH_REPORT).write_text(json.dumps(search, indent=2) + "\n")
        (tmp / "README.md").write_text(report.model_card(result, base_model, search))
    return result
