"""Configuration of a Qwen3-MoE with whole attention or MLP blocks pruned.

`PrunedQwen3MoeConfig` is a `Qwen3MoeConfig` that keeps every architecture field of the source model
and adds the pruning plan. A pruned MLP block is the layer's whole feed-forward block: a sparse MoE
block (router and every expert) or, in `mlp_only_layers`, a dense MLP.

`layer_num_experts` (one count per layer, 0 for a layer with a dense MLP) is set when an expert cut left
different numbers of experts in different layers; `num_experts` is then the largest. None: every MoE
layer has `num_experts`.

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
        self,
        pruned_attn_layers: list[int] | None = None,
        pruned_mlp_layers: list[int] | None = None,
        layer_num_experts: list[int] | None = None,
        **kwargs,
    ):
        self.layer_num_experts = [int(n) for n in layer_num_experts] if layer_num_experts else None
        PlanConfigMixin.__init__(self, pruned_attn_layers, pruned_mlp_layers, **kwargs)
        counts = self.layer_num_experts
        if counts is not None and len(counts) != self.num_hidden_layers:
            raise ValueError(f"layer_num_experts has {len(counts)} counts for {self.num_hidden_layers} layers")
        for layer, count in enumerate(counts or ()):
            if count and not self.num_experts_per_tok <= count <= self.num_experts:
                raise ValueError(
                    f"layer_num_experts gives layer {layer} {count} experts: not between num_experts_per_tok "
                    f"({self.num_experts_per_tok}) and num_experts ({self.num_experts})"
                )

    def experts_of(self, layer: int) -> int:
        """The experts of `layer`'s MoE block."""
        return self.layer_num_experts[layer] if self.layer_num_experts else self.num_experts
