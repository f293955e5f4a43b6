"""What every pruned family's modeling shares: skipping blocks by flag, holding nothing for pruned
blocks, compact KV-cache slots, and loading that refuses a missing kept tensor.

A family's modeling file builds its classes from these mixins and its stock transformers classes:

    class PrunedQwen3DecoderLayer(PrunableLayerMixin, Qwen3DecoderLayer): ...
    class PrunedQwen3Model(CompactCacheMixin, PrunedQwen3PreTrainedModel, Qwen3Model): ...
    class PrunedQwen3ForCausalLM(SafeLoadingMixin, PrunedQwen3PreTrainedModel, Qwen3ForCausalLM): ...

A layer has two blocks. Attention is `self_attn.*` plus `input_layernorm`, the norm in front of it;
the MLP (dense, or a sparse MoE block with its router and experts) is `mlp.*` plus
`post_attention_layernorm`. Pruning a block removes exactly these tensors.

KV cache: the surviving attention layers write compact cache slots 0..K-1. transformers reads the
sequence length from slot 0; if that slot belonged to a pruned layer it would stay empty and cached
generation would silently diverge from uncached generation.

Loading: a tensor that the plan keeps but the checkpoint lacks is an error naming it, on
`from_pretrained` and on `load_state_dict` alike (transformers itself would fill it with random values
and only log a line), named as the checkpoint names it in every transformers version (5.x fuses
per-expert tensors into 3-D parameters, and fails its conversion when one is missing). A checkpoint
holding tensors of blocks its plan prunes is refused by `from_pretrained`, as qprune refuses it (which
weights count would be ambiguous); `load_state_dict` of an in-memory state dict skips them, with one
message.

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

import json
import re
import struct

import torch
from torch import nn
from transformers.utils import cached_file, logging

# Under transformers' logger tree (as its own models are), so its verbosity settings and handler apply
# whether this file runs from qprune or as remote code in a checkpoint.
logger = logging.get_logger("transformers.models.pruned_qwen3")

_LAYER_TENSOR = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|input_layernorm|mlp|post_attention_layernorm)\.")
_ATTN_SUBMODULES = ("self_attn", "input_layernorm")


def tensor_block(name: str) -> tuple[int, str] | None:
    """The block a tensor belongs to, as (layer, "attn" | "mlp"), or None for tensors outside blocks."""
    match = _LAYER_TENSOR.search(name)
    if match is None:
        return None
    return int(match.group(1)), "attn" if match.group(2) in _ATTN_SUBMODULES else "mlp"


class PlanConfigMixin:
    """The pruning plan on a stock config class: `pruned_attn_layers` and `pruned_mlp_layers`, checked
    against the depth. `class PrunedQwen3Config(PlanConfigMixin, Qwen3Config)` is a whole config."""

    def __init__(
        self, pruned_attn_layers: list[int] | None = None, pruned_mlp_layers: list[int] | None = None, **kwargs
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


class MissingTensorsError(ValueError):
    """The checkpoint lacks tensors that the pruning plan keeps."""


class PrunedTensorsPresentError(ValueError):
    """The checkpoint holds tensors of blocks that its pruning plan prunes."""


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


def release_parameters(*modules: nn.Module) -> None:
    """Registering None keeps each attribute (and the module tree) but leaves it out of parameters()
    and state_dict(), so nothing is allocated, loaded or reported missing. Fused expert tensors (3-D
    parameters, not Linears) are released the same way."""
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, PrunedLinear(child.in_features, child.out_features))
        for sub in module.modules():
            for name in list(sub._parameters):
                sub.register_parameter(name, None)


def released(module: nn.Module) -> bool:
    """Whether a module belongs to a pruned block (its parameters were registered as None)."""
    params = module._parameters
    return bool(params) and all(p is None for p in params.values())


class PrunedInitMixin:
    """A pretrained-model base whose weight initialisation passes over pruned blocks' modules."""

    def _init_weights(self, module: nn.Module) -> None:
        if released(module):
            return  # a pruned block's module: it has nothing to initialise
        super()._init_weights(module)


class PrunableLayerMixin:
    """A stock decoder layer whose attention and MLP blocks can each be skipped."""

    def init_pruning(self, config, layer_idx: int) -> None:
        self.layer_idx = layer_idx
        self.prune_self_attn = layer_idx in getattr(config, "pruned_attn_layers", ())
        self.prune_mlp = layer_idx in getattr(config, "pruned_mlp_layers", ())
        if self.prune_self_attn:
            release_parameters(self.self_attn, self.input_layernorm)
        if self.prune_mlp:
            release_parameters(self.mlp, self.post_attention_layernorm)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        # kwargs (mask, positions, cache under its version-specific name) go to attention untouched.
        if not self.prune_self_attn:
            attn_out, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
            hidden_states = hidden_states + attn_out
        if not self.prune_mlp:
            mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
            if isinstance(mlp_out, tuple):  # transformers 4.x's sparse MoE block also returns router logits
                mlp_out = mlp_out[0]
            hidden_states = hidden_states + mlp_out
        return hidden_states


