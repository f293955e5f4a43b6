"""`verify()`: show that a pruned checkpoint computes exactly what its plan says.

    checks = verify("qwen3-pruned", base="Qwen/Qwen3-0.6B")
    all(check.passed for check in checks)

The checks, each with its figure:
- keys: the checkpoint holds the base's tensors minus exactly the pruned blocks' (without a base:
  exactly the tensors the pruned model has), with the base's shapes and dtypes;
- parameters: the loaded model holds as many parameters as the checkpoint stores (none for pruned
  blocks);
- logits (needs the base): max |Δlogits| against the oracle, the base loaded as stock
  `Qwen3ForCausalLM` with the pruned blocks' o_proj / down_proj zeroed, all in float32;
- cache: greedy decoding of a left-padded batch with the KV cache equals decoding without it, and the
  cache holds K/V only for the attention layers that run.

`verify(..., quantize="int8")` loads the model quantized (see `quantization.MODES`): params then checks
that every Linear that runs is quantized and that the pruned blocks' hold nothing, and the oracle is
quantized the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qprune.arch.qwen3 import OUTPUT_PROJECTIONS
from qprune.io.safetensors import read_checkpoint
from qprune.io.source import read_qwen3_config, resolve_model_dir
from qprune.plan import Plan
from qprune.runtime.load import load, load_config
from qprune.runtime.precision import overflow_message

HEAL_REPORT = "qprune_heal.json"  # written by heal.py, which imports far more than verification needs
LOGITS_TOLERANCE = 1e-5
# Quantized, the pruned model and the oracle run the same quantized kernels on the same inputs; the
# pruned blocks add exact zeros to the oracle. So the bound stays tight: it allows only for kernels
# that order their sums differently at different shapes (the logits are of order 10).
QUANTIZED_LOGITS_TOLERANCE = 1e-3
QUANTIZED_CACHE_TOLERANCE = 0.02  # of the largest |score|, for bitsandbytes (see check_cache)
CACHE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    name: str
    detail: str
    passed: bool

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<10} {self.detail}"


def _describe_difference(expected: set[str], actual: set[str]) -> str:
    parts = []
    if expected - actual:
        parts.append(f"missing {sorted(expected - actual)[:3]}")
    if actual - expected:
        parts.append(f"unexpected {sorted(actual - expected)[:3]}")
    return "; ".join(parts)


def check_keys(model_dir: Path, base_dir: Path | None) -> Check:
    tensors = read_checkpoint(model_dir)
    plan = Plan.from_config(read_qwen3_config(model_dir))
    if base_dir is not None:
        base = read_checkpoint(base_dir)
        expected = {name for name in base if not plan.prunes(name)}
        source = f"base {len(base)} tensors - {len(base) - len(expected)} of pruned blocks"
    else:
        import torch

        from qprune.modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM

        with torch.device("meta"):
            model = PrunedQwen3ForCausalLM(load_config(model_dir))
        expected = set(model.state_dict())
        if model.config.tie_word_embeddings:
            expected.discard("lm_head.weight")
        base = None
        source = "the pruned model's tensors"
    actual = set(tensors)
    if actual != expected:
        return Check(
            "keys", f"{len(actual)} tensors, expected {source}: {_describe_difference(expected, actual)}", False
        )
    if base is not None:
        changed = [n for n in actual if (base[n].dtype, base[n].shape) != (tensors[n].dtype, tensors[n].shape)]
        if changed:
            return Check("keys", f"shape or dtype differs from the base for {sorted(changed)[:3]}", False)
    return Check("keys", f"{len(actual)} tensors = {source}", True)


def _oracle(base_dir: Path, plan: Plan, quantize: str | None = None):
    """The base as stock transformers computes it, with the pruned blocks' output projections zeroed.
    Quantized, it is quantized the same way except for those zeroed projections: they stay float32
    zeros, so the blocks add exactly nothing (a zero weight has no scale to quantize it with)."""
    import torch
    from transformers import Qwen3ForCausalLM

    from qprune.runtime.quantize import quantization_config

    base_plan = Plan.from_config(read_qwen3_config(base_dir))
    blocks = [(i, "attn") for i in set(plan.attn) - set(base_plan.attn)]
    blocks += [(i, "mlp") for i in set(plan.mlp) - set(base_plan.mlp)]
    zeroed = [f"model.layers.{i}.{OUTPUT_PROJECTIONS[kind]}" for i, kind in sorted(blocks)]
    kwargs = {}
    if quantize is not None:
        kwargs["quantization_config"] = quantization_config(
            quantize, load_config(base_dir), torch.float32, also_skip=zeroed, on_cuda=torch.cuda.is_available()
        )
    if base_plan.num_blocks:  # the base is itself pruned: no stock class can hold it
        oracle = load(base_dir, dtype=torch.float32, **kwargs)
    else:
        oracle = Qwen3ForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True, **kwargs)
    with torch.no_grad():
        for name in zeroed:
            oracle.get_submodule(name).weight.zero_()
    return oracle.eval()


_QPRUNE_FIELDS = ("model_type", "auto_map", "architectures", "pruned_attn_layers", "pruned_mlp_layers")


def self_oracle(model_dir: Path):
    """Stock `Qwen3ForCausalLM` (float32) holding the checkpoint's own tensors, with every tensor of a
    pruned block zero-filled: the oracle for any checkpoint, healed ones included (whose weights no
    longer equal the base's), and for checkpoints verified without `--base`."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = {k: v for k, v in read_qwen3_config(model_dir).items() if k not in _QPRUNE_FIELDS}
    state = {}
    for file in sorted({entry.file for entry in read_checkpoint(model_dir).values()}):
        state.update(load_file(file))
    with torch.device("meta"):
        oracle = Qwen3ForCausalLM(Qwen3Config(**config))
    shapes = {name: tensor.shape for name, tensor in oracle.state_dict().items()}
    full = {name: state[name].float() if name in state else torch.zeros(shape) for name, shape in shapes.items()}
    if oracle.config.tie_word_embeddings:
        full["lm_head.weight"] = full["model.embed_tokens.weight"]
    oracle.load_state_dict(full, assign=True)
    if oracle.config.tie_word_embeddings:
        oracle.tie_weights()
    oracle.model.rotary_emb = type(oracle.model.rotary_emb)(config=oracle.config)  # its buffers were on meta
    return oracle.eval()


def _greedy(model, input_ids, attention_mask, new_tokens: int, use_cache: bool):
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=pad,
        output_scores=True,
        return_dict_in_generate=True,
    )


