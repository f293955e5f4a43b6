"""A pruned checkpoint as its stock family's (Qwen3, Qwen3-MoE): the config and the tensors that a stock
model of the same function loads. `qprune export` writes them; `verify`'s self-oracle loads them into
stock transformers, so both build the stock model from one place, below both.

    entries = stock_tensors(checkpoint, kept_layers=[0, 2, 3], zero_blocks=Plan(attn=(2,)))
    config = stock_config(checkpoint.config, kept_layers=[0, 2, 3])

- kept layers are renumbered (`num_hidden_layers`, `layer_types`, `max_window_layers` follow), and a
  layer left out is gone;
- a block in `zero_blocks` is written as zeros: with its output projection zero it adds nothing to the
  residual stream, which is what skipping it computes.

Headers only: kept tensors are `TensorEntry`s pointing into the checkpoint's shards, zeros are described,
not made. No torch here.
"""

from __future__ import annotations

import re

from qprune.arch import family_of
from qprune.io.safetensors import TensorEntry
from qprune.plan import Plan

_QPRUNE_FIELDS = (
    "auto_map", "pruned_attn_layers", "pruned_mlp_layers", "qprune_base_model", "qprune_base_path", "_name_or_path",
)  # fmt: skip
_LAYER_PREFIX = re.compile(r"^model\.layers\.(\d+)\.")


def stock_config(config: dict, kept_layers: list[int]) -> dict:
    """The pruned checkpoint's config.json as its stock family's with only `kept_layers` (renumbered)."""
    family = family_of(config)
    out = {k: v for k, v in config.items() if k not in _QPRUNE_FIELDS}
    out.update(model_type=family.model_type, architectures=[family.stock_class], num_hidden_layers=len(kept_layers))
    out.update(family.renumbered_fields(config, kept_layers))
    if isinstance(config.get("layer_types"), list):
        out["layer_types"] = [config["layer_types"][i] for i in kept_layers]
    if isinstance(config.get("max_window_layers"), int):
        out["max_window_layers"] = sum(1 for i in kept_layers if i < config["max_window_layers"])
    return dict(sorted(family.portable_config(out).items()))


def _renamed(name: str, new_index: dict[int, int]) -> str:
    match = _LAYER_PREFIX.match(name)
    return name if match is None else f"model.layers.{new_index[int(match.group(1))]}.{name[match.end() :]}"


def stock_tensors(
    checkpoint, kept_layers: list[int], zero_blocks: Plan, config: dict | None = None
) -> list[TensorEntry]:
    """The export's tensors in layer order: kept ones copied under new names, zero-filled blocks as zeros
    (in the dtype the same tensor has in kept layers, else the embedding's), shaped as `config` (by
    default the checkpoint's) says."""
    config = checkpoint.config if config is None else config
    new_index = {old: new for new, old in enumerate(kept_layers)}
    dtypes: dict[str, str] = {}
    for name, entry in checkpoint.tensors.items():
        dtypes.setdefault(_LAYER_PREFIX.sub("", name), entry.dtype)
    default_dtype = checkpoint.tensors["model.embed_tokens.weight"].dtype
    entries = []
    for name, shape in family_of(config).expected_tensors(config).items():
        match = _LAYER_PREFIX.match(name)
        if match is not None and int(match.group(1)) not in new_index:
            continue  # a removed layer
        if name in checkpoint.tensors:
            entries.append(checkpoint.tensors[name])
        elif zero_blocks.prunes(name):
            entries.append(TensorEntry.zeros(name, dtypes.get(_LAYER_PREFIX.sub("", name), default_dtype), shape))
        # else: lm_head.weight of a tied checkpoint, which stays tied
    return [TensorEntry(_renamed(e.name, new_index), e.file, e.dtype, e.shape, e.start, e.end) for e in entries]
