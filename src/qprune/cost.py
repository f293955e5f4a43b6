"""What a pruning plan can save at best: parameter counts, prefill FLOPs and decode bytes, from a config.

    shape = Shape.from_config(config)           # or QWEN3_SHAPES["qwen3-0.6b"]
    ideal = ideal_speedups(shape, dense_plan, pruned_plan, batch=1, prompt_len=512, new_tokens=64)
    ideal.prefill, ideal.decode                 # dense cost / pruned cost

The model of cost is the roofline's two ends, the one papers use for pruned models:
- prefill is compute-bound: time goes with the FLOPs per prompt token of what runs. A kept attention
  block costs its four projections plus attention over the prompt (a causal prompt of L tokens attends
  to (L + 1) / 2 tokens on average); a kept MLP block its three projections. The lm_head runs for the
  last position only (as in `generate`), so it adds 2·hidden·vocab / L per token. The embedding is a
  lookup (no FLOPs); norms, rotary and activations are not counted.
- decode is memory-bound: time goes with the bytes read per step. A step reads every kept weight once
  (kept blocks, final norm, lm_head; B embedding rows) and, for each sequence, the K and V of every kept
  attention layer over the context (on average prompt_len + (new_tokens + 1) / 2 tokens).

Pure arithmetic, no torch: the tests check it against numbers worked out by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    @classmethod
    def from_config(cls, config) -> Shape:
        """From a config object or a config.json dict."""
        get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(
            hidden=hidden,
            intermediate=get("intermediate_size"),
            layers=get("num_hidden_layers"),
            heads=heads,
            kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            vocab=get("vocab_size"),
            tied=bool(get("tie_word_embeddings", False)),
            attention_bias=bool(get("attention_bias", False)),
        )

    def config_fields(self) -> dict:
        """Keyword arguments for `Qwen3Config` that give this shape."""
        return {
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

    def to_dict(self) -> dict:
        return asdict(self)


# The dense Qwen3 family, from the released config.json files (all: head_dim 128, vocab 151,936).
QWEN3_SHAPES = {
    "qwen3-0.6b": Shape(1024, 3072, 28, 16, 8, 128, 151936, tied=True),
    "qwen3-1.7b": Shape(2048, 6144, 28, 16, 8, 128, 151936, tied=True),
    "qwen3-4b": Shape(2560, 9728, 36, 32, 8, 128, 151936, tied=True),
    "qwen3-8b": Shape(4096, 12288, 36, 32, 8, 128, 151936, tied=False),
    "qwen3-14b": Shape(5120, 17408, 40, 40, 8, 128, 151936, tied=False),
    "qwen3-32b": Shape(5120, 25600, 64, 64, 8, 128, 151936, tied=False),
}


def shape_named(name: str) -> Shape:
    try:
        return QWEN3_SHAPES[name.lower()]
    except KeyError:
        raise QpruneError(f"{{shape}} {name}: unknown; choose one of {', '.join(QWEN3_SHAPES)}") from None


def block_parameters(shape: Shape) -> dict[str, int]:
    """Parameters of one attention block and one MLP block, their norms included."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    bias = q + 2 * kv + shape.hidden if shape.attention_bias else 0  # q, k, v and o_proj biases
    attn = shape.hidden * q + 2 * shape.hidden * kv + q * shape.hidden + bias + 2 * shape.head_dim + shape.hidden
    mlp = 3 * shape.hidden * shape.intermediate + shape.hidden
    return {"attn": attn, "mlp": mlp}


def kept_blocks(shape: Shape, plan: Plan) -> tuple[int, int]:
    """(attention blocks, MLP blocks) that run under `plan`."""
    plan.validate(shape.layers)
    return shape.layers - len(plan.attn), shape.layers - len(plan.mlp)


def parameter_count(shape: Shape, plan: Plan) -> int:
    """Parameters a model loaded under `plan` holds (a tied lm_head counts once)."""
    attn, mlp = kept_blocks(shape, plan)
    sizes = block_parameters(shape)
    embeddings = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    return attn * sizes["attn"] + mlp * sizes["mlp"] + embeddings + shape.hidden  # + final norm


def kv_bytes(shape: Shape, plan: Plan, batch: int, tokens: int, dtype_bytes: int) -> int:
    """Bytes of the KV cache holding `tokens` positions of `batch` sequences."""
    attn, _ = kept_blocks(shape, plan)
    return attn * 2 * batch * shape.kv_heads * shape.head_dim * tokens * dtype_bytes


def prefill_flops_per_token(shape: Shape, plan: Plan, prompt_len: int) -> float:
    attn, mlp = kept_blocks(shape, plan)
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    projections = 2 * (shape.hidden * q + 2 * shape.hidden * kv + q * shape.hidden)
    # QK^T and AV: 2 FLOPs per multiply-add, 2 products, over (L + 1) / 2 keys on average.
    attention = 2 * 2 * q * (prompt_len + 1) / 2
    lm_head = 2 * shape.hidden * shape.vocab / prompt_len
    return attn * (projections + attention) + mlp * 2 * 3 * shape.hidden * shape.intermediate + lm_head


def decode_bytes_per_step(
    shape: Shape, plan: Plan, batch: int, prompt_len: int, new_tokens: int, dtype_bytes: int
) -> float:
    weights = parameter_count(shape, plan) - (0 if shape.tied else shape.vocab * shape.hidden)  # input embedding
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
) -> IdealSpeedups:
    """Speedups of `pruned` over `dense` (usually the empty plan) if time followed FLOPs and bytes."""
    return IdealSpeedups(
        prefill=prefill_flops_per_token(shape, dense, prompt_len) / prefill_flops_per_token(shape, pruned, prompt_len),
        decode=decode_bytes_per_step(shape, dense, batch, prompt_len, new_tokens, dtype_bytes)
        / decode_bytes_per_step(shape, pruned, batch, prompt_len, new_tokens, dtype_bytes),
    )