class CompactCacheMixin:
    """The decoder: attention layers that run use compact KV-cache slots 0..K-1, in layer order."""

    def assign_cache_slots(self) -> None:
        slot = 0
        for layer in self.layers:
            if not layer.prune_self_attn:
                layer.self_attn.layer_idx = slot
                slot += 1

    def forward(self, *args, **kwargs):
        # Flags may have been flipped since the last call (functional pruning); slots follow them.
        self.assign_cache_slots()
        return super().forward(*args, **kwargs)


class SafeLoadingMixin:
    """The causal LM: functional pruning (`set_pruned`) and loading that refuses a missing kept tensor."""

    def set_pruned(self, attn: list[int] | None = None, mlp: list[int] | None = None) -> None:
        """Skip exactly these blocks from now on (functional pruning; weights stay where they are)."""
        attn, mlp = set(attn or ()), set(mlp or ())
        for i, layer in enumerate(self.model.layers):
            blocks = (
                (i in attn, layer.self_attn, layer.input_layernorm),
                (i in mlp, layer.mlp, layer.post_attention_layernorm),
            )
            for skip, *modules in blocks:
                if not skip and any(released(sub) for m in modules for sub in m.modules()):
                    raise ValueError(f"layer {i}: cannot un-prune a block whose weights were never loaded")
        for i, layer in enumerate(self.model.layers):
            layer.prune_self_attn, layer.prune_mlp = i in attn, i in mlp

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

    def _checkpoint_names(self) -> list[str]:
        """The tensors a checkpoint of this model holds, by their names on disk: transformers 5.x's fused
        expert parameters (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) stand for one tensor per
        expert there. Tied lm_head excluded; pruned blocks hold no parameters, so none of theirs."""
        tied = self.lm_head.weight is self.model.embed_tokens.weight
        names = []
        for name, tensor in self.state_dict().items():
            prefix, _, last = name.rpartition(".")
            if prefix.endswith("mlp.experts") and last in ("gate_up_proj", "down_proj") and tensor.dim() == 3:
                projections = ("gate_proj", "up_proj") if last == "gate_up_proj" else ("down_proj",)
                names += [f"{prefix}.{e}.{p}.weight" for e in range(tensor.shape[0]) for p in projections]
            elif not (tied and name == "lm_head.weight"):
                names.append(name)
        return names

    @classmethod
    def _diagnose(cls, path, config) -> ValueError | None:
        """What is wrong with the checkpoint at `path` for this config, found from its tensor names
        alone (a model built on the meta device says what it needs): tensors of pruned blocks present,
        or kept tensors missing. None when neither (or when it cannot tell)."""
        try:
            names = _checkpoint_tensor_names(path)
            if not names:  # no safetensors found: nothing to compare with
                return None
            if config is None or isinstance(config, str):
                config = cls.config_class.from_pretrained(path if config is None else config)
            pruned = [name for name in names if config.is_pruned_tensor(name)]
            if pruned:
                return PrunedTensorsPresentError(_pruned_present_message(pruned))
            if getattr(config, "quantization_config", None) is not None:
                return None  # pre-quantized tensors have other names
            with torch.device("meta"):
                needed = cls(config)._checkpoint_names()
        except Exception:  # the diagnosis is a courtesy; the original error stands without it
            return None
        present = set(names)
        missing = [name for name in needed if name not in present]
        return MissingTensorsError(_missing_message(missing)) if missing else None

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        want_info = kwargs.pop("output_loading_info", False)
        path = args[0] if args else kwargs["pretrained_model_name_or_path"]
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except Exception as error:
            # transformers 5.x fails converting per-expert tensors when one is missing, without naming it.
            problem = cls._diagnose(path, kwargs.get("config"))
            if problem is not None:
                raise problem from error
            raise
        names = _checkpoint_tensor_names(path)
        pruned = [name for name in names if model.config.is_pruned_tensor(name)]
        if pruned:
            raise PrunedTensorsPresentError(_pruned_present_message(pruned))
        missing = model._kept_missing(info["missing_keys"])
        if missing:
            present = set(names)
            named = [name for name in model._checkpoint_names() if name not in present] if names else []
            raise MissingTensorsError(_missing_message(named or missing))
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


def pruned_tensor_patterns(config) -> list[str]:
    """Patterns of the pruned blocks' tensor names (for `_keys_to_ignore_on_load_unexpected`)."""
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


def _pruned_present_message(pruned: list[str]) -> str:
    layers: dict[str, set[int]] = {"attn": set(), "mlp": set()}
    for name in pruned:
        layer, kind = tensor_block(name)
        layers[kind].add(layer)
    blocks = "; ".join(
        f"{title} of layer{'s' if len(layers[kind]) > 1 else ''} {', '.join(map(str, sorted(layers[kind])))}"
        for kind, title in (("attn", "attention"), ("mlp", "MLP"))
        if layers[kind]
    )
    more = f" (and {len(pruned) - 1} more)" if len(pruned) > 1 else ""
    return (
        f"the checkpoint holds {pruned[0]}{more} of blocks its plan prunes ({blocks}): a pruned checkpoint "
        "must not hold them. Delete those tensors, or, to use them, remove those layers from "
        "pruned_attn_layers / pruned_mlp_layers in its config.json"
    )


def _missing_message(missing: list[str]) -> str:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f"the checkpoint lacks {len(missing)} tensors that the pruning plan keeps: {shown}"
