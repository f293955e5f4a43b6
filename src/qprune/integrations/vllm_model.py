"""Pruned Qwen3 and Qwen3-MoE for vLLM, built from vLLM's own parts, holding only the blocks the plan keeps.

vLLM imports this module when a checkpoint's config names `PrunedQwen3ForCausalLM` or
`PrunedQwen3MoeForCausalLM` (see `vllm_plugin.py`). A pruned attention block has no `Attention`
module, so vLLM allocates no KV cache for it and serves more sequences in the same memory; a pruned
MLP block has no MLP. A width cut that differs between layers builds each layer at its own sizes
(`widths_of`), and each attention layer's KV cache holds its own KV heads. Everything kept is
vLLM's code (`Qwen3Attention`, `Qwen3MLP`, `RMSNorm`; for Qwen3-MoE its attention, its fused-MoE
block and its dense MLP), so tensor parallelism, quantization and the attention backends apply as for a
stock model.

vLLM carries the residual stream as (hidden_states, residual) and fuses each residual add into the
next norm. A skipped block adds nothing, so its layer passes the pair on untouched; the next kept norm
(or the final one) adds what is pending. Layer 0 needs nothing special: vLLM addresses KV caches by
attention module, not by layer number.

Loading accepts exactly the slim checkpoint: tensors of pruned blocks are skipped if present, and a
tensor the plan keeps that the checkpoint lacks is an error naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import get_pp_group
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.qwen3 import Qwen3Attention, Qwen3ForCausalLM, Qwen3MLP, Qwen3Model
from vllm.model_executor.models.qwen3_moe import (
    Qwen3MoeAttention,
    Qwen3MoeForCausalLM,
    Qwen3MoeMLP,
    Qwen3MoeModel,
    Qwen3MoeSparseMoeBlock,
)
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    extract_layer_index,
    maybe_prefix,
)
from vllm.transformers_utils.config import set_default_rope_theta

from qprune.arch import SLIDING_WINDOW_ATTENTION, family_of
from qprune.modeling.modeling_pruned_qwen3_moe import experts_as


class _SkippingLayer(nn.Module):
    """A decoder layer whose `self_attn` / `mlp` (and their norms) are None where pruned."""

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.self_attn is not None:
            normed, residual = _add_and_norm(self.input_layernorm, hidden_states, residual)
            hidden_states = self.self_attn(positions=positions, hidden_states=normed)
        if self.mlp is not None:
            normed, residual = _add_and_norm(self.post_attention_layernorm, hidden_states, residual)
            hidden_states = self.mlp(normed)
        return hidden_states, residual


def _check_attention(config) -> None:
    raw = config.to_dict()
    if config.pruned_attn_layers and not family_of(raw).attention_prunable(raw):
        raise ValueError(SLIDING_WINDOW_ATTENTION)


class PrunedQwen3DecoderLayer(_SkippingLayer):
    """vLLM's Qwen3 decoder layer without the blocks its config prunes (None where one is pruned)."""

    def __init__(
        self,
        config,
        cache_config: CacheConfig | None = None,
        quant_config: QuantizationConfig | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        layer = extract_layer_index(prefix)
        set_default_rope_theta(config, default_theta=1000000)
        self.self_attn = self.input_layernorm = self.mlp = self.post_attention_layernorm = None
        sizes = config.widths_of(layer)  # a width cut may leave this layer narrower than others
        if layer not in config.pruned_attn_layers:
            _check_attention(config)
            self.self_attn = Qwen3Attention(
                hidden_size=config.hidden_size,
                num_heads=sizes["num_attention_heads"],
                num_kv_heads=sizes["num_key_value_heads"],
                rope_parameters=config.rope_parameters,
                max_position=config.max_position_embeddings,
                head_dim=getattr(config, "head_dim", None),
                rms_norm_eps=config.rms_norm_eps,
                qkv_bias=getattr(config, "attention_bias", False),
                cache_config=cache_config,
                quant_config=quant_config,
                prefix=f"{prefix}.self_attn",
                dual_chunk_attention_config=getattr(config, "dual_chunk_attention_config", None),
            )
            self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if layer not in config.pruned_mlp_layers:
            self.mlp = Qwen3MLP(
                hidden_size=config.hidden_size,
                intermediate_size=sizes["intermediate_size"],
                hidden_act=config.hidden_act,
                quant_config=quant_config,
                prefix=f"{prefix}.mlp",
            )
            self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


def _add_and_norm(norm: RMSNorm, hidden_states: torch.Tensor, residual: torch.Tensor | None):
    # The first kept block of the model has nothing pending yet (vLLM's layer 0 case, wherever it falls).
    if residual is None:
        return norm(hidden_states), hidden_states
    return norm(hidden_states, residual)


class _SlimLoading:
    """load_weights for a slim checkpoint: pruned blocks' tensors skipped, a missing kept one named."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        seen: set[str] = set()

        def kept(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if not self.config.is_pruned_tensor(name):
                    seen.add(name)
                    yield name, tensor

        loaded = AutoWeightsLoader(self).load_weights(kept(weights))
        missing = [name for name in self._expected_tensors() if name not in seen]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"the checkpoint lacks {len(missing)} tensors that the pruning plan keeps: {shown}")
        return loaded

    def _expected_tensors(self) -> list[str]:
        """Checkpoint names this process must load: what the plan keeps, on this pipeline stage."""
        if self.quant_config is not None:
            return []  # pre-quantized checkpoints store other names; vLLM's loader checks those
        stage = range(self.model.start_layer, self.model.end_layer)
        here = {
            "model.embed_tokens.weight": not isinstance(self.model.embed_tokens, PPMissingLayer),
            "model.norm.weight": not isinstance(self.model.norm, PPMissingLayer),
            "lm_head.weight": not (self.config.tie_word_embeddings or isinstance(self.lm_head, PPMissingLayer)),
        }
        names = []
        config = self.config.to_dict()
        family = family_of(config)
        for name in family.expected_tensors(config):
            block = family.tensor_block(name)
            wanted = here.get(name, True) if block is None else block[0] in stage
            if wanted and not self.config.is_pruned_tensor(name):
                names.append(name)
        return names


class PrunedQwen3Model(Qwen3Model):
    decoder_layer_type = PrunedQwen3DecoderLayer


class PrunedQwen3ForCausalLM(_SlimLoading, Qwen3ForCausalLM):
    """vLLM's `Qwen3ForCausalLM` (forward, logits, LoRA and PP interfaces) over the pruned model."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        # Qwen3ForCausalLM.__init__ would build every layer (and a KV cache for each); build ours instead.
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_config
        self.config, self.vllm_config, self.quant_config = config, vllm_config, vllm_config.quant_config
        self.model = PrunedQwen3Model(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        if get_pp_group().is_last_rank:
            self.lm_head = ParallelLMHead(
                config.vocab_size,
                config.hidden_size,
                quant_config=self.quant_config,
                prefix=maybe_prefix(prefix, "lm_head"),
            )
            if config.tie_word_embeddings:
                self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        else:
            self.lm_head = PPMissingLayer()
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors


# -- Qwen3-MoE ---------------------------------------------------------------------------------------


class PrunedQwen3MoeDecoderLayer(_SkippingLayer):
    """vLLM's Qwen3-MoE decoder layer without the blocks its config prunes (None where one is pruned):
    a pruned MLP block is the layer's sparse MoE block (router and experts) or its dense MLP. A MoE
    block has the layer's own expert count (`layer_num_experts`, when an expert cut left them unequal)."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_text_config
        layer = extract_layer_index(prefix)
        self.self_attn = self.input_layernorm = self.mlp = self.post_attention_layernorm = None
        if layer not in config.pruned_attn_layers:
            _check_attention(config)
            self.self_attn = Qwen3MoeAttention(
                hidden_size=config.hidden_size,
                num_heads=config.num_attention_heads,
                num_kv_heads=config.num_key_value_heads,
                rope_parameters=config.rope_parameters,
                max_position_embeddings=getattr(config, "max_position_embeddings", 8192),
                rms_norm_eps=config.rms_norm_eps,
                qkv_bias=getattr(config, "attention_bias", False),
                head_dim=getattr(config, "head_dim", None),
                cache_config=vllm_config.cache_config,
                quant_config=vllm_config.quant_config,
                prefix=f"{prefix}.self_attn",
                dual_chunk_attention_config=getattr(config, "dual_chunk_attention_config", None),
            )
            self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if layer not in config.pruned_mlp_layers:
            sparse = layer not in (config.mlp_only_layers or []) and (
                config.num_experts > 0 and (layer + 1) % config.decoder_sparse_step == 0
            )
            if sparse:
                with experts_as(config, config.experts_of(layer)):  # an expert cut may leave fewer here
                    self.mlp = Qwen3MoeSparseMoeBlock(vllm_config=vllm_config, prefix=f"{prefix}.mlp")
            else:
                self.mlp = Qwen3MoeMLP(
                    hidden_size=config.hidden_size,
                    intermediate_size=config.intermediate_size,
                    hidden_act=config.hidden_act,
                    quant_config=vllm_config.quant_config,
                    prefix=f"{prefix}.mlp",
                )
            self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)


class PrunedQwen3MoeModel(Qwen3MoeModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, decoder_layer_type=PrunedQwen3MoeDecoderLayer)


class PrunedQwen3MoeForCausalLM(_SlimLoading, Qwen3MoeForCausalLM):
    """vLLM's `Qwen3MoeForCausalLM` (forward, logits, LoRA, PP and expert-parallel interfaces) over the
    pruned model. Its MoE layers are the MoE blocks that run."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        # Qwen3MoeForCausalLM.__init__ would build every layer; build ours and keep its bookkeeping.
        nn.Module.__init__(self)
        config = vllm_config.model_config.hf_text_config
        self.config, self.quant_config = config, vllm_config.quant_config
        if getattr(config, "mlp_only_layers", []):
            self.packed_modules_mapping = {**self.packed_modules_mapping, "gate_up_proj": ["gate_proj", "up_proj"]}
        self.model = PrunedQwen3MoeModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(
            config.vocab_size,
            config.hidden_size,
            quant_config=self.quant_config,
            prefix=maybe_prefix(prefix, "lm_head"),
        )
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        blocks = [
            layer.mlp
            for layer in self.model.layers
            if not isinstance(layer, PPMissingLayer) and isinstance(layer.mlp, Qwen3MoeSparseMoeBlock)
        ]
        self.moe_layers = [block.experts for block in blocks]
        self.num_moe_layers, self.num_expert_groups, self.num_shared_experts = len(blocks), 1, 0
        example = blocks[0] if blocks else None  # every MoE block pruned: a model with dense MLPs only
        self.num_logical_experts = example.n_logical_experts if example else 0
        self.num_physical_experts = example.n_physical_experts if example else 0
        self.num_local_physical_experts = example.n_local_physical_experts if example else 0
        self.num_routed_experts = example.n_routed_experts if example else 0
        self.num_redundant_experts = example.n_redundant_experts if example else 0
