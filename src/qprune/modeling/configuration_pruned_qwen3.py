"""Configuration of a Qwen3 with whole attention or MLP blocks pruned.

`PrunedQwen3Config` is a `Qwen3Config` that keeps every architecture field of the source model and
adds the pruning plan: which layers' attention block and which layers' MLP block are gone. Its
`model_type` is our own, so stock transformers can never mistake a pruned checkpoint for a dense
Qwen3 (which would fill the missing weights with random values and print garbage).

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

import re

from transformers import Qwen3Config

# A block's tensors: attention is `self_attn.*` plus the norm in front of it; the MLP likewise.
_BLOCK_OF_SUBMODULE = {
    "self_attn": "attn",
    "input_layernorm": "attn",
    "mlp": "mlp",
    "post_attention_layernorm": "mlp",
}
_LAYER_TENSOR = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|input_layernorm|mlp|post_attention_layernorm)\.")


def tensor_block(name: str) -> tuple[int, str] | None:
    """The block a tensor belongs to, as (layer, "attn" | "mlp"), or None for tensors outside blocks."""
    match = _LAYER_TENSOR.search(name)
    if match is None:
        return None
    return int(match.group(1)), _BLOCK_OF_SUBMODULE[match.group(2)]


class PrunedQwen3Config(Qwen3Config):
    model_type = "pruned_qwen3"

    def __init__(
        self,
        pruned_attn_layers: list[int] | None = None,
        pruned_mlp_layers: list[int] | None = None,
        **kwargs,
    ) -> None:
        self.pruned_attn_layers = sorted({int(i) for i in pruned_attn_layers or []})
        self.pruned_mlp_layers = sorted({int(i) for i in pruned_mlp_layers or []})
        super().__init__(**kwargs)
        for kind, layers in (("attention", self.pruned_attn_layers), ("MLP", self.pruned_mlp_layers)):
            bad = [i for i in layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(
                    f"pruned {kind} layers {bad} are out of range: the model has "
                    f"{self.num_hidden_layers} layers (0..{self.num_hidden_layers - 1})"
                )

    def is_pruned_tensor(self, name: str) -> bool:
        """Whether a checkpoint tensor belongs to a block this plan prunes."""
        block = tensor_block(name)
        if block is None:
            return False
        layer, kind = block
        return layer in (self.pruned_attn_layers if kind == "attn" else self.pruned_mlp_layers)
