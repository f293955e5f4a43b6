"""Qwen3 as data: every tensor (with its shape) a config implies, and what the oracle zeroes.

    QWEN3.expected_tensors(config)                         # {"model.embed_tokens.weight": (vocab, hidden), ...}
    QWEN3.tensor_block("model.layers.3.mlp.up_proj.weight")   # (3, "mlp"): family.tensor_block, every family's

A layer has two blocks, attention and MLP (`family.tensor_block` says which tensors each holds); a
pruned block's output projection (`self_attn.o_proj`, `mlp.down_proj`) is what the stock-transformers
oracle zeroes. Attention blocks of a sliding-window Qwen3 cannot be pruned (`family.no_sliding_window`).
Plans, completeness checks, export and the vLLM model read this module through `family_of`; it
imports nothing of qprune but `arch.family`, so it sits at the bottom of the package.
"""

from __future__ import annotations

from qprune.arch.family import Family

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


def dense_mlp_tensors(prefix: str, hidden: int, inner: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.gate_proj.weight": (inner, hidden),
        f"{prefix}.up_proj.weight": (inner, hidden),
        f"{prefix}.down_proj.weight": (hidden, inner),
    }


def decoder_tensors(config: dict, mlp_tensors, family: Family) -> dict[str, tuple[int, ...]]:
    """Every tensor of a dense Qwen3-style decoder with this (validated) config, with its shape (fields
    it leaves out: `family`'s defaults); each layer's feed-forward tensors come from
    `mlp_tensors(layer, hidden)`. lm_head is listed even when tied (a tied checkpoint may omit it)."""
    hidden, vocab = family.config_field(config, "hidden_size"), family.config_field(config, "vocab_size")
    heads = family.config_field(config, "num_attention_heads")
    kv_heads = family.config_field(config, "num_key_value_heads") or heads  # null means one per query head
    head_dim = family.config_field(config, "head_dim") or hidden // heads
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(config["num_hidden_layers"]):
        attn = f"model.layers.{i}.self_attn"
        shapes |= {
            f"model.layers.{i}.input_layernorm.weight": (hidden,),
            f"{attn}.q_proj.weight": (q_width, hidden),
            f"{attn}.k_proj.weight": (kv_width, hidden),
            f"{attn}.v_proj.weight": (kv_width, hidden),
            f"{attn}.o_proj.weight": (hidden, q_width),
            f"{attn}.q_norm.weight": (head_dim,),
            f"{attn}.k_norm.weight": (head_dim,),
            f"model.layers.{i}.post_attention_layernorm.weight": (hidden,),
        }
        shapes |= mlp_tensors(i, hidden)
        if family.config_field(config, "attention_bias"):
            shapes |= {
                f"{attn}.q_proj.bias": (q_width,),
                f"{attn}.k_proj.bias": (kv_width,),
                f"{attn}.v_proj.bias": (kv_width,),
                f"{attn}.o_proj.bias": (hidden,),
            }
    return shapes


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a dense Qwen3 with this (validated) config, with its shape."""
    inner = QWEN3.config_field(config, "intermediate_size")
    return decoder_tensors(config, lambda i, hidden: dense_mlp_tensors(f"model.layers.{i}.mlp", hidden, inner), QWEN3)


# The dense Qwen3 family, from the released config.json files (all: head_dim 128, vocab 151,936).
def _shape(hidden: int, inner: int, layers: int, heads: int, tied: bool) -> dict:
    return dict(hidden=hidden, intermediate=inner, layers=layers, heads=heads, kv_heads=8, head_dim=128,
                vocab=151936, tied=tied)  # fmt: skip


QWEN3 = Family(
    model_type="qwen3",
    title="Qwen3",
    stock_class="Qwen3ForCausalLM",
    stock_config_class="Qwen3Config",
    pruned_config_class="PrunedQwen3Config",
    pruned_class="PrunedQwen3ForCausalLM",
    config_module="configuration_pruned_qwen3",
    modeling_module="modeling_pruned_qwen3",
    output_projections={"attn": ("self_attn.o_proj",), "mlp": ("mlp.down_proj",)},
    expected_tensors=expected_tensors,
    config_defaults=_DEFAULTS,
    bench_shapes={
        "qwen3-0.6b": _shape(1024, 3072, 28, 16, tied=True),
        "qwen3-1.7b": _shape(2048, 6144, 28, 16, tied=True),
        "qwen3-4b": _shape(2560, 9728, 36, 32, tied=True),
        "qwen3-8b": _shape(4096, 12288, 36, 32, tied=False),
        "qwen3-14b": _shape(5120, 17408, 40, 40, tied=False),
        "qwen3-32b": _shape(5120, 25600, 64, 64, tied=False),
    },
)
