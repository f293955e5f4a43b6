"""qprune: prune whole attention and MLP blocks out of Qwen3 models.

    import qprune
    from qprune.plan import Plan

    qprune.prune("Qwen/Qwen3-0.6B", "qwen3-pruned", Plan(attn=(20, 22), mlp=(24,)))
    qprune.patch("Qwen/Qwen3-0.6B", "qwen3-patched", Plan(mlp=(24,)))  # a fitted correction, no training
    qprune.heal("qwen3-pruned", "qwen3-healed")               # distil the base back in
    qprune.export("qwen3-healed", "qwen3-healed-stock")      # an exact stock Qwen3, for any engine
    model = qprune.load("qwen3-healed", quantize="int8")   # or qprune.quantize(model, "int8")

Names are imported lazily so that `qprune --help` does not pay for torch and transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "PrunedQwen3Config": "qprune.modeling.configuration_pruned_qwen3",
    "PrunedLinear": "qprune.modeling.pruned_blocks",
    "PrunedQwen3MoeConfig": "qprune.modeling.configuration_pruned_qwen3_moe",
    "PrunedQwen3MoeForCausalLM": "qprune.modeling.modeling_pruned_qwen3_moe",
    "PrunedQwen3DecoderLayer": "qprune.modeling.modeling_pruned_qwen3",
    "PrunedQwen3ForCausalLM": "qprune.modeling.modeling_pruned_qwen3",
    "PrunedQwen3Model": "qprune.modeling.modeling_pruned_qwen3",
    "Plan": "qprune.plan",
    "Checkpoint": "qprune.io.source",
    "open_checkpoint": "qprune.io.source",
    "HealSettings": "qprune.healing.settings",
    "PatchSettings": "qprune.measure.patch",
    "patch": "qprune.ops.patch",
    "QpruneError": "qprune.errors",
    "export": "qprune.ops.export",
    "heal": "qprune.healing.distill",
    "load": "qprune.runtime.load",
    "lora_config": "qprune.healing.lora",
    "pruned_modules": "qprune.healing.lora",
    "prune": "qprune.ops.prune",
    "quantize": "qprune.runtime.quantize",
    "verify": "qprune.measure.verify",
}
__all__ = [
    "Checkpoint",
    "HealSettings",
    "PatchSettings",
    "Plan",
    "PrunedLinear",
    "PrunedQwen3Config",
    "PrunedQwen3DecoderLayer",
    "PrunedQwen3ForCausalLM",
    "PrunedQwen3Model",
    "PrunedQwen3MoeConfig",
    "PrunedQwen3MoeForCausalLM",
    "QpruneError",
    "export",
    "heal",
    "load",
    "lora_config",
    "open_checkpoint",
    "patch",
    "prune",
    "pruned_modules",
    "quantize",
    "verify",
]

if TYPE_CHECKING:
    from qprune.errors import QpruneError
    from qprune.healing.distill import heal
    from qprune.healing.lora import lora_config, pruned_modules
    from qprune.healing.settings import HealSettings
    from qprune.measure.patch import PatchSettings
    from qprune.measure.verify import verify
    from qprune.modeling.configuration_pruned_qwen3 import PrunedQwen3Config
    from qprune.modeling.configuration_pruned_qwen3_moe import PrunedQwen3MoeConfig
    from qprune.modeling.modeling_pruned_qwen3 import (
        PrunedQwen3DecoderLayer,
        PrunedQwen3ForCausalLM,
        PrunedQwen3Model,
    )
    from qprune.modeling.modeling_pruned_qwen3_moe import PrunedQwen3MoeForCausalLM
    from qprune.modeling.pruned_blocks import PrunedLinear
    from qprune.ops.export import export
    from qprune.ops.patch import patch
    from qprune.ops.prune import prune
    from qprune.plan import Plan
    from qprune.runtime.load import load
    from qprune.runtime.quantize import quantize


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'qprune' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
