"""Finding a model to work on: a local directory or a Hugging Face Hub id, and its config.

    model_dir = resolve_model_dir("Qwen/Qwen3-0.6B")   # downloads safetensors, config, tokenizer
    config = read_model_config(model_dir)              # raises unless a supported family's valid config
    checkpoint = open_checkpoint("Qwen/Qwen3-0.6B")    # both, plus every header and tensor checked

Only safetensors are ever downloaded or read; offline use gets an error that says what to do. Every
check raises a `QpruneError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from qprune.arch import family_of, tensor_block
from qprune.errors import QpruneError
from qprune.io.safetensors import TensorEntry, read_checkpoint
from qprune.plan import Plan

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a pruned checkpoint needs from the hub: never pickled weights, never other formats.
_HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


def resolve_model_dir(source: str) -> Path:
    """A local model directory for `source`, downloading it from the hub if it is a hub id."""
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


def portable_name(source: str) -> str:
    """How a model card or config names where a model came from, without a user's directory layout:
    the hub id when `source` is one (or a hub-cache copy of one), else the directory's name."""
    path = Path(source).expanduser()
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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The fields qprune reads, and what each must be when present.
_POSITIVE_INTS = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads")
_OPTIONAL_POSITIVE_INTS = ("num_key_value_heads", "head_dim")
_BOOLS = ("tie_word_embeddings", "use_sliding_window", "attention_bias")
_STRINGS = ("qprune_base_model", "dtype", "torch_dtype")
PLAN_FIELDS = ("pruned_attn_layers", "pruned_mlp_layers")


def check_config(config: dict, path: Path) -> None:
    """Types and ranges of every config.json field qprune reads; the error names the field."""
    if not _is_int(config.get("num_hidden_layers")) or config["num_hidden_layers"] < 1:
        raise QpruneError(f"{path} has no valid num_hidden_layers (a positive integer)")
    family_ints = family_of(config, str(path)).positive_int_fields
    for name in _POSITIVE_INTS + family_ints + _OPTIONAL_POSITIVE_INTS:
        given = (
            name in config if name in _POSITIVE_INTS + family_ints else config.get(name) is not None
        )  # the others may be null
        if given and not (_is_int(config[name]) and config[name] > 0):
            raise QpruneError(f"{path}: {name} must be a positive integer, not {config[name]!r}")
    for names, kind, test in ((_BOOLS, "true or false", bool), (_STRINGS, "a string", str)):
        for name in names:
            if config.get(name) is not None and not isinstance(config[name], test):
                raise QpruneError(f"{path}: {name} must be {kind}, not {config[name]!r}")
    for name in ("num_experts", "num_local_experts"):
        if config.get(name) is not None and not (_is_int(config[name]) and config[name] >= 0):
            raise QpruneError(f"{path}: {name} must be a non-negative integer, not {config[name]!r}")
    num_layers = config["num_hidden_layers"]
    for name in (*PLAN_FIELDS, "mlp_only_layers"):
        layers = config.get(name) or []
        valid = (
            isinstance(layers, list)
            and all(_is_int(i) and 0 <= i < num_layers for i in layers)
            and (layers == sorted(set(layers)) or name == "mlp_only_layers")  # a plan is kept canonical
        )
        if not valid:
            raise QpruneError(
                f"{path}: {name} must be a sorted list of distinct layer numbers in 0..{num_layers - 1}, not {layers!r}"
            )


def read_model_config(model_dir: Path) -> dict:
    """config.json of a supported family's checkpoint (stock or pruned), validated; anything else is
    refused with what it is and which families are supported."""
    config = read_config(model_dir)
    family_of(config, str(model_dir))
    check_config(config, model_dir / "config.json")
    return config


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory whose config, safetensors headers and tensor set have been checked."""

    dir: Path
    config: dict
    tensors: dict[str, TensorEntry]

    @property
    def plan(self) -> Plan:
        return Plan.from_config(self.config)

    @property
    def files(self) -> list[Path]:
        return sorted({entry.file for entry in self.tensors.values()})


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Resolve `source` (a directory or hub id) and check everything qprune will read from it, before
    anything is written: config.json, the shard index, every safetensors header, and that the tensors
    the checkpoint's plan keeps are all there with the shapes its config implies."""
    model_dir = resolve_model_dir(str(source))
    config = read_model_config(model_dir)
    tensors = read_checkpoint(model_dir)
    check_complete(config, tensors, Plan.from_config(config), model_dir)
    return Checkpoint(model_dir, config, tensors)


def check_complete(config: dict, tensors: dict[str, TensorEntry], plan: Plan, where: str | Path) -> None:
    """Refuse a checkpoint that lacks a tensor the plan keeps, holds one of the wrong shape, or holds
    layers beyond `num_hidden_layers`."""
    num_layers = config["num_hidden_layers"]
    for name in tensors:
        block = tensor_block(name)
        if block is not None and block[0] >= num_layers:
            raise QpruneError(
                f"{where} holds {name}, of layer {block[0]}, but its config.json says it has {num_layers} layers"
            )
    if config.get("quantization_config") is not None:
        return  # pre-quantized weights are packed under other names and shapes
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
