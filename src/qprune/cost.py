"""What a pruning plan can save at best: parameter counts, prefill FLOPs and decode bytes, from a config.

    shape = Shape.from_config(config)           # or shape_named("qwen3-0.6b"), shape_named("qwen3-30b-a3b")
    ideal = ideal_speedups(shape, dense_plan, pruned_plan, batch=1, prompt_len=512, new_tokens=64)
    ideal.prefill, ideal.decode                 # dense cost / pruned cost

The model of cost is the roofline's two ends, the one papers use for pruned models:
- prefill is compute-bound: time goes with the FLOPs per prompt token of what runs. A kept attention
  block costs its four projections plus attention over the prompt (a causal prompt of L tokens attends
  to (L + 1) / 2 tokens on average); a kept MLP block its three projections. The lm_head runs for the
  last position only (as in `generate`), so it adds 2·hidden·vocab / L per token. The embedding is a
  lookup (no FLOPs); norms, rotary and activations are not counted. A sparse MoE block costs its router
  and the `experts_per_token` experts each token runs.
- decode is memory-bound: time goes with the bytes read per step. A step reads every kept weight once
  (kept blocks, final norm, lm_head; B embedding rows) and, for each sequence, the K and V of every kept
  attention layer over the context (on average prompt_len + (new_tokens + 1) / 2 tokens). A sparse MoE
  block reads its router and the experts the batch's B tokens pick: E·(1 - (1 - k/E)^B) of E on
  average if routing is uniform (k at batch 1).
Parameters count every expert: that is what a checkpoint stores and memory holds.

Pure arithmetic, no torch: the tests check it against numbers worked out by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qprune.arch import shape_names
from qprune.errors import QpruneError
from qprune.plan import Plan


@dataclass(frozen=True)
class Shape:
    """The sizes of a Qwen3 that speed and memory depend on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    attention_bias: bool = False
    # Qwen3-MoE: sparse MoE blocks of `experts` experts (0: a dense Qwen3), each token running
    # `experts_per_token` of width `expert_intermediate`; layers in `dense_mlp_layers` have a dense MLP.
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    dense_mlp_layers: tuple[int, ...] = ()
    # After an expert cut that is not uniform: each layer's experts (`experts` is then the largest).
    layer_experts: tuple[int, ...] = ()
    # After a width cut that is not uniform: each layer's MLP channels and KV heads (the global fields
    # are then the largest; query heads keep the global ratio to KV heads).
    layer_intermediate: tuple[int, ...] = ()
    layer_kv_heads: tuple[int, ...] = ()

    def experts_in(self, layer: int) -> int:
        """The experts of `layer`'s MoE block."""
        return self.layer_experts[layer] if self.layer_experts else self.experts

    def intermediate_in(self, layer: int) -> int:
        return self.layer_intermediate[layer] if self.layer_intermediate else self.intermediate

    def kv_heads_in(self, layer: int) -> int:
        return self.layer_kv_heads[layer] if self.layer_kv_heads else self.kv_heads

    def heads_in(self, layer: int) -> int:
        return self.kv_heads_in(layer) * (self.heads // self.kv_heads)

    @classmethod
    def from_config(cls, config) -> Shape:
        """From a config object or a config.json dict; what a config.json leaves out is its family's
        default, and the family adds its own fields (Qwen3-MoE: the experts)."""
        from qprune.arch import family_of

        config = config if isinstance(config, dict) else config.to_dict()
        family = family_of(config)

        def get(key: str):
            return family.config_field(config, key)

        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(
            hidden=hidden,
            intermediate=get("intermediate_size"),
            layers=get("num_hidden_layers"),
            heads=heads,
            kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            vocab=get("vocab_size"),
            tied=bool(get("tie_word_embeddings")),
            attention_bias=bool(get("attention_bias")),
            **family.shape_fields(config),
        )

    @property
    def model_type(self) -> str:
        return "qwen3_moe" if self.experts else "qwen3"

    def is_sparse(self, layer: int) -> bool:
        return self.experts > 0 and layer not in self.dense_mlp_layers

    def with_layers(self, layers: int) -> Shape:
        """The same shape, `layers` deep (a bench that does not fit memory at full depth)."""
        dense = tuple(i for i in self.dense_mlp_layers if i < layers)
        per_layer = {
            name: getattr(self, name)[:layers] for name in ("layer_experts", "layer_intermediate", "layer_kv_heads")
        }
        return Shape(**{**self.to_dict(), "layers": layers, "dense_mlp_layers": dense, **per_layer})

    def config_fields(self) -> dict:
        """Keyword arguments for the family's config class (`Qwen3Config`, `Qwen3MoeConfig`)."""
        moe = {
            "num_experts": self.experts,
            "num_experts_per_tok": self.experts_per_token,
            "moe_intermediate_size": self.expert_intermediate,
            "mlp_only_layers": list(self.dense_mlp_layers),
            "head_dim": self.head_dim,
        } | ({"layer_num_experts": list(self.layer_experts)} if self.layer_experts else {})
        widths = {"layer_intermediate_size": list(self.layer_intermediate)} if self.layer_intermediate else {}
        widths |= {"layer_num_key_value_heads": list(self.layer_kv_heads)} if self.layer_kv_heads else {}
        return (
            (moe if self.experts else {})
            | widths
            | {
                "hidden_size": self.hidden,
                "intermediate_size": self.intermediate,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads,
                "head_dim": self.head_dim,
                "vocab_size": self.vocab,
                "tie_word_embeddings": self.tied,
                "attention_bias": self.attention_bias,
            }
        )

    def to_dict(self) -> dict:
        return asdict(self)


def shape_named(name: str) -> Shape:
    """A released model's shape by name (each family's `bench_shapes` in `arch/`)."""
    shapes = shape_names()
    try:
        return Shape(**shapes[name.lower()])
    except KeyError:
        raise QpruneError(f"{{shape}} {name}: unknown; choose one of {', '.join(shapes)}") from None


def _expert_parameters(shape: Shape) -> int:
    return 3 * shape.hidden * shape.expert_intermediate


def block_parameters(shape: Shape, layer: int = 0) -> dict[str, int]:
    """Parameters of layer `layer`'s attention block and MLP block, their norms included (a sparse MoE
    block: its router and every expert)."""
    q, kv = shape.heads_in(layer) * shape.head_dim, shape.kv_heads_in(layer) * shape.head_dim
    bias = q + 2 * kv + shape.hidden if shape.attention_bias else 0  # q, k, v and o_proj biases
    attn = shape.hidden * q + 2 * shape.hidden * kv + q * shape.hidden + bias + 2 * shape.head_dim + shape.hidden
    if shape.is_sparse(layer):
        mlp = shape.experts_in(layer) * (_expert_parameters(shape) + shape.hidden) + shape.hidden
    else:
        mlp = 3 * shape.hidden * shape.intermediate_in(layer) + shape.hidden
    return {"attn": attn, "mlp": mlp}


def _active_mlp_parameters(shape: Shape, layer: int, experts_run: float) -> float:
    """Parameters an MLP block reads when `experts_run` of its experts run (dense blocks: all)."""
    if not shape.is_sparse(layer):
        return block_parameters(shape, layer)["mlp"]
    return shape.experts_in(layer) * shape.hidden + experts_run * _expert_parameters(shape) + shape.hidden


def _kept_layers(shape: Shape, plan: Plan) -> tuple[list[int], list[int]]:
    plan.validate(shape.layers)
    layers = range(shape.layers)
    return [i for i in layers if i not in plan.attn], [i for i in layers if i not in plan.mlp]


def kept_blocks(shape: Shape, plan: Plan) -> tuple[int, int]:
    """(attention blocks, MLP blocks) that run under `plan`."""
    attn, mlp = _kept_layers(shape, plan)
    return len(attn), len(mlp)


def parameter_count(shape: Shape, plan: Plan) -> int:
    """Parameters a model loaded under `plan` holds (a tied lm_head counts once)."""
    attn, mlp = _kept_layers(shape, plan)
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    blocks = sum(block_parameters(shape, i)["attn"] for i in attn) + sum(block_parameters(shape, i)["mlp"] for i in mlp)
    return blocks + embeddings + shape.hidden  # + final norm


def kv_bytes(shape: Shape, plan: Plan, batch: int, tokens: int, dtype_bytes: int) -> int:
    """Bytes of the KV cache holding `tokens` positions of `batch` sequences."""
    attn, _ = _kept_layers(shape, plan)
    return sum(2 * batch * shape.kv_heads_in(i) * shape.head_dim * tokens * dtype_bytes for i in attn)


def prefill_flops_per_token(shape: Shape, plan: Plan, prompt_len: int) -> float:
    attn_layers, mlp_layers = _kept_layers(shape, plan)

    def attention_flops(layer: int) -> float:
        q, kv = shape.heads_in(layer) * shape.head_dim, shape.kv_heads_in(layer) * shape.head_dim
        projections = 2 * (shape.hidden * q + 2 * shape.hidden * kv + q * shape.hidden)
        # QK^T and AV: 2 FLOPs per multiply-add, 2 products, over (L + 1) / 2 keys on average.
        return projections + 2 * 2 * q * (prompt_len + 1) / 2

    lm_head = 2 * shape.hidden * shape.vocab / prompt_len
    # A token runs a dense MLP's three projections, or a sparse block's router and k experts.
    mlp = sum(2 * (_active_mlp_parameters(shape, i, shape.experts_per_token) - shape.hidden) for i in mlp_layers)
    return sum(attention_flops(i) for i in attn_layers) + mlp + lm_head


def decode_bytes_per_step(
    shape: Shape, plan: Plan, batch: int, prompt_len: int, new_tokens: int, dtype_bytes: int
) -> float:
    weights = parameter_count(shape, plan) - (0 if shape.tied else shape.vocab * shape.hidden)  # input embedding
    if shape.experts:  # a step reads only the experts its B tokens pick

        def touched(layer: int) -> float:
            k, e = shape.experts_per_token, shape.experts_in(layer)
            return e * (1 - (1 - k / e) ** batch)

        sparse = [i for i in _kept_layers(shape, plan)[1] if shape.is_sparse(i)]
        weights -= sum(block_parameters(shape, i)["mlp"] - _active_mlp_parameters(shape, i, touched(i)) for i in sparse)
    weight_bytes = (weights + batch * shape.hidden) * dtype_bytes  # + the rows the batch looks up
    context = prompt_len + (new_tokens + 1) / 2
    return weight_bytes + kv_bytes(shape, plan, batch, 1, dtype_bytes) * context


@dataclass(frozen=True)
class IdealSpeedups:
    prefill: float
    decode: float


def ideal_speedups(
    shape: Shape,
    dense: Plan,
    pruned: Plan,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    dtype_bytes: int = 2,
    pruned_shape: Shape | None = None,
) -> IdealSpeedups:
    """Speedups of `pruned` over `dense` (usually the empty plan) if time followed FLOPs and bytes.
    `pruned_shape`: the pruned model's shape where it differs from `shape` (an expert cut has fewer
    experts per MoE layer: a smaller router, and fewer distinct experts read by a batch)."""
    small = pruned_shape or shape
    return IdealSpeedups(
        prefill=prefill_flops_per_token(shape, dense, prompt_len) / prefill_flops_per_token(small, pruned, prompt_len),
        decode=decode_bytes_per_step(shape, dense, batch, prompt_len, new_tokens, dtype_bytes)
        / decode_bytes_per_step(small, pruned, batch, prompt_len, new_tokens, dtype_bytes),
    )
