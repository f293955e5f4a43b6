"""A Qwen3-MoE causal LM that skips pruned attention and MLP blocks.

As `modeling_pruned_qwen3.py`, for `Qwen3MoeForCausalLM`: the module tree is stock, a pruned block is
skipped by a flag and holds no parameters. A pruned MLP block is the layer's whole feed-forward block:
the sparse MoE block (router `mlp.gate` and every expert) or the dense MLP of an `mlp_only_layers`
layer. Each MoE block has `config.experts_of(layer)` experts (fewer in some layers after an expert cut
that is not uniform; `num_experts` is the largest). A skipped MoE block routes nothing, so it adds no
router logits: with `output_router_logits` the load-balancing loss is taken over the MoE blocks that
run (and is zero when none does); it needs one expert count in every MoE block that runs.

transformers 5.x holds experts fused as 3-D parameters and converts the per-expert tensors of a
checkpoint (`mlp.experts.{e}.gate_proj.weight`, ...) on load and save; it applies that conversion
to custom code only when registered for it, which this file does. 4.x holds per-expert Linears.
Either way the checkpoint keeps the per-expert names.

This file is copied into every pruned checkpoint and must import nothing but torch and transformers.
"""

from __future__ import annotations

import contextlib
import functools

from torch import nn
from transformers.models.qwen3_moe.modeling_qwen3_moe import (
    Qwen3MoeDecoderLayer,
    Qwen3MoeForCausalLM,
    Qwen3MoeModel,
    Qwen3MoePreTrainedModel,
    Qwen3MoeRMSNorm,
    Qwen3MoeRotaryEmbedding,
)

from .configuration_pruned_qwen3_moe import PrunedQwen3MoeConfig
from .pruned_blocks import (
    CompactCacheMixin,
    MissingTensorsError,
    PrunableLayerMixin,
    PrunedInitMixin,
    PrunedLinear,
    SafeLoadingMixin,
    pruned_tensor_patterns,
)

__all__ = ["MissingTensorsError", "PrunedLinear", "PrunedQwen3MoeForCausalLM", "PrunedQwen3MoeModel"]

try:  # transformers 5.x: per-expert checkpoint tensors <-> fused expert parameters, as for qwen3_moe
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )
except ImportError:  # transformers 4.x keeps experts as Linears: nothing to convert
    pass
else:
    register_checkpoint_conversion_mapping(
        PrunedQwen3MoeConfig.model_type, get_checkpoint_conversion_mapping("qwen3_moe"), overwrite=True
    )


class PrunedQwen3MoeDecoderLayer(PrunableLayerMixin, Qwen3MoeDecoderLayer):
    """A full `Qwen3MoeDecoderLayer` whose attention and MLP blocks can each be skipped."""

    def __init__(self, config: PrunedQwen3MoeConfig, layer_idx: int) -> None:
        with experts_as(config, config.experts_of(layer_idx)):
            super().__init__(config, layer_idx)
        self.init_pruning(config, layer_idx)


@contextlib.contextmanager
def experts_as(config, count: int):
    """`config.num_experts` reads `count` while a layer is built: stock modules size their router and
    experts from it at construction (and keep their own count), in transformers 4.x, 5.x and vLLM."""
    saved = config.num_experts
    config.num_experts = count if count else saved
    try:
        yield
    finally:
        config.num_experts = saved


class PrunedQwen3MoePreTrainedModel(PrunedInitMixin, Qwen3MoePreTrainedModel):
    config_class = PrunedQwen3MoeConfig
    _no_split_modules = ["PrunedQwen3MoeDecoderLayer"]  # noqa: RUF012 (transformers' convention)


class PrunedQwen3MoeModel(CompactCacheMixin, PrunedQwen3MoePreTrainedModel, Qwen3MoeModel):
    def __init__(self, config: PrunedQwen3MoeConfig) -> None:
        # Qwen3MoeModel.__init__ would first build (and allocate) stock layers; build ours directly.
        Qwen3MoePreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [PrunedQwen3MoeDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = Qwen3MoeRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3MoeRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        if config.use_sliding_window and config.pruned_attn_layers:
            raise ValueError("pruning attention blocks of a sliding-window Qwen3-MoE is not supported")
        self.post_init()


class PrunedQwen3MoeForCausalLM(SafeLoadingMixin, PrunedQwen3MoePreTrainedModel, Qwen3MoeForCausalLM):
    def __init__(self, config: PrunedQwen3MoeConfig) -> None:
        Qwen3MoePreTrainedModel.__init__(self, config)
        self.model = PrunedQwen3MoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.router_aux_loss_coef = config.router_aux_loss_coef
        self.num_experts = config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok
        self._keys_to_ignore_on_load_unexpected = pruned_tensor_patterns(config)
        self.post_init()

    @functools.wraps(Qwen3MoeForCausalLM.forward)  # its signature too: callers inspect it for the cache's name
    def forward(self, *args, output_router_logits: bool | None = None, **kwargs):
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if output_router_logits and self.config.layer_num_experts:
            counts = {self.config.experts_of(i) for i, layer in enumerate(self.model.layers) if _routes(layer)}
            if len(counts) > 1:
                raise ValueError(
                    "output_router_logits: the load-balancing loss of transformers needs the same expert count "
                    f"in every MoE layer, this model has {sorted(counts)}; set output_router_logits=False"
                )
        if output_router_logits and not any(_routes(layer) for layer in self.model.layers):
            # No MoE block runs, so there are no router logits to balance; stock code would index an
            # empty tuple. The loss is then the language-model loss alone (aux_loss None).
            output_router_logits = False
        return super().forward(*args, output_router_logits=output_router_logits, **kwargs)


def _routes(layer: nn.Module) -> bool:
    return not layer.prune_mlp and hasattr(layer.mlp, "gate")


PrunedQwen3MoeConfig.register_for_auto_class()
PrunedQwen3MoeForCausalLM.register_for_auto_class("AutoModelForCausalLM")