def max_score_delta(scores_a, scores_b) -> float:
    """Largest |difference| between two generations' per-step scores; masked (-inf) entries must agree."""
    worst = 0.0
    for a, b in zip(scores_a, scores_b, strict=True):
        finite = a.isfinite()
        if not (finite == b.isfinite()).all():
            return float("inf")
        worst = max(worst, (a - b)[finite].abs().max().item())
    return worst


def filled_cache_slots(cache) -> int:
    """How many KV-cache layers hold keys (works for transformers 4.57 and 5.x caches)."""
    return sum(getattr(layer, "keys", None) is not None and layer.keys.numel() > 0 for layer in cache.layers)


def check_cache(model, input_ids, new_tokens: int) -> Check:
    import torch

    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0  # the second row is left-padded
    cached = _greedy(model, input_ids, attention_mask, new_tokens, use_cache=True)
    uncached = _greedy(model, input_ids, attention_mask, new_tokens, use_cache=False)
    delta = max_score_delta(cached.scores, uncached.scores)
    same_tokens = torch.equal(cached.sequences, uncached.sequences)
    cache = cached.cache if getattr(cached, "cache", None) is not None else cached.past_key_values
    kept_attn = sum(not layer.prune_self_attn for layer in model.model.layers)
    slots = filled_cache_slots(cache)
    if getattr(model, "qprune_quantized", None) in ("int8", "nf4"):
        # bitsandbytes' results depend on how many tokens a call holds (LLM.int8 picks outlier columns
        # over all of them; nf4 has a kernel for single tokens), and cached decoding feeds one token per
        # call. A broken cache would change the scores wholesale, so a relative bound still catches it.
        scale = max(score[score.isfinite()].abs().max().item() for score in uncached.scores)
        tolerance, same_needed = QUANTIZED_CACHE_TOLERANCE * scale, False
    else:
        tolerance, same_needed = CACHE_TOLERANCE, True
    passed = (same_tokens or not same_needed) and delta <= tolerance and slots == kept_attn
    detail = (
        f"cached vs uncached greedy ({new_tokens} tokens, left-padded batch): tokens "
        f"{'equal' if same_tokens else 'DIFFER'}, max |Δscores| {delta:.2e} (<= {tolerance:.2g}); "
        f"KV cache filled for {slots} layers, attention runs in {kept_attn}"
    )
    return Check("cache", detail, passed)


