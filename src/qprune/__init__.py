"""qprune: prune whole attention and MLP blocks out of Qwen3 models.

    import qprune
    from qprune.plan import Plan

    qprune.prune("Qwen/Qwen3-0.6B", "qwen3-pruned", Plan(attn=(20, 22), mlp=(24,)))
    qprune.heal("qwen3-pruned", "qwen3-healed")               # distil the base back in
    model = qprune.load("qwen3-healed", quantize="int8")   # or qprune.quantize(model, "int8")

Names are imported lazily so that `qprune --help` does not pay for torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "PrunedQwen3Config": "qprune.modeling.configuration_pruned_qwen3",
    "PrunedLinear": "qprune.modeling.modeling_pruned_qwen3",
    "PrunedQwen3DecoderLayer": "qprune.modeling.modeling_pruned_qwen3",
    "PrunedQwen3ForCausalLM": "qprune.modeling.modeling_pruned_qwen3",
    "PrunedQwen3Model": "qprune.modeling.modeling_pruned_qwen3",
    "Plan": "qprune.plan",
    "HealSettings": "qprune.heal",
    "QpruneError": "qprune.errors",
    "heal": "qprune.heal",
    "load": "qprune.loading",
    "lora_config": "qprune.lora",
    "pruned_modules": "qprune.lora",
    "prune": "qprune.pruning",
    "quantize": "qprune.quantization",
    "verify": "qprune.verification",
}
__all__ = [
    "HealSettings",
    "Plan",
    "PrunedLinear",
    "PrunedQwen3Config",
    "PrunedQwen3DecoderLayer",
    "PrunedQwen3ForCausalLM",
    "PrunedQwen3Model",
    "QpruneError",
    "heal",
    "load",
    "lora_config",
    "prune",
    "pruned_modules",
    "quantize",
    "verify",
]

if TYPE_CHECKING:
    from .errors import QpruneError
    from .heal import HealSettings, heal
    from .loading import load
    from .lora import lora_config, pruned_modules
    from .modeling.configuration_pruned_qwen3 import PrunedQwen3Config
    from .modeling.modeling_pruned_qwen3 import (
        PrunedLinear,
        PrunedQwen3DecoderLayer,
        PrunedQwen3ForCausalLM,
        PrunedQwen3Model,
    )
    from .plan import Plan
    from .pruning import prune
    from .quantization import quantize
    from .verification import verify


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'qprune' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
