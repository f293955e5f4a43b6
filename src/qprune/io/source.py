"""Finding a model to work on: a local directory or a Hugging Face Hub id, and its config.

    model_dir = resolve_model_dir("Qwen/Qwen3-0.6B")   # downloads safetensors, config, tokenizer
    model_dir = resolve_model_dir("qprune:qwen3-pydocs")  # a model shipped with qprune, by its short name
    config = read_model_config(model_dir)              # raises unless a supported family's valid config
    checkpoint = open_checkpoint("Qwen/Qwen3-0.6B")    # both, plus every header and tensor checked

A command opens its checkpoint once and passes the `Checkpoint` down: loading, the streamed model,
pruning, export, calibration data, healing, verify and scan all take one (or a path, which they open),
so config.json and the safetensors headers are read once per command, and the tokenizer loaded once.

Only safetensors are ever downloaded or read; offline use gets an error that says what to do. Every
check raises a `QpruneError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qprune import shipped
from qprune.arch import family_of, tensor_block
from qprune.arch.family import (
    OPTIONAL_BOOL,
    OPTIONAL_COUNT,
    OPTIONAL_OBJECT,
    OPTIONAL_POSITIVE_INT,
    OPTIONAL_POSITIVE_NUMBER,
    OPTIONAL_STRING,
    OPTIONAL_STRINGS,
    POSITIVE_INT,
    FieldKind,
    is_int,
)
from qprune.errors import QpruneError
from qprune.io.safetensors import TensorEntry, read_checkpoint
from qprune.plan import Plan

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a pruned checkpoint needs from the hub: never pickled weights, never other formats.
_HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken"]
# Models shipped inside the package (qprune.shipped), by short name: `qprune:NAME` works wherever a model
# path does, with no network, and checkpoints made from one record the short name, not the install path.
SHIPPED_PREFIX = shipped.PREFIX
SHIPPED_MODELS = shipped.MODELS


def shipped_model_dir(source: str) -> Path | None:
    """The directory of a shipped model named `qprune:NAME`; None for any other source. An unknown
    NAME is an error listing the shipped ones."""
    if not source.startswith(SHIPPED_PREFIX):
        return None
    name = source.removeprefix(SHIPPED_PREFIX)
    if name not in SHIPPED_MODELS:
        shipped = ", ".join(SHIPPED_PREFIX + known for known in SHIPPED_MODELS)
        raise QpruneError(f"{source} is not a model qprune ships; it ships: {shipped}")
    return SHIPPED_MODELS[name]


def resolve_model_dir(source: str) -> Path:
    """A local model directory for `source`: a directory, a shipped model (`qprune:qwen3-pydocs`), or a
    hub id, downloaded."""
    shipped = shipped_model_dir(str(source))
    if shipped is not None:
        return shipped
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QpruneError(f"{source} is a file, not a model directory")
        return path
    if not _HUB_ID.match(source):
        raise QpruneError(f"{source} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=_HUB_PATTERNS))
    except Exception as error:  # offline, unknown repo, gated, network: all end the same way for the user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise QpruneError(
            f"{source} is not a local directory and could not be downloaded from the Hugging Face Hub "
            f"({reason}). If you are offline, pass the path of a local copy."
        ) from None


def portable_name(source: str | Path | Checkpoint) -> str:
    """How a model card or config names where a model came from, without a user's directory layout:
    the hub id when `source` is one (or a hub-cache copy of one), the short name of a shipped model
    (`qprune:qwen3-pydocs`, also when given by its directory), else the directory's name."""
    source = str(source)  # a Checkpoint: what the user named
    if shipped_model_dir(source) is not None:
        return source
    path = Path(source).expanduser()
    for name, directory in SHIPPED_MODELS.items():
        if path.exists() and path.resolve() == directory:
            return SHIPPED_PREFIX + name
    if not path.exists() and _HUB_ID.match(source):
        return source
    for part in reversed(path.absolute().parts):
        cached = re.fullmatch(r"models--([^/]+?)--(.+)", part)  # huggingface_hub's cache layout
        if cached:
            return f"{cached.group(1)}/{cached.group(2)}"
    return path.absolute().name


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise QpruneError(f"{model_dir} is not a model directory: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise QpruneError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise QpruneError(f"{path} is not a JSON object")
    return config


# The fields qprune reads in every family, and what each must be where config.json states it (a
# family's own fields: `Family.config_checks`; num_hidden_layers: first of all, below).
_CONFIG_CHECKS: dict[str, FieldKind] = {
    **dict.fromkeys(("hidden_size", "intermediate_size", "vocab_size", "num_attention_heads"), POSITIVE_INT),
    **dict.fromkeys(("num_key_value_heads", "head_dim", "max_position_embeddings"), OPTIONAL_POSITIVE_INT),
    **dict.fromkeys(("tie_word_embeddings", "use_sliding_window", "attention_bias"), OPTIONAL_BOOL),
    **dict.fromkeys(("qprune_base_model", "dtype", "torch_dtype"), OPTIONAL_STRING),
    **dict.fromkeys(("rms_norm_eps", "rope_theta"), OPTIONAL_POSITIVE_NUMBER),  # read by the model classes
    "layer_types": OPTIONAL_STRINGS,  # its length is checked with the tensors (check_complete)
    "max_window_layers": OPTIONAL_COUNT,
    **dict.fromkeys(("quantization_config", "rope_scaling"), OPTIONAL_OBJECT),
}


def check_config(config: dict, path: Path) -> None:
    """Types and ranges of every config.json field qprune reads; the error names the field."""
    if not is_int(config.get("num_hidden_layers")) or config["num_hidden_layers"] < 1:
        raise QpruneError(f"{path} has no valid num_hidden_layers (a positive integer)")
    family = family_of(config, str(path))
    for name, kind in _CONFIG_CHECKS.items():
        kind.check(config, name, str(path))
    family.check_config(config, str(path))
    Plan.from_config(config, path)  # the plan's fields: sorted lists of distinct layers in range


def read_model_config(model_dir: Path) -> dict:
    """config.json of a supported family's checkpoint (stock or pruned), validated; anything else is
    refused with what it is and which families are supported."""
    config = read_config(model_dir)
    family_of(config, str(model_dir))
    check_config(config, model_dir / "config.json")
    return config


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint directory whose config, safetensors headers and tensor set have been checked: what
    every step of a command takes instead of a path, so nothing is resolved or read twice."""

    dir: Path
    config: dict
    tensors: dict[str, TensorEntry]
    source: str = ""  # as the user named it (a hub id, `qprune:NAME`, a path): for cards and messages
    # What is derived from the files and costs a read to build (the tokenizer): built once, on first use.
    memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def plan(self) -> Plan:
        return Plan.from_config(self.config)

    @property
    def files(self) -> list[Path]:
        return sorted({entry.file for entry in self.tensors.values()})

    @property
    def name(self) -> str:
        """How messages name it: what the user typed."""
        return self.source or str(self.dir)

    def __str__(self) -> str:
        return self.name

    def __fspath__(self) -> str:  # where a library wants a path (transformers, open), the directory
        return str(self.dir)


def open_checkpoint(source: str | Path | Checkpoint, *, complete: bool = True) -> Checkpoint:
    """Resolve `source` (a directory or hub id) and check everything qprune will read from it, before
    anything is written: config.json, the shard index, every safetensors header, and that the tensors
    the checkpoint's plan keeps are all there with the shapes its config implies. A Checkpoint is
    returned as it is: it was checked when it was opened. `complete=False` leaves the tensor set to the
    caller (verify reports a missing tensor as a failed check; it calls `check_complete` after)."""
    if isinstance(source, Checkpoint):
        return source
    model_dir = resolve_model_dir(str(source))
    config = read_model_config(model_dir)
    tensors = read_checkpoint(model_dir)
    if complete:
        check_complete(config, tensors, Plan.from_config(config), model_dir)
    return Checkpoint(model_dir, config, tensors, str(source))


# What a model's weights may be stored as (without a quantization_config): an integer dtype would be
# loaded by casting its raw integers, which is never what the weights meant.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2")


def _blocks(names: list[str]) -> str:
    """The blocks of these tensors as people say them: "attention of layer 1; MLP of layers 2, 3"."""
    layers: dict[str, set[int]] = {"attn": set(), "mlp": set()}
    for name in names:  # tensors `Plan.prunes` picked: its rule, the family-independent one (no config here)
        layer, kind = tensor_block(name)
        layers[kind].add(layer)
    parts = []
    for kind, title in (("attn", "attention"), ("mlp", "MLP")):
        if layers[kind]:
            numbers = sorted(layers[kind])
            parts.append(f"{title} of layer{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}")
    return "; ".join(parts)


def check_pruned_absent(tensors: dict[str, TensorEntry] | list[str], plan: Plan, where: str | Path) -> None:
    """Refuse a checkpoint holding tensors of blocks its own plan prunes (copied back, or a plan edited
    by hand): which weights would count is ambiguous, since loading skips them while a stock export
    would write them where its summary says zeros. The one rule for every command that reads one."""
    pruned = [name for name in tensors if plan.prunes(name)]
    if not pruned:
        return
    more = f" (and {len(pruned) - 1} more)" if len(pruned) > 1 else ""
    raise QpruneError(
        f"{where} holds {pruned[0]}{more} of blocks its plan prunes ({_blocks(pruned)}): a pruned checkpoint "
        "must not hold them. Delete those tensors, or, to use them, remove those layers from "
        "pruned_attn_layers / pruned_mlp_layers in its config.json"
    )


def check_complete(config: dict, tensors: dict[str, TensorEntry], plan: Plan, where: str | Path) -> None:
    """Refuse a checkpoint that lacks a tensor the plan keeps, holds one of the wrong shape or of an
    integer dtype, holds layers beyond `num_hidden_layers`, or holds tensors of blocks the plan prunes."""
    num_layers, family = config["num_hidden_layers"], family_of(config)
    for name in tensors:
        block = family.tensor_block(name)
        if block is not None and block[0] >= num_layers:
            raise QpruneError(
                f"{where} holds {name}, of layer {block[0]}, but its config.json says it has {num_layers} layers"
            )
    check_pruned_absent(tensors, plan, where)
    if config.get("quantization_config") is None:  # pre-quantized weights are packed under other names and shapes
        _check_tensors(config, tensors, plan, where)
    # After the tensors, which say better what is wrong when num_hidden_layers is.
    layer_types = config.get("layer_types")
    if layer_types is not None and len(layer_types) != num_layers:
        raise QpruneError(
            f"{where}: config.json's layer_types must be a list of {num_layers} strings (one per layer), "
            f"not {len(layer_types)}"
        )


def _check_tensors(config: dict, tensors: dict[str, TensorEntry], plan: Plan, where: str | Path) -> None:
    family = family_of(config)
    tied = family.config_field(config, "tie_word_embeddings")
    for name, shape in family.expected_tensors(config).items():
        if plan.prunes(name) or (tied and name == "lm_head.weight" and name not in tensors):
            continue
        if name not in tensors:
            kept = " that its pruning plan keeps" if plan.num_blocks else ""
            raise QpruneError(f"{where} lacks the tensor {name}{kept} (damaged or incomplete checkpoint)")
        if tensors[name].shape != shape:
            raise QpruneError(
                f"{where}: {name} has shape {list(tensors[name].shape)}, but config.json implies {list(shape)}"
            )
        if tensors[name].dtype not in FLOAT_DTYPES:
            raise QpruneError(
                f"{where}: {name} is stored as {tensors[name].dtype}, not a floating-point dtype; its weights "
                "would load as meaningless numbers (a damaged or wrongly converted checkpoint; pre-quantized "
                "weights need a quantization_config in config.json)"
            )
