"""A Qwen3 causal LM that skips pruned attention and MLP blocks.

The module tree is exactly stock Qwen3's, so every tensor name and every tool that walks the model
keeps working. A pruned block is skipped by a flag (`prune_self_attn`, `prune_mlp`) and the residual
stream carries the signal past it, which is what a block with a zero output projection computes.
Blocks pruned by the config's plan hold no parameters at all (each one is registered as None, and
their Linears are `PrunedLinear` placeholders that quantizers pass by), so a model loaded from a slim
checkpoint spends no memory on them. Flipping the flags on a model that holds
every weight computes the pruned function without removing anything (scan and verify rely on that).

KV cache: the surviving attention layers write compact cache slots 0..K-1. transformers reads the
sequence length from slot 0; if that slot belonged to a pruned layer it would stay empty and cached
generation would silently diverge from uncached generation.

Loading: a tensor that the plan keeps but the checkpoint lacks is an error naming it, on
`from_pretrained` and on `load_state_dict` alike (transformers itself would fill it with random values
and only log a line). Tensors of pruned blocks found in a checkpoint are skipped, with one message.

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

import json
import struct

import torch
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)
from transformers.utils import cached_file, logging

from .configuration_pruned_qwen3 import PrunedQwen3Config

# Under transformers' logger tree (as its own models are), so its verbosity settings and handler apply
# whether this file runs from qprune or as remote code in a checkpoint.
logger = logging.get_logger("transformers.models.pruned_qwen3")


class MissingTensorsError(ValueError):
    """The checkpoint lacks tensors that the pruning plan keeps."""


class PrunedLinear(nn.Module):
    """Stands where a pruned block's `nn.Linear` was: same name and features, no weight.

    It is deliberately not an `nn.Linear`: quantizers (bitsandbytes, torchao, ... through
    transformers' `quantization_config`) replace every `nn.Linear` they find with a quantized one whose
    weight the checkpoint cannot fill, so transformers would initialise it at random and quantize it.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this Linear belongs to a pruned block: it has no weight and never runs")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, pruned"


def _release_parameters(*modules: nn.Module) -> None:
    # Registering None keeps the attribute (and the module tree) but leaves it out of
    # parameters() and state_dict(), so nothing is allocated, loaded or reported missing.
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, PrunedLinear(child.in_features, child.out_features))
        for sub in module.modules():
            for name in list(sub._parameters):
                sub.register_parameter(name, None)


