"""Qwen3-MoE as data: Qwen3's attention, and per layer either a sparse MoE block or a dense MLP.

A layer's feed-forward block is sparse when it is not in `mlp_only_layers` and
`(layer + 1) % decoder_sparse_step == 0`: a router `mlp.gate` (experts x hidden) and `num_experts`
experts, each a gated MLP of width `moe_intermediate_size`. Otherwise it is Qwen3's dense MLP of
width `intermediate_size`. A checkpoint qprune wrote with different expert counts per layer (an expert
cut that is not uniform) states them in `layer_num_experts` (one count per layer, 0 for a dense one;
`num_experts` is then the largest). Checkpoints hold one tensor per expert (`mlp.experts.{e}.down_proj.weight`)
in every transformers version; 5.x fuses them into 3-D parameters in memory (`mlp.experts.down_proj`),
so the output projections below name both.

Its own config fields are checked as `_CONFIG_CHECKS` says (and `_config_relations`); its tensors
belong to blocks, and its attention may be pruned, by the rules every family shares (`arch.family`).
"""

from __future__ import annotations

from qprune.arch.family import (
    OPTIONAL_COUNT,
    OPTIONAL_LAYERS,
    POSITIVE_INT,
    Family,
    FieldKind,
    is_int,
)
from qprune.arch.qwen3 import decoder_tensors, dense_mlp_tensors

LAYER_EXPERTS = "layer_num_experts"  # qprune's pruned format: experts per layer where counts differ

# Qwen3MoeConfig's defaults, for the fields a config.json may leave out (it has no head_dim field:
# attention then uses hidden_size / num_attention_heads).
_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": None,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
}


# Its own config.json fields and what each must be where the file states it. 5.x writes the expert
# count as num_local_experts, 4.x as num_experts; 0 experts makes every layer dense.
_CONFIG_CHECKS: dict[str, FieldKind] = {
    "moe_intermediate_size": POSITIVE_INT,
    "num_experts_per_tok": POSITIVE_INT,
    "decoder_sparse_step": POSITIVE_INT,
    "num_experts": OPTIONAL_COUNT,
    "num_local_experts": OPTIONAL_COUNT,
    "mlp_only_layers": OPTIONAL_LAYERS,  # null is none
    LAYER_EXPERTS: FieldKind("a list of one expert count per layer", lambda value, config: _counts(value, config)),
}


def _counts(value: object, config: dict) -> bool:
    counts_ok = isinstance(value, list) and all(is_int(v) and v >= 0 for v in value)
    return counts_ok and len(value) == config.get("num_hidden_layers")


def _config_relations(config: dict) -> str | None:
    """A token cannot run more experts than a block has."""
    experts, per_token = config.get("num_experts", config.get("num_local_experts")), config.get("num_experts_per_tok")
    if is_int(experts) and experts > 0 and is_int(per_token) and per_token > experts:
        return f"num_experts_per_tok is {per_token}, more than the {experts} experts"
    counts = config.get(LAYER_EXPERTS)
    if isinstance(counts, list) and is_int(experts) and is_int(per_token):
        for layer, count in enumerate(counts):
            if count and not per_token <= count <= experts:
                return f"{LAYER_EXPERTS} gives layer {layer} {count} experts, not num_experts_per_tok..num_experts"
    return None


def num_experts(config: dict) -> int:
    """Experts per MoE block. transformers 5.x writes the field as `num_local_experts`, 4.x as
    `num_experts`; either may be read."""
    return config.get("num_experts", config.get("num_local_experts", _DEFAULTS["num_experts"]))


def expert_counts(config: dict) -> dict[int, int]:
    """{MoE layer: its experts}: `num_experts` in every sparse layer, unless `layer_num_experts` says
    otherwise (qprune's format for an expert cut that is not uniform). The one place that reads it."""
    counts = config.get(LAYER_EXPERTS)
    return {i: counts[i] if counts else num_experts(config) for i in sparse_layers(config)}


