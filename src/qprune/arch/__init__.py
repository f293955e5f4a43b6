"""The model families qprune prunes, each described as data (`family.Family`), one file per family.

from qprune.arch import family_of
family = family_of(config)        # Qwen3 or Qwen3-MoE, from config.json's model_type
family.tensor_block(name), family.attention_prunable(config), family.check_config(config, where), ...

`tensor_block` is exported too, for callers holding a tensor name and no config (`Plan.prunes`):
every family names its blocks the same way (see `family.tensor_block`).
"""

from __future__ import annotations

from qprune.arch.family import SLIDING_WINDOW_ATTENTION, Family, family_for, tensor_block
from qprune.arch.qwen3 import QWEN3
from qprune.arch.qwen3_moe import QWEN3_MOE

FAMILIES: tuple[Family, ...] = (QWEN3, QWEN3_MOE)
MODEL_TYPES = tuple(t for f in FAMILIES for t in (f.model_type, f.pruned_model_type))

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "SLIDING_WINDOW_ATTENTION",
    "Family",
    "family_of",
    "tensor_block",
]


def family_of(config: dict, where: str = "the model") -> Family:
    """The family of a config.json (stock or pruned model_type); an unsupported one names those supported."""
    return family_for(config, FAMILIES, where)


def shape_names() -> dict:
    """Every family's bench shapes by name."""
    return {name: fields for family in FAMILIES for name, fields in family.bench_shapes.items()}
