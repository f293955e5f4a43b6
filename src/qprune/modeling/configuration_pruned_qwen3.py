"""Configuration of a Qwen3 with whole attention or MLP blocks pruned.

`PrunedQwen3Config` is a `Qwen3Config` that keeps every architecture field of the source model and
adds the pruning plan: which layers' attention block and which layers' MLP block are gone. Its
`model_type` is our own, so stock transformers can never mistake a pruned checkpoint for a dense
Qwen3 (which would fill the missing weights with random values and print garbage).

After a width cut that is not the same in every layer, `layer_intermediate_size` and
`layer_num_key_value_heads` give each layer's MLP channels and KV heads (its query heads keep the
global ratio to them); `intermediate_size`, `num_key_value_heads` and `num_attention_heads` are then
the largest. None: every layer has the global sizes.

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
        self,
        pruned_attn_layers: list[int] | None = None,
        pruned_mlp_layers: list[int] | None = None,
        layer_intermediate_size: list[int] | None = None,
        layer_num_key_value_heads: list[int] | None = None,
        **kwargs,
    ):
        self.layer_intermediate_size = [int(n) for n in layer_intermediate_size] if layer_intermediate_size else None
        self.layer_num_key_value_heads = (
            [int(n) for n in layer_num_key_value_heads] if layer_num_key_value_heads else None
        )
        PlanConfigMixin.__init__(self, pruned_attn_layers, pruned_mlp_layers, **kwargs)
        for name, top in (
            ("layer_intermediate_size", self.intermediate_size),
            ("layer_num_key_value_heads", self.num_key_value_heads),
        ):
            sizes = getattr(self, name)
            if sizes is not None and len(sizes) != self.num_hidden_layers:
                raise ValueError(f"{name} has {len(sizes)} sizes for {self.num_hidden_layers} layers")
            bad = [i for i, n in enumerate(sizes or ()) if not 0 < n <= top]
            if bad:
                raise ValueError(f"{name} gives layer {bad[0]} {sizes[bad[0]]}: not between 1 and {top}")

    def widths_of(self, layer: int) -> dict[str, int]:
        """`layer`'s sizes, as the config fields a stock Qwen3 layer is built from."""
        kv_heads = self.layer_num_key_value_heads[layer] if self.layer_num_key_value_heads else self.num_key_value_heads
        return {
            "intermediate_size": (
                self.layer_intermediate_size[layer] if self.layer_intermediate_size else self.intermediate_size
            ),
            "num_key_value_heads": kv_heads,
            "num_attention_heads": kv_heads * (self.num_attention_heads // self.num_key_value_heads),
        }