def check_params(model, model_dir: Path) -> Check:
    """Unquantized: the model holds exactly the parameters the checkpoint stores. Quantized: every
    Linear that runs is quantized, and the pruned blocks' Linears hold nothing."""
    if not getattr(model, "qprune_quantized", None):
        stored = sum(entry.numel for entry in read_checkpoint(model_dir).values())
        held = sum(p.numel() for p in model.parameters())
        return Check("params", f"loaded model holds {held:,} parameters, checkpoint stores {stored:,}", held == stored)
    from torch import nn

    from qprune.modeling.modeling_pruned_qwen3 import PrunedLinear
    from qprune.runtime.quantize import describe

    kinds = (nn.Linear, PrunedLinear)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, kinds) and name != "lm_head"}
    pruned = {name for name in linears if model.config.is_pruned_tensor(f"{name}.weight")}
    empty = {name for name, m in linears.items() if isinstance(m, PrunedLinear)}
    plain = {name for name, m in linears.items() if type(m) is nn.Linear and _is_plain(m.weight)}
    kept = len(linears) - len(pruned)
    passed = empty == pruned and not plain
    detail = (
        f"{kept - len(plain)} of {kept} kept Linears quantized"
        f"{f' (not: {sorted(plain)[:3]})' if plain else ''}; the {len(pruned)} of pruned blocks "
        f"{'hold nothing' if empty == pruned else 'HOLD WEIGHTS'}; {describe(model)}"
    )
    return Check("params", detail, passed)


def _is_plain(weight) -> bool:
    import torch

    return weight is None or type(weight) in (torch.Tensor, torch.nn.Parameter)


def verify(
    path: str,
    base: str | None = None,
    *,
    quantize: str | None = None,
    seq_len: int = 32,
    new_tokens: int = 12,
    seed: int = 0,
) -> list[Check]:
    """The checks above. With `quantize`, the model and the oracle are quantized the same way and
    their logits must agree within `QUANTIZED_LOGITS_TOLERANCE`."""
    import torch

    model_dir = resolve_model_dir(path)
    base_dir = resolve_model_dir(base) if base else None
    checks = [check_keys(model_dir, base_dir)]
    if not checks[0].passed:
        return checks  # loading would fail on the missing tensor; the key check already says which

    model = load(model_dir, dtype=torch.float32, quantize=quantize)
    checks.append(check_params(model, model_dir))

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(model.config.vocab_size, (2, seq_len), generator=generator)
    input_ids = input_ids.to(model.get_input_embeddings().weight.device)
    with torch.no_grad():
        logits = model(input_ids).logits
        if not bool(torch.isfinite(logits).all()):
            checks.append(Check("logits", overflow_message(model), False))
            return checks
        healed = (model_dir / HEAL_REPORT).exists()  # trained after pruning: no longer the base's weights
        if base_dir is not None and not healed:
            oracle = _oracle(base_dir, Plan.from_config(model.config.to_dict()), quantize)
            delta = (logits - oracle(input_ids).logits).abs().max().item()
            tolerance = QUANTIZED_LOGITS_TOLERANCE if quantize else LOGITS_TOLERANCE
            how = f"fp32, both {quantize}" if quantize else "fp32"
            detail = f"max |Δlogits| vs oracle (base with pruned output projections zeroed, {how}): {delta:.2e}"
            checks.append(Check("logits", f"{detail} (<= {tolerance:g})", delta <= tolerance))
        elif base_dir is not None:
            checks.append(Check("logits", "healed: its weights differ from the base by design (see self)", True))
        if quantize is None:
            delta = (logits - self_oracle(model_dir)(input_ids).logits).abs().max().item()
            detail = f"max |Δlogits| vs self-oracle (stock Qwen3 with its own tensors, pruned blocks zero): {delta:.2e}"
            checks.append(Check("self", f"{detail} (<= {LOGITS_TOLERANCE:g})", delta <= LOGITS_TOLERANCE))
        elif base_dir is None:
            checks.append(Check("logits", "finite (pass --base to compare with the oracle)", True))
        checks.append(check_cache(model, input_ids, new_tokens))
    return checks
