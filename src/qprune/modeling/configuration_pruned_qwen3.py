"""Configuration of a Qwen3 with whole attention or MLP blocks pruned.

`PrunedQwen3Config` is a `Qwen3Config` that keeps every architecture field of the source model and
adds the pruning plan: which layers' attention block and which layers' MLP block are gone. Its
`model_type` is our own, so stock transformers can never mistake a pruned checkpoint for a dense
Qwen3 (which would fill the missing weights with random values and print garbage).

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

from transformers import Qwen3Config

from .pruned_blocks import PlanConfigMixin, tensor_block

__all__ = ["PrunedQwen3Config", "tensor_block"]


class PrunedQwen3Config(PlanConfigMixin, Qwen3Config):
    model_type = "pruned_qwen3"

    # Defined here, not only in the mixin: transformers 5.x generates an __init__ for a config
    # subclass that declares none, and that one would never set the plan.
    def __init__(
        self, pruned_attn_layers: list[int] | None = None, pruned_mlp_layers: list[int] | None = None, **kwargs
    ):
        PlanConfigMixin.__init__(self, pruned_attn_layers, pruned_mlp_layers, **kwargs)