class PrunedQwen3DecoderLayer(Qwen3DecoderLayer):
    """A full `Qwen3DecoderLayer` whose attention and MLP blocks can each be skipped."""

    def __init__(self, config: PrunedQwen3Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.layer_idx = layer_idx
        self.prune_self_attn = layer_idx in getattr(config, "pruned_attn_layers", ())
        self.prune_mlp = layer_idx in getattr(config, "pruned_mlp_layers", ())
        if self.prune_self_attn:
            _release_parameters(self.self_attn, self.input_layernorm)
        if self.prune_mlp:
            _release_parameters(self.mlp, self.post_attention_layernorm)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        # kwargs (mask, positions, cache under its version-specific name) go to attention untouched.
        if not self.prune_self_attn:
            attn_out, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            hidden_states = hidden_states + attn_out
        if not self.prune_mlp:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class PrunedQwen3PreTrainedModel(Qwen3PreTrainedModel):
    config_class = PrunedQwen3Config
    _no_split_modules = ["PrunedQwen3DecoderLayer"]  # noqa: RUF012 (transformers' convention)

    def _init_weights(self, module: nn.Module) -> None:
        if _released(module):
            return  # a pruned block's module: it has nothing to initialise
        super()._init_weights(module)


class PrunedQwen3Model(PrunedQwen3PreTrainedModel, Qwen3Model):
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

    def assign_cache_slots(self) -> None:
        """Give the attention layers that run compact KV-cache slots 0..K-1, in layer order."""
        slot = 0
        for layer in self.layers:
            if not layer.prune_self_attn:
                layer.self_attn.layer_idx = slot
                slot += 1

    def forward(self, *args, **kwargs):
        # Flags may have been flipped since the last call (functional pruning); slots follow them.
        self.assign_cache_slots()
        return super().forward(*args, **kwargs)


class PrunedQwen3ForCausalLM(PrunedQwen3PreTrainedModel, Qwen3ForCausalLM):
    def __init__(self, config: PrunedQwen3Config) -> None:
        Qwen3PreTrainedModel.__init__(self, config)
        self.model = PrunedQwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Pruned blocks' tensors in a checkpoint are skipped; we say so once ourselves (from_pretrained),
        # rather than transformers listing each one as unexpected.
        self._keys_to_ignore_on_load_unexpected = _pruned_tensor_patterns(config)
        self.post_init()

    def set_pruned(self, attn: list[int] | None = None, mlp: list[int] | None = None) -> None:
        """Skip exactly these blocks from now on (functional pruning; weights stay where they are)."""
        attn, mlp = set(attn or ()), set(mlp or ())
        for i, layer in enumerate(self.model.layers):
            blocks = (
                (i in attn, layer.self_attn, layer.input_layernorm),
                (i in mlp, layer.mlp, layer.post_attention_layernorm),
            )
            for skip, *modules in blocks:
                if not skip and any(_released(sub) for m in modules for sub in m.modules()):
                    raise ValueError(f"layer {i}: cannot un-prune a block whose weights were never loaded")
        for i, layer in enumerate(self.model.layers):
            layer.prune_self_attn, layer.prune_mlp = i in attn, i in mlp

    # -- loading: a kept tensor that is missing is an error, never random values -----------------

    def _kept_missing(self, missing_keys) -> list[str]:
        tied = self.lm_head.weight is self.model.embed_tokens.weight
        return sorted(k for k in missing_keys if not (tied and k == "lm_head.weight"))

    def _report_pruned_present(self, keys) -> list[str]:
        pruned = [k for k in keys if self.config.is_pruned_tensor(k)]
        if pruned:
            logger.warning(
                f"{len(pruned)} tensors of pruned blocks are present in the checkpoint; they were not loaded."
            )
        return pruned

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = model._kept_missing(info["missing_keys"])
        if missing:
            raise MissingTensorsError(_missing_message(missing))
        model._report_pruned_present(
            _checkpoint_tensor_names(args[0] if args else kwargs["pretrained_model_name_or_path"])
        )
        return (model, info) if want_info else model

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        pruned = set(self._report_pruned_present(state_dict))
        kept = {k: v for k, v in state_dict.items() if k not in pruned}
        result = super().load_state_dict(kept, strict=False, assign=assign)
        missing = self._kept_missing(result.missing_keys)
        if missing:
            raise MissingTensorsError(_missing_message(missing))
        if strict and result.unexpected_keys:
            raise ValueError(f"unexpected tensors in state dict: {', '.join(result.unexpected_keys)}")
        return result._replace(missing_keys=missing)


def _pruned_tensor_patterns(config: PrunedQwen3Config) -> list[str]:
    blocks = [
        (config.pruned_attn_layers, "self_attn|input_layernorm"),
        (config.pruned_mlp_layers, "mlp|post_attention_layernorm"),
    ]
    return [rf"(^|\.)layers\.({'|'.join(map(str, layers))})\.({names})\." for layers, names in blocks if layers]


def _checkpoint_tensor_names(path) -> list[str]:
    """Tensor names of a safetensors checkpoint (local or already fetched from the hub), from its index
    or header alone."""
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        with open(index) as f:
            return list(json.load(f)["weight_map"])
    single = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False)
    if single:
        with open(single, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            return [name for name in json.loads(f.read(header_size)) if name != "__metadata__"]
    return []


def _released(module: nn.Module) -> bool:
    # Every Linear and RMSNorm has a weight; only a pruned block's modules have it set to None.
    return "weight" in module._parameters and module._parameters["weight"] is None


def _missing_message(missing: list[str]) -> str:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f"the checkpoint lacks {len(missing)} tensors that the pruning plan keeps: {shown}"


PrunedQwen3Config.register_for_auto_class()
PrunedQwen3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
