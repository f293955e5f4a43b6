"""Configuration of a Qwen3-MoE with whole attention or MLP blocks pruned.

`PrunedQwen3MoeConfig` is a `Qwen3MoeConfig` that keeps every architecture field of the source model
and adds the pruning plan. A pruned MLP block is the layer's whole feed-forward block: a sparse MoE
block (router and every expert) or, in `mlp_only_layers`, a dense MLP.

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

from transformers import Qwen3MoeConfig

from .pruned_blocks import PlanConfigMixin


class PrunedQwen3MoeConfig(PlanConfigMixin, Qwen3MoeConfig):
    model_type = "pruned_qwen3_moe"

    # Defined here, not only in the mixin: transformers 5.x generates an __init__ for a config
    # subclass that declares none, and that one would never set the plan.
    def __init__(
        self, pruned_attn_layers: list[int] | None = None, pruned_mlp_layers: list[int] | None = None, **kwargs
    ):
        PlanConfigMixin.__init__(self, pruned_attn_layers, pruned_mlp_layers, **kwargs)
