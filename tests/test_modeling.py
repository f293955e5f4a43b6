"""The pruned model against stock transformers: oracle logits, KV cache, memory, functional flags."""

import inspect

import pytest
import torch
from conftest import oracle, tiny_config, token_batch
from safetensors.torch import load_file
from transformers import Qwen3ForCausalLM

from qprune import PrunedQwen3DecoderLayer, PrunedQwen3ForCausalLM
from qprune.measure.verify import filled_cache_slots, max_score_delta
from qprune.plan import Plan
from qprune.runtime.load import load_config

PLANS = {
    "layer0-attn": Plan(attn=(0,)),
    "last-mlp": Plan(mlp=(3,)),
    "all-attn": Plan(attn=(0, 1, 2, 3)),
    "all-mlp": Plan(mlp=(0, 1, 2, 3)),
    "both-blocks-of-layer-1": Plan(attn=(1,), mlp=(1,)),
    "mixed": Plan(attn=(0, 2), mlp=(1, 3)),
}


def slim_model(base, plan: Plan, attn_implementation: str = "eager") -> PrunedQwen3ForCausalLM:
    """The seed's path: build from the config, then load a state dict without the pruned tensors."""
    config = load_config(base)
    config.pruned_attn_layers, config.pruned_mlp_layers = list(plan.attn), list(plan.mlp)
    config._attn_implementation = attn_implementation
    state = {}
    for shard in sorted(base.glob("*.safetensors")):
        state.update(load_file(shard))
    model = PrunedQwen3ForCausalLM(config)
    model.load_state_dict({k: v for k, v in state.items() if not plan.prunes(k)}, strict=False)
    return model.eval()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("plan_name", PLANS)
def test_logits_match_oracle(base, plan_name, attn_implementation):
    plan = PLANS[plan_name]
    model = slim_model(base, plan, attn_implementation)
    ids = token_batch()
    with torch.no_grad():
        delta = (model(ids).logits - oracle(base, plan, attn_implementation)(ids).logits).abs().max().item()
    assert delta <= 1e-5


def test_oracle_is_not_trivially_equal(untied_base):
    # guards the test above: pruning must change the function, or equality would prove nothing
    ids = token_batch()
    with torch.no_grad():
        dense = oracle(untied_base, Plan())(ids).logits
        pruned = slim_model(untied_base, PLANS["mixed"])(ids).logits
    assert (dense - pruned).abs().max().item() > 1e-2


def _left_padded():
    ids = token_batch(2, 10, seed=3)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("plan_name", PLANS)
def test_cached_generation_equals_uncached(base, plan_name, attn_implementation):
    model = slim_model(base, PLANS[plan_name], attn_implementation)
    ids, mask = _left_padded()
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max_score_delta(cached.scores, uncached.scores) <= 1e-4
    # and the oracle agrees on what was generated
    expected = oracle(base, PLANS[plan_name], attn_implementation).generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, expected.sequences)


@pytest.mark.parametrize("plan_name", PLANS)
def test_cache_holds_kv_only_for_attention_that_runs(untied_base, plan_name):
    plan = PLANS[plan_name]
    model = slim_model(untied_base, plan)
    out = model(token_batch(), use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    assert filled_cache_slots(cache) == 4 - len(plan.attn)
    if len(plan.attn) < 4:
        assert cache.get_seq_length() == token_batch().shape[1]


def test_incremental_decoding_matches_full_sequence_with_layer0_attention_pruned(untied_base):
    model = slim_model(untied_base, PLANS["layer0-attn"])
    ids = token_batch(1, 12)
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        prefix = model(ids[:, :-1], use_cache=True)
        cache = prefix.cache if getattr(prefix, "cache", None) is not None else prefix.past_key_values
        cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        step = model(ids[:, -1:], use_cache=True, **{cache_argument: cache}).logits[:, -1]
    assert (full - step).abs().max().item() <= 1e-5


def test_pruned_blocks_hold_no_parameters_and_names_are_kept(untied_base):
    plan = PLANS["mixed"]
    model = slim_model(untied_base, plan)
    stock = Qwen3ForCausalLM(tiny_config())
    assert [n for n, _ in model.named_modules()] == [n for n, _ in stock.named_modules()]
    assert all(isinstance(layer, PrunedQwen3DecoderLayer) for layer in model.model.layers)
    names = set(dict(model.named_parameters()))
    assert not any(plan.prunes(n) for n in names)
    assert {n for n in dict(stock.named_parameters()) if not plan.prunes(n)} == names
    assert model.model.layers[0].self_attn.q_proj.weight is None


def test_parameter_bytes_equal_checkpoint_bytes(tmp_path, untied_base):
    model = slim_model(untied_base, PLANS["mixed"])
    model.save_pretrained(tmp_path)
    stored = sum(t.numel() * t.element_size() for t in load_file(tmp_path / "model.safetensors").values())
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    assert abs(held - stored) <= 0.01 * stored
    dense = sum(p.numel() * p.element_size() for p in Qwen3ForCausalLM(tiny_config()).parameters())
    assert held < 0.8 * dense


def test_functional_flags_on_a_model_holding_every_weight(untied_base):
    model = slim_model(untied_base, Plan())
    plan = PLANS["mixed"]
    model.set_pruned(attn=list(plan.attn), mlp=list(plan.mlp))
    ids = token_batch()
    with torch.no_grad():
        assert (model(ids).logits - oracle(untied_base, plan)(ids).logits).abs().max().item() <= 1e-5
    # flipping a flag directly works as well, cache slots included
    model.set_pruned()
    model.model.layers[0].prune_self_attn = True
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids, use_cache=True, **kwargs), model.generate(ids, use_cache=False, **kwargs))


def test_unpruning_a_block_without_weights_is_refused(untied_base):
    model = slim_model(untied_base, Plan(mlp=(2,)))
    with pytest.raises(ValueError, match="layer 2: cannot un-prune"):
        model.set_pruned()


def test_config_rejects_out_of_range_plan():
    from qprune import PrunedQwen3Config

    with pytest.raises(ValueError, match="out of range"):
        PrunedQwen3Config(num_hidden_layers=4, pruned_mlp_layers=[4])


def test_fresh_model_gets_transformers_initialisation():
    # pruned modules are skipped by _init_weights; kept bias-free Linears must still be initialised
    from qprune import PrunedQwen3Config

    torch.manual_seed(0)
    model = PrunedQwen3ForCausalLM(PrunedQwen3Config(**tiny_config().to_dict(), pruned_mlp_layers=[0]))
    std = model.model.layers[1].mlp.gate_proj.weight.std().item()
    assert abs(std - model.config.initializer_range) < 0.005
