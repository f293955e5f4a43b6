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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import read_checkpoint
from .loading import load, load_config
from .plan import Plan
from .source import read_qwen3_config, resolve_model_dir

LOGITS_TOLERANCE = 1e-5
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

        from .modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM

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


def _oracle(base_dir: Path, plan: Plan):
    """The base as stock transformers computes it, with the pruned blocks' output projections zeroed."""
    import torch
    from transformers import Qwen3ForCausalLM

    base_plan = Plan.from_config(read_qwen3_config(base_dir))
    if base_plan.num_blocks:  # the base is itself pruned: no stock class can hold it
        oracle = load(base_dir, dtype=torch.float32)
    else:
        oracle = Qwen3ForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        for i in set(plan.attn) - set(base_plan.attn):
            oracle.model.layers[i].self_attn.o_proj.weight.zero_()
        for i in set(plan.mlp) - set(base_plan.mlp):
            oracle.model.layers[i].mlp.down_proj.weight.zero_()
    return oracle


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
    passed = same_tokens and delta <= CACHE_TOLERANCE and slots == kept_attn
    detail = (
        f"cached vs uncached greedy ({new_tokens} tokens, left-padded batch): tokens "
        f"{'equal' if same_tokens else 'DIFFER'}, max |Δscores| {delta:.2e} (<= {CACHE_TOLERANCE:g}); "
        f"KV cache filled for {slots} layers, attention runs in {kept_attn}"
    )
    return Check("cache", detail, passed)


def verify(
    path: str, base: str | None = None, *, seq_len: int = 32, new_tokens: int = 12, seed: int = 0
) -> list[Check]:
    import torch

    model_dir = resolve_model_dir(path)
    base_dir = resolve_model_dir(base) if base else None
    checks = [check_keys(model_dir, base_dir)]
    if not checks[0].passed:
        return checks  # loading would fail on the missing tensor; the key check already says which

    model = load(model_dir, dtype=torch.float32)
    stored = sum(entry.numel for entry in read_checkpoint(model_dir).values())
    held = sum(p.numel() for p in model.parameters())
    checks.append(
        Check("params", f"loaded model holds {held:,} parameters, checkpoint stores {stored:,}", held == stored)
    )

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(model.config.vocab_size, (2, seq_len), generator=generator)
    with torch.no_grad():
        logits = model(input_ids).logits
        if base_dir is not None:
            oracle = _oracle(base_dir, Plan.from_config(model.config.to_dict()))
            delta = (logits - oracle(input_ids).logits).abs().max().item()
            detail = f"max |Δlogits| vs oracle (base with pruned output projections zeroed, fp32): {delta:.2e}"
            checks.append(Check("logits", f"{detail} (<= {LOGITS_TOLERANCE:g})", delta <= LOGITS_TOLERANCE))
        else:
            finite = bool(torch.isfinite(logits).all())
            checks.append(Check("logits", f"finite: {finite} (pass --base to compare with the oracle)", finite))
        checks.append(check_cache(model, input_ids, new_tokens))
    return checks