def sparse_layers(config: dict) -> list[int]:
    """The layers whose feed-forward block is a sparse MoE block (the rest are dense MLPs)."""
    experts = num_experts(config)
    step = QWEN3_MOE.config_field(config, "decoder_sparse_step")
    dense = set(QWEN3_MOE.config_field(config, "mlp_only_layers") or ())
    layers = range(config["num_hidden_layers"])
    return [i for i in layers if experts > 0 and i not in dense and (i + 1) % step == 0]


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of a dense Qwen3-MoE with this (validated) config, with its shape, as checkpoints
    name them (one tensor per expert)."""
    counts = expert_counts(config)
    inner = QWEN3_MOE.config_field(config, "intermediate_size")
    expert_inner = QWEN3_MOE.config_field(config, "moe_intermediate_size")

    def mlp_tensors(i: int, hidden: int) -> dict[str, tuple[int, ...]]:
        mlp = f"model.layers.{i}.mlp"
        if i not in counts:
            return dense_mlp_tensors(mlp, hidden, inner)
        shapes = {f"{mlp}.gate.weight": (counts[i], hidden)}
        for e in range(counts[i]):
            shapes |= dense_mlp_tensors(f"{mlp}.experts.{e}", hidden, expert_inner)
        return shapes

    return decoder_tensors(config, mlp_tensors, QWEN3_MOE)


def checkpoint_state(state: dict) -> dict:
    """A state dict with transformers 5.x's fused expert parameters split back into one tensor per
    expert, as checkpoints hold them (what 5.x's own `save_pretrained` does; 4.x's are per-expert
    already). The fused `gate_up_proj` (experts, 2 x width, hidden) is gate then up."""
    out = {}
    for name, tensor in state.items():
        prefix, _, last = name.rpartition(".")
        if not prefix.endswith("mlp.experts") or last not in ("gate_up_proj", "down_proj"):
            out[name] = tensor
        elif last == "gate_up_proj":
            gate, up = tensor.chunk(2, dim=1)
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = gate[e], up[e]
        else:
            for e in range(tensor.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = tensor[e]
    return out


def portable_config(config: dict) -> dict:
    """transformers 5.x writes `num_local_experts`, which 4.x does not read (it would build its default
    128 experts); a config that states `num_experts` as well loads the same in both."""
    return config | {"num_experts": num_experts(config)}


def renumbered_fields(config: dict, kept_layers: list[int]) -> dict:
    """Which layers are dense follows their old numbers; after renumbering, say so layer by layer."""
    sparse = set(sparse_layers(config))
    return {
        "mlp_only_layers": [new for new, old in enumerate(kept_layers) if old not in sparse],
        "decoder_sparse_step": 1,
    }


def shape_fields(config: dict) -> dict:
    """The expert fields of `cost.Shape`: experts per block, those a token runs, their width, and the
    layers whose feed-forward block is dense."""
    sparse = set(sparse_layers(config))
    counts = config.get(LAYER_EXPERTS)
    return {
        "layer_experts": tuple(counts) if counts else (),
        "experts": num_experts(config),
        "experts_per_token": QWEN3_MOE.config_field(config, "num_experts_per_tok"),
        "expert_intermediate": QWEN3_MOE.config_field(config, "moe_intermediate_size"),
        "dense_mlp_layers": tuple(i for i in range(config["num_hidden_layers"]) if i not in sparse),
    }


def _shape(hidden: int, inner: int, expert_inner: int, layers: int, heads: int) -> dict:
    dense = dict(hidden=hidden, intermediate=inner, layers=layers, heads=heads, kv_heads=4, head_dim=128)
    return dense | dict(vocab=151936, tied=False, experts=128, experts_per_token=8, expert_intermediate=expert_inner)


QWEN3_MOE = Family(
    model_type="qwen3_moe",
    title="Qwen3-MoE",
    stock_class="Qwen3MoeForCausalLM",
    stock_config_class="Qwen3MoeConfig",
    pruned_config_class="PrunedQwen3MoeConfig",
    pruned_class="PrunedQwen3MoeForCausalLM",
    config_module="configuration_pruned_qwen3_moe",
    modeling_module="modeling_pruned_qwen3_moe",
    output_projections={
        "attn": ("self_attn.o_proj",),
        # dense MLP; a 4.x expert (a Linear each); 5.x's fused experts (one 3-D parameter)
        "mlp": ("mlp.down_proj", "mlp.experts.*.down_proj", "mlp.experts.down_proj"),
    },
    expected_tensors=expected_tensors,
    config_defaults=_DEFAULTS,
    config_checks=_CONFIG_CHECKS,
    config_relations=_config_relations,
    checkpoint_state=checkpoint_state,
    portable_config=portable_config,
    renumbered_fields=renumbered_fields,
    shape_fields=shape_fields,
    bench_shapes={  # from the released config.json files
        "qwen3-30b-a3b": _shape(2048, 6144, 768, 48, 32),
        "qwen3-235b-a22b": _shape(4096, 12288, 1536, 94, 64),
    },
)
