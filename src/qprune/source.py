"""Finding a model to work on: a local directory or a Hugging Face Hub id, and its Qwen3 config.

    model_dir = resolve_model_dir("Qwen/Qwen3-0.6B")   # downloads safetensors, config, tokenizer
    config = read_qwen3_config(model_dir)              # raises unless it is a (pruned) Qwen3

Only safetensors are ever downloaded or read; offline use gets an error that says what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import QpruneError

QWEN3_TYPES = ("qwen3", "pruned_qwen3")
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


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.exists():
        raise QpruneError(f"{model_dir} is not a model directory: it has no config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise QpruneError(f"{path} is not valid JSON: {error}") from None


def read_qwen3_config(model_dir: Path) -> dict:
    """config.json of a Qwen3 or qprune checkpoint; anything else is refused with what it is."""
    config = read_config(model_dir)
    model_type = config.get("model_type")
    if model_type not in QWEN3_TYPES:
        raise QpruneError(f"{model_dir} holds a {model_type or 'model of unknown type'} model, not a Qwen3")
    if not isinstance(config.get("num_hidden_layers"), int) or config["num_hidden_layers"] < 1:
        raise QpruneError(f"{model_dir}/config.json has no valid num_hidden_layers")
    return config
