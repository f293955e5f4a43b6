"""`verify()`: show that a pruned checkpoint computes exactly what its plan says.

    checks = verify("qwen3-pruned", base="Qwen/Qwen3-0.6B")
    all(check.passed for check in checks)

The checks, each with its figure:
- keys: the checkpoint holds the base's tensors minus exactly the pruned blocks' (without a base:
  exactly the tensors the pruned model has), with the base's shapes and dtypes;
- parameters: the loaded model holds as many parameters as the checkpoint stores (none for pruned
  blocks);
- logits (needs the base): max |Δlogits| against the oracle, the base loaded as its stock class
  (`Qwen3ForCausalLM`, `Qwen3MoeForCausalLM`) with the pruned blocks' output projections zeroed
  (o_proj; down_proj, every expert's in an MoE block), all in float32;
- cache: greedy decoding of a left-padded batch with the KV cache equals decoding without it, and the
  cache holds K/V only for the attention layers that run.

`verify(..., quantize="int8")` loads the model quantized (see `quantization.MODES`): params then checks
that every Linear that runs is quantized and that the pruned blocks' hold nothing, and the oracle is
quantized the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qprune.arch import family_of
from qprune.errors import QpruneError
from qprune.io.source import Checkpoint, check_complete, check_pruned_absent, open_checkpoint
from qprune.plan import Plan
from qprune.runtime.load import load, load_config
from qprune.runtime.precision import overflow_message

HEAL_REPORT = "qprune_heal.json"  # written by heal.py, which imports far more than verification needs
LOGITS_TOLERANCE = 1e-5
# Quantized, the pruned model and the oracle run the same quantized kernels on the same inputs; the
# pruned blocks add exact zeros to the oracle. So the bound stays tight: it allows only for kernels
# that order their sums differently at different shapes (the logits are of order 10). On CUDA the
# two differed by 1.1e-3 once (torchao-int8 on an H200, a tiny test model; cause not investigated).
QUANTIZED_LOGITS_TOLERANCE = 1e-3
QUANTIZED_LOGITS_TOLERANCE_CUDA = 3e-3
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


def check_keys(checkpoint: Checkpoint, base_checkpoint: Checkpoint | None) -> Check:
    tensors, config, plan = checkpoint.tensors, checkpoint.config, checkpoint.plan
    check_pruned_absent(tensors, plan, checkpoint.dir)  # an error, not a failed check: as everywhere else
    if base_checkpoint is not None:
        from qprune.io.experts import expert_tensors, recorded_experts
        from qprune.io.width import recorded_width, width_tensors

        base = base_checkpoint.tensors
        expected = {name for name in base if not plan.prunes(name)}
        source = f"base {len(base)} tensors - {len(base) - len(expected)} of pruned blocks"
        experts = recorded_experts(config)
        if experts:  # the base's tensors as the expert cut renames and slices them
            base = {entry.name: entry for entry in expert_tensors(base_checkpoint, Plan(experts=experts))}
            expected = {name for name in base if not plan.prunes(name)}
            source = f"base {len(base_checkpoint.tensors)} tensors less the removed experts' and pruned blocks'"
        width = recorded_width(config)
        if width.has_width:  # the base's tensors as the width cut slices them
            base = {entry.name: entry for entry in width_tensors(base_checkpoint, width)}
            source = f"base {len(base)} tensors, sliced to the recorded width"
    else:
        family = family_of(config)
        expected = {name for name in family.expected_tensors(config) if not plan.prunes(name)}
        if family.config_field(config, "tie_word_embeddings"):
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


def mask_experts(model, experts: dict[int, tuple[int, ...]]):
    """Set the router logits of `experts` ({layer: indices}) to -inf in a stock Qwen3-MoE: the oracle of
    an expert cut. transformers 4.57's router is a Linear whose logits the block routes by (a hook adds
    the mask to them); 5.x's router routes inside its own forward, which is replaced here by the same
    computation with the mask added to the logits (`tests/test_experts.py` checks that, with nothing
    masked, it equals the stock router exactly). Returns a function that takes the masks off again."""
    import torch
    import torch.nn.functional as F

    undo = []
    for layer, removed in experts.items():
        gate = model.model.layers[layer].mlp.gate
        mask = torch.zeros(gate.weight.shape[0], dtype=gate.weight.dtype, device=gate.weight.device)
        mask[list(removed)] = float("-inf")
        if isinstance(gate, torch.nn.Linear):
            undo.append(gate.register_forward_hook(lambda module, args, logits, mask=mask: logits + mask).remove)
            continue

        def forward(hidden_states, router=gate, mask=mask):
            hidden_states = hidden_states.reshape(-1, router.hidden_dim)
            logits = F.linear(hidden_states, router.weight) + mask
            probs = F.softmax(logits, dtype=torch.float, dim=-1)
            top_value, top_index = torch.topk(probs, router.top_k, dim=-1)
            if router.norm_topk_prob:
                top_value /= top_value.sum(dim=-1, keepdim=True)
            return logits, top_value.to(logits.dtype), top_index

        gate.forward = forward
        undo.append(lambda router=gate: delattr(router, "forward"))  # the class's forward again

    def unmask() -> None:
        for step in undo:
            step()

    return unmask


def zero_width(model, width: Plan) -> None:
    """Zero the `down_proj` columns of `width.ffn`'s channels and the `o_proj` columns of the query
    heads of `width.kv_heads`' groups in a stock Qwen3: the oracle of a width cut (what removing them
    computes)."""
    import torch

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rep = config.num_attention_heads // config.num_key_value_heads
    with torch.no_grad():
        for layer, channels in width.ffn:
            model.model.layers[layer].mlp.down_proj.weight[:, list(channels)] = 0
        for layer, groups in width.kv_heads:
            columns = [(g * rep + h) * head_dim + d for g in groups for h in range(rep) for d in range(head_dim)]
            model.model.layers[layer].self_attn.o_proj.weight[:, columns] = 0


def _oracle(base_checkpoint: Checkpoint, plan: Plan, quantize: str | None = None, experts: dict | None = None):
    """The base as stock transformers computes it, with the pruned blocks' output projections zeroed.
    Quantized, it is quantized the same way except for those zeroed projections: they stay float32
    zeros, so the blocks add exactly nothing (a zero weight has no scale to quantize it with)."""
    import torch

    from qprune.runtime.quantize import quantization_config

    base_config, base_dir = base_checkpoint.config, base_checkpoint.dir
    family, base_plan = family_of(base_config), base_checkpoint.plan
    blocks = {(i, "attn") for i in set(plan.attn) - set(base_plan.attn)}
    blocks |= {(i, "mlp") for i in set(plan.mlp) - set(base_plan.mlp)}

    def zeroed(name: str) -> bool:
        layer = family.tensor_block(name)
        return layer is not None and layer in blocks and family.is_output_projection(name, layer[1])

    kwargs = {}
    if quantize is not None:
        skip = sorted(name.removesuffix(".weight") for name in family.expected_tensors(base_config) if zeroed(name))
        on_cuda = torch.cuda.is_available()
        kwargs["quantization_config"] = quantization_config(
            quantize, load_config(base_checkpoint), torch.float32, also_skip=skip, on_cuda=on_cuda
        )
        kwargs["device_map"] = "auto" if on_cuda else None  # where `load` puts the quantized model too
    if base_plan.num_blocks:  # the base is itself pruned: no stock class can hold it
        oracle = load(base_checkpoint, dtype=torch.float32, **kwargs)
    else:
        _, stock_class = family.stock_classes()
        oracle = stock_class.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True, **kwargs)
    with torch.no_grad():
        for name, parameter in oracle.named_parameters():
            if zeroed(name):
                parameter.zero_()
    if experts:
        mask_experts(oracle, experts)
    return oracle.eval()


def self_oracle(checkpoint: str | Path | Checkpoint):
    """The stock model of the checkpoint's family (float32) holding the checkpoint's own tensors, with
    every tensor of a pruned block zero-filled: the oracle for any checkpoint, healed ones included
    (whose weights no longer equal the base's), and for checkpoints verified without `--base`. It is
    loaded by transformers from a temporary stock checkpoint, so each version converts the tensors
    its own way (5.x fuses MoE experts).

    A checkpoint whose layers differ in size (`layer_num_experts`, `layer_intermediate_size`,
    `layer_num_key_value_heads`) is held at the largest size in every layer, its own tensors in the
    leading rows and columns and zeros after them: zero MLP channels and zero KV heads add nothing,
    and the experts a layer lacks are zeros whose router logits are -inf, which is what lacking them
    computes."""
    import tempfile

    import torch

    from qprune.io.safetensors import write_shards
    from qprune.io.stock import stock_config, stock_tensors

    checkpoint = open_checkpoint(checkpoint)
    config, plan = checkpoint.config, checkpoint.plan
    layers = list(range(config["num_hidden_layers"]))
    short = _short_layers(config, plan)
    config = {k: v for k, v in config.items() if k not in _PER_LAYER_SIZES}
    entries, narrow = _padded(stock_tensors(checkpoint, layers, plan, config), config)
    _, stock_class = family_of(config).stock_classes()
    with tempfile.TemporaryDirectory(prefix="qprune-oracle-") as tmp:
        write_shards(entries, Path(tmp), max_shard_size=2**62)
        (Path(tmp) / "config.json").write_text(json.dumps(stock_config(config, layers)))
        oracle = stock_class.from_pretrained(tmp, dtype=torch.float32, use_safetensors=True)
    if narrow:
        from safetensors import safe_open

        with torch.no_grad():
            for entry in narrow:
                with safe_open(entry.file, "pt") as f:
                    small = f.get_tensor(entry.name)
                oracle.get_parameter(entry.name)[tuple(slice(0, n) for n in small.shape)] = small
    if short:
        mask_experts(oracle, {layer: tuple(range(count, oracle.config.num_experts)) for layer, count in short.items()})
    return oracle.eval()


# qprune's per-layer sizes (arch/): the self-oracle states none of them, holding every layer at the largest.
_PER_LAYER_SIZES = ("layer_num_experts", "layer_intermediate_size", "layer_num_key_value_heads")


def _short_layers(config: dict, plan: Plan) -> dict[int, int]:
    """{MoE layer that runs: its experts} for the layers with fewer than `num_experts` (a cut that is
    not uniform)."""
    from qprune.arch.qwen3_moe import LAYER_EXPERTS, num_experts

    if family_of(config).model_type != "qwen3_moe" or not config.get(LAYER_EXPERTS):
        return {}
    from qprune.io.experts import kept_counts

    return {layer: n for layer, n in kept_counts(config, plan).items() if n < num_experts(config)}


def _padded(entries: list, config: dict) -> tuple[list, list]:
    """The stock tensors at the sizes `config` (no per-layer sizes) states: a layer's tensor that is
    smaller there is written as zeros and returned in the second list (its values go into the leading
    rows and columns once loaded); a layer's tensor the checkpoint lacks (an absent expert) as zeros."""
    from qprune.io.safetensors import TensorEntry

    by_name = {entry.name: entry for entry in entries}
    dtype = by_name["model.embed_tokens.weight"].dtype
    out, narrow = [], []
    for name, shape in family_of(config).expected_tensors(config).items():
        entry = by_name.get(name)
        if entry is not None and tuple(entry.shape) != tuple(shape):
            out.append(TensorEntry.zeros(name, entry.dtype, shape))
            narrow.append(entry)
        elif entry is not None:
            out.append(entry)
        elif name.startswith("model.layers."):
            out.append(TensorEntry.zeros(name, dtype, shape))  # an expert the layer lacks
    return out, narrow


def quantized_tolerance(device_type: str) -> float:
    return QUANTIZED_LOGITS_TOLERANCE_CUDA if device_type == "cuda" else QUANTIZED_LOGITS_TOLERANCE


def _logits(model, input_ids):
    """The model's logits for `input_ids`, computed where the model lives, returned where the ids are."""
    return model(input_ids.to(model.get_input_embeddings().weight.device)).logits.to(input_ids.device)


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


def check_params(model, checkpoint: Checkpoint) -> Check:
    """Unquantized: the model holds exactly the parameters the checkpoint stores. Quantized: every
    Linear that runs is quantized, and the pruned blocks' Linears hold nothing."""
    if not getattr(model, "qprune_quantized", None):
        stored = sum(entry.numel for entry in checkpoint.tensors.values())
        held = sum(p.numel() for p in model.parameters())
        return Check("params", f"loaded model holds {held:,} parameters, checkpoint stores {stored:,}", held == stored)
    from torch import nn

    from qprune.modeling.pruned_blocks import PrunedLinear
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
    path: str | Path | Checkpoint,
    base: str | Path | Checkpoint | None = None,
    *,
    quantize: str | None = None,
    seq_len: int = 32,
    new_tokens: int = 12,
    seed: int = 0,
    progress=None,
) -> list[Check]:
    """The checks above. With `quantize`, the model and the oracle are quantized the same way and
    their logits must agree within `QUANTIZED_LOGITS_TOLERANCE`. `progress` (a `Progress`) gets a line
    as each check starts: some load a second model and take a while."""
    import torch

    note = progress.note if progress else lambda message: None

    checkpoint = open_checkpoint(path, complete=False)  # a missing tensor is a failed check, below
    base_checkpoint = open_checkpoint(base) if base else None
    checks = [check_keys(checkpoint, base_checkpoint)]
    if not checks[0].passed:
        return checks  # loading would fail on the missing tensor; the key check already says which
    # What load refuses (dtypes, shapes), refused before any line of progress.
    check_complete(checkpoint.config, checkpoint.tensors, checkpoint.plan, checkpoint.dir)

    note(f"loading {checkpoint.name} (float32{', ' + quantize if quantize else ''})")
    model = load(checkpoint, dtype=torch.float32, quantize=quantize)
    checks.append(check_params(model, checkpoint))

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(model.config.vocab_size, (2, seq_len), generator=generator)
    input_ids = input_ids.to(model.get_input_embeddings().weight.device)
    with torch.no_grad():
        logits = model(input_ids).logits
        if not bool(torch.isfinite(logits).all()):
            detail = str(QpruneError(overflow_message(model, suggest_check=False)))  # verify has no check_overflow
            checks.append(Check("logits", detail, False))
            return checks
        # Trained (heal) or patched after pruning: no longer the base's weights, by design.
        healed = (checkpoint.dir / HEAL_REPORT).exists()
        patched = "qprune_patch" in checkpoint.config
        if base_checkpoint is not None and not (healed or patched):
            note(f"logits against the oracle: loading {base_checkpoint.name}")
            from qprune.io.experts import recorded_experts
            from qprune.io.width import recorded_width

            experts = recorded_experts(checkpoint.config)
            oracle = _oracle(base_checkpoint, Plan.from_config(model.config.to_dict()), quantize, experts)
            zero_width(oracle, recorded_width(checkpoint.config))
            delta = (logits - _logits(oracle, input_ids)).abs().max().item()
            tolerance = quantized_tolerance(logits.device.type) if quantize else LOGITS_TOLERANCE
            how = f"fp32, both {quantize}" if quantize else "fp32"
            detail = f"max |Δlogits| vs oracle (base with pruned output projections zeroed, {how}): {delta:.2e}"
            checks.append(Check("logits", f"{detail} (<= {tolerance:g})", delta <= tolerance))
        elif base_checkpoint is not None:
            how = "healed" if healed else "patched"
            checks.append(Check("logits", f"{how}: its weights differ from the base by design (see self)", True))
        if quantize is None:
            note("logits against the self-oracle (a stock model with its own tensors)")
            delta = (logits - _logits(self_oracle(checkpoint), input_ids)).abs().max().item()
            detail = f"max |Δlogits| vs self-oracle (stock model with its own tensors, pruned blocks zero): {delta:.2e}"
            checks.append(Check("self", f"{detail} (<= {LOGITS_TOLERANCE:g})", delta <= LOGITS_TOLERANCE))
        elif base_checkpoint is None:
            checks.append(Check("logits", "finite (pass --base to compare with the oracle)", True))
        note(f"cached vs uncached decoding: {new_tokens} greedy steps each")
        checks.append(check_cache(model, input_ids, new_tokens))
    return checks
