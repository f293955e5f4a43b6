"""Qwen3 as data: every tensor (with its shape) a config implies, and what the oracle zeroes.

    QWEN3.expected_tensors(config)                         # {"model.embed_tokens.weight": (vocab, hidden), ...}
    QWEN3.tensor_block("model.layers.3.mlp.up_proj.weight")   # (3, "mlp"): family.tensor_block, every family's

A layer has two blocks, attention and MLP (`family.tensor_block` says which tensors each holds); a
pruned block's output projection (`self_attn.o_proj`, `mlp.down_proj`) is what the stock-transformers
oracle zeroes. Attention blocks of a sliding-window Qwen3 cannot be pruned (`family.no_sliding_window`).
A checkpoint qprune wrote after a width cut that is not the same in every layer states each layer's
MLP channels and KV heads (`layer_intermediate_size`, `layer_num_key_value_heads`; the global fields
are then the largest); `layer_widths` is the one place that reads them.
Plans, completeness checks, export and the vLLM model read this module through `family_of`; it
imports nothing of qprune but `arch.family`, so it sits at the bottom of the package.
"""

from __future__ import annotations

from qprune.arch.family import Family, FieldKind, is_int

# qprune's pruned format: each layer's width where a cut left them different (a layer whose block is
# pruned whole states the global, largest value: it builds nothing).
LAYER_FFN = "layer_intermediate_size"
LAYER_KV_HEADS = "layer_num_key_value_heads"

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


def layer_widths(config: dict, family: Family | None = None) -> list[tuple[int, int, int]]:
    """(MLP channels, KV heads, query heads) of every layer: the global fields (a null
    `num_key_value_heads` means one per query head), unless `layer_intermediate_size` /
    `layer_num_key_value_heads` say otherwise. Query heads per KV head stay the global ratio: a width
    cut removes a KV head with the query heads that share it."""
    family = family or QWEN3
    heads = family.config_field(config, "num_attention_heads")
    kv_heads = family.config_field(config, "num_key_value_heads") or heads
    inner = family.config_field(config, "intermediate_size")
    layers = range(config["num_hidden_layers"])
    inners = config.get(LAYER_FFN) or [inner for _ in layers]
    kvs = config.get(LAYER_KV_HEADS) or [kv_heads for _ in layers]
    rep = heads // kv_heads
    return [(inners[i], kvs[i], kvs[i] * rep) for i in layers]


def head_dim_of(config: dict, family: Family | None = None) -> int:
    family = family or QWEN3
    heads = family.config_field(config, "num_attention_heads")
    return family.config_field(config, "head_dim") or family.config_field(config, "hidden_size") // heads


def decoder_tensors(config: dict, mlp_tensors, family: Family) -> dict[str, tuple[int, ...]]:
    """Every tensor of a dense Qwen3-style decoder with this (validated) config, with its shape (fields
    it leaves out: `family`'s defaults); each layer's feed-forward tensors come from
    `mlp_tensors(layer, hidden)`. lm_head is listed even when tied (a tied checkpoint may omit it)."""
    hidden, vocab = family.config_field(config, "hidden_size"), family.config_field(config, "vocab_size")
    head_dim = head_dim_of(config, family)
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i, (_, kv_heads, heads) in enumerate(layer_widths(config, family)):
        q_width, kv_width = heads * head_dim, kv_heads * head_dim
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
    inners = [inner for inner, _, _ in layer_widths(config)]
    return decoder_tensors(
        config, lambda i, hidden: dense_mlp_tensors(f"model.layers.{i}.mlp", hidden, inners[i]), QWEN3
    )


def _widths(global_field: str):
    def test(value: object, config: dict) -> bool:
        top = config.get(global_field)
        fits = not is_int(top) or all(v <= top for v in value)
        return isinstance(value, list) and len(value) == config.get("num_hidden_layers") and fits

    return FieldKind(
        f"a list of one positive integer per layer, none above {global_field}",
        lambda value, config: (
            isinstance(value, list) and all(is_int(v) and v > 0 for v in value) and test(value, config)
        ),
    )


_CONFIG_CHECKS = {LAYER_FFN: _widths("intermediate_size"), LAYER_KV_HEADS: _widths("num_key_value_heads")}


def shape_fields(config: dict) -> dict:
    """Each layer's widths for `cost.Shape`, where a cut left them different."""
    if not (config.get(LAYER_FFN) or config.get(LAYER_KV_HEADS)):
        return {}
    widths = layer_widths(config)
    return {"layer_intermediate": tuple(w[0] for w in widths), "layer_kv_heads": tuple(w[1] for w in widths)}


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
    config_checks=_CONFIG_CHECKS,
    shape_fields=shape_fields,
    bench_shapes={
        "qwen3-0.6b": _shape(1024, 3072, 28, 16, tied=True),
        "qwen3-1.7b": _shape(2048, 6144, 28, 16, tied=True),
        "qwen3-4b": _shape(2560, 9728, 36, 32, tied=True),
        "qwen3-8b": _shape(4096, 12288, 36, 32, tied=False),
        "qwen3-14b": _shape(5120, 17408, 40, 40, tied=False),
        "qwen3-32b": _shape(5120, 25600, 64, 64, tied=False),
    },
)
