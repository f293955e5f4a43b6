"""Qwen3's tensor layout: which tensors, of which shapes, a config requires, and the check that a
checkpoint holds them.

    check_complete(config, read_checkpoint(model_dir), Plan.from_config(config), model_dir)

Run before anything is pruned, loaded or reported, so a damaged source (a config that claims more
layers than the weights hold, a pruned checkpoint that lost a kept tensor, a tensor of the wrong
shape) is one error naming the first bad tensor, not a checkpoint that cannot be loaded later.
Tensors of pruned blocks may be present or absent; tensors outside the layout are left alone.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import TensorEntry
from .errors import QpruneError
from .plan import Plan, tensor_block

# Qwen3Config's defaults, for the fields a config.json may leave out.
_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "tie_word_embeddings": False,
    "attention_bias": False,
}


def _field(config: dict, name: str):
    return config.get(name, _DEFAULTS[name])


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a dense Qwen3 with this (validated) config, with its shape. lm_head is listed
    even when tied; `check_complete` lets a tied checkpoint omit it."""
    hidden, vocab = _field(config, "hidden_size"), _field(config, "vocab_size")
    inner = _field(config, "intermediate_size")
    heads = _field(config, "num_attention_heads")
    kv_heads = _field(config, "num_key_value_heads") or heads  # null means one per query head
    head_dim = _field(config, "head_dim") or hidden // heads
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(config["num_hidden_layers"]):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        shapes |= {
            f"model.layers.{i}.input_layernorm.weight": (hidden,),
            f"{attn}.q_proj.weight": (q_width, hidden),
            f"{attn}.k_proj.weight": (kv_width, hidden),
            f"{attn}.v_proj.weight": (kv_width, hidden),
            f"{attn}.o_proj.weight": (hidden, q_width),
            f"{attn}.q_norm.weight": (head_dim,),
            f"{attn}.k_norm.weight": (head_dim,),
            f"model.layers.{i}.post_attention_layernorm.weight": (hidden,),
            f"{mlp}.gate_proj.weight": (inner, hidden),
            f"{mlp}.up_proj.weight": (inner, hidden),
            f"{mlp}.down_proj.weight": (hidden, inner),
        }
        if _field(config, "attention_bias"):
            shapes |= {
                f"{attn}.q_proj.bias": (q_width,),
                f"{attn}.k_proj.bias": (kv_width,),
                f"{attn}.v_proj.bias": (kv_width,),
                f"{attn}.o_proj.bias": (hidden,),
            }
    return shapes


def check_complete(config: dict, tensors: dict[str, TensorEntry], plan: Plan, where: str | Path) -> None:
    """Refuse a checkpoint that lacks a tensor the plan keeps, holds one of the wrong shape, or holds
    layers beyond `num_hidden_layers`."""
    num_layers = config["num_hidden_layers"]
    for name in tensors:
        block = tensor_block(name)
        if block is not None and block[0] >= num_layers:
            raise QpruneError(
                f"{where} holds {name}, of layer {block[0]}, but its config.json says it has {num_layers} layers"
            )
    if config.get("quantization_config") is not None:
        return  # pre-quantized weights are packed under other names and shapes
    tied = _field(config, "tie_word_embeddings")
    for name, shape in expected_tensors(config).items():
        if plan.prunes(name) or (tied and name == "lm_head.weight" and name not in tensors):
            continue
        if name not in tensors:
            kept = " that its pruning plan keeps" if plan.num_blocks else ""
            raise QpruneError(f"{where} lacks the tensor {name}{kept} (damaged or incomplete checkpoint)")
        if tensors[name].shape != shape:
            raise QpruneError(
                f"{where}: {name} has shape {list(tensors[name].shape)}, but config.json implies {list(shape)}"
            )
