"""A Qwen3 causal LM that skips pruned attention and MLP blocks.

The module tree is exactly stock Qwen3's, so every tensor name and every tool that walks the model
keeps working. A pruned block is skipped by a flag (`prune_self_attn`, `prune_mlp`) and the residual
stream carries the signal past it, which is what a block with a zero output projection computes.
Blocks pruned by the config's plan hold no parameters at all (each one is registered as None, and
their Linears are `PrunedLinear` placeholders that quantizers pass by), so a model loaded from a slim
checkpoint spends no memory on them. Flipping the flags on a model that holds every weight computes
the pruned function without removing anything (scan and verify rely on that). The mechanics (flags,
compact KV-cache slots, loading that refuses a missing kept tensor) live in `pruned_blocks.py`.
After a width cut that differs between layers, each layer is built at its own sizes
(`config.widths_of(layer)`): nothing of a removed MLP channel or KV head is stored or allocated.

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

import contextlib

from torch import nn
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

from .configuration_pruned_qwen3 import PrunedQwen3Config
from .pruned_blocks import (
    CompactCacheMixin,
    MissingTensorsError,
    PrunableLayerMixin,
    PrunedInitMixin,
    PrunedLinear,
    SafeLoadingMixin,
    pruned_tensor_patterns,
)

__all__ = [
    "MissingTensorsError",
    "PrunedLinear",
    "PrunedQwen3DecoderLayer",
    "PrunedQwen3ForCausalLM",
    "PrunedQwen3Model",
]


class PrunedQwen3DecoderLayer(PrunableLayerMixin, Qwen3DecoderLayer):
    """A full `Qwen3DecoderLayer` whose attention and MLP blocks can each be skipped."""

    def __init__(self, config: PrunedQwen3Config, layer_idx: int) -> None:
        with widths_as(config, config.widths_of(layer_idx)):
            super().__init__(config, layer_idx)
        self.init_pruning(config, layer_idx)


@contextlib.contextmanager
def widths_as(config, sizes: dict[str, int]):
    """The config reads `sizes` (`intermediate_size`, `num_key_value_heads`, `num_attention_heads`)
    while a layer is built: stock modules size their projections from them at construction and keep
    their own head counts (the forward infers them from shapes), in transformers 4.x, 5.x and vLLM."""
    saved = {name: getattr(config, name) for name in sizes}
    for name, value in sizes.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


class PrunedQwen3PreTrainedModel(PrunedInitMixin, Qwen3PreTrainedModel):
    config_class = PrunedQwen3Config
    _no_split_modules = ["PrunedQwen3DecoderLayer"]  # noqa: RUF012 (transformers' convention)


class PrunedQwen3Model(CompactCacheMixin, PrunedQwen3PreTrainedModel, Qwen3Model):
    def __init__(self, config: PrunedQwen3Config) -> None:
        # Qwen3Model.__init__ would first build (and allocate) stock layers; build ours directly.
        Qwen3PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [PrunedQwen3DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        if self.has_sliding_layers and config.pruned_attn_layers:
            # Cache slots are typed by position; compacting them would mix sliding and full layers.
            raise ValueError("pruning attention blocks of a sliding-window Qwen3 is not supported")
        self.post_init()


class PrunedQwen3ForCausalLM(SafeLoadingMixin, PrunedQwen3PreTrainedModel, Qwen3ForCausalLM):
    def __init__(self, config: PrunedQwen3Config) -> None:
        Qwen3PreTrainedModel.__init__(self, config)
        self.model = PrunedQwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Pruned blocks' tensors in a checkpoint are skipped; we say so once ourselves (from_pretrained),
        # rather than transformers listing each one as unexpected.
        self._keys_to_ignore_on_load_unexpected = pruned_tensor_patterns(config)
        self.post_init()


PrunedQwen3Config.register_for_auto_class()
PrunedQwen3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
