"""Expert cuts that keep different counts in different MoE layers: qprune's format with
`layer_num_experts`. It equals stock transformers with the removed experts' router logits at -inf
(the oracle), through qprune.load, remote code and the streamed model, with and without cache; it
passes `verify` against its base and its self-oracle; export refuses it in one line; a later cut that
evens the counts out is a stock Qwen3-MoE again."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, cli, logit_delta, moe_oracle, save_tiny_moe, token_batch
from transformers import AutoModelForCausalLM, Qwen3MoeForCausalLM

import qprune
from qprune.measure.verify import mask_experts
from qprune.plan import Plan

EXPERTS = 8
SPARSE = [0, 1, 3]  # layer 2 is dense (mlp_only_layers)
UNEVEN = Plan(experts={0: (1,), 1: (0, 2, 5, 7), 3: (3, 4)})  # keeps 7, 4 and 6


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def moe(request, tmp_path_factory):
    return save_tiny_moe(tmp_path_factory.mktemp("moe") / "base", tied=request.param, num_experts=EXPERTS)


def masked_oracle(base, plan: Plan) -> Qwen3MoeForCausalLM:
    model = moe_oracle(base, plan)  # pruned blocks' output projections zeroed (none: the stock model)
    mask_experts(model, plan.removed_experts)
    return model.eval()


def test_uneven_cut_is_the_pruned_format_equal_to_the_masked_oracle(moe, tmp_path):
    out = tmp_path / "cut"
    result = qprune.prune(moe, out, UNEVEN)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3_moe" and config["num_experts"] == 7
    assert config["layer_num_experts"] == [7, 4, 0, 6]
    assert config["qprune_pruned_experts"] == {"0": [1], "1": [0, 2, 5, 7], "3": [3, 4]}
    assert "removed 7 experts from 3 MoE layers (1 to 4 per layer)" in result.summary()
    assert "experts removed:  7 over 3 layers (1 to 4 per layer)" in cli("info", out).output
    assert json.loads(cli("info", out, "--json").output)["experts_removed"] == config["qprune_pruned_experts"]
    names = qprune.open_checkpoint(out).tensors
    assert "model.layers.1.mlp.experts.3.down_proj.weight" in names
    assert "model.layers.1.mlp.experts.4.down_proj.weight" not in names  # nothing stored for what went
    ids = token_batch()
    oracle = masked_oracle(moe, UNEVEN)
    model = qprune.load(out, dtype=torch.float32)
    assert logit_delta(model, oracle, ids) <= 1e-5
    remote = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
    assert logit_delta(remote, oracle, ids) <= 1e-5
    assert remote.model.layers[1].mlp.gate.weight.shape[0] == 4  # nothing allocated for what went
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_verify_an_uneven_cut_against_its_base_and_itself(moe, tmp_path):
    qprune.prune(moe, tmp_path / "cut", UNEVEN)
    against_base = cli("verify", tmp_path / "cut", "--base", moe, "-q")
    assert against_base.exit_code == 0, against_base.output
    assert "PASS  keys" in against_base.output and "PASS  logits" in against_base.output
    alone = cli("verify", tmp_path / "cut", "-q")  # the self-oracle: stock with absent experts at -inf
    assert alone.exit_code == 0, alone.output
    assert "PASS  self" in alone.output


def test_uneven_cut_with_blocks_pruned_including_layer_0_attention(moe, tmp_path):
    plan = Plan(attn=(0, 3), mlp=(1,), experts={0: (0, 4, 6), 3: (5,)})
    qprune.prune(moe, tmp_path / "joint", plan)
    config = json.loads((tmp_path / "joint" / "config.json").read_text())
    assert config["layer_num_experts"] == [5, 7, 0, 7]  # layer 1's MoE block is pruned whole
    model = qprune.load(tmp_path / "joint", dtype=torch.float32)
    assert logit_delta(model, masked_oracle(moe, plan), token_batch()) <= 1e-5
    assert cli("verify", tmp_path / "joint", "--base", moe, "-q").exit_code == 0


def test_streamed_model_runs_an_uneven_cut_layer_by_layer(moe, tmp_path):
    from qprune.measure.engine import engine_of
    from qprune.runtime.streamed import StreamedModel

    qprune.prune(moe, tmp_path / "cut", UNEVEN)
    ids = token_batch()
    streamed = engine_of(StreamedModel.open(tmp_path / "cut", torch.float32, max_memory=2 * 10**8))
    whole = engine_of(qprune.load(tmp_path / "cut", dtype=torch.float32))
    assert not streamed.whole
    [(_, layered)], [(_, expected)] = list(streamed.final_states([ids])), list(whole.final_states([ids]))
    assert (layered - expected).abs().max() <= 1e-5


def test_export_refuses_an_uneven_cut_and_an_even_second_cut_is_stock(moe, tmp_path):
    qprune.prune(moe, tmp_path / "cut", UNEVEN)
    assert_one_line_error(cli("export", tmp_path / "cut", tmp_path / "stock"), "keeps 4 to 7 experts")
    assert not (tmp_path / "stock").exists()
    # cut layers 0 and 3 down to 4 as well: uniform again, so a stock Qwen3-MoE
    qprune.prune(tmp_path / "cut", tmp_path / "even", Plan(experts={0: (0, 1, 2), 3: (0, 1)}))
    config = json.loads((tmp_path / "even" / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["num_experts"] == 4 and "layer_num_experts" not in config
    record = {int(k): tuple(v) for k, v in config["qprune_pruned_experts"].items()}
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "even", dtype=torch.float32).eval()
    assert logit_delta(stock, masked_oracle(moe, Plan(experts=record)), token_batch()) <= 1e-5


def test_router_logits_with_uneven_counts_is_a_clear_error(moe, tmp_path):
    qprune.prune(moe, tmp_path / "cut", UNEVEN)
    model = qprune.load(tmp_path / "cut", dtype=torch.float32)
    with pytest.raises(ValueError, match="same expert count in every MoE layer"):
        model(token_batch(), output_router_logits=True)


def test_bench_ideal_counts_each_layers_experts(moe, tmp_path):
    from qprune.cost import Shape, parameter_count

    qprune.prune(moe, tmp_path / "cut", UNEVEN)
    shape = Shape.from_config(json.loads((tmp_path / "cut" / "config.json").read_text()))
    assert shape.layer_experts == (7, 4, 0, 6)
    model = qprune.load(tmp_path / "cut", dtype=torch.float32)
    assert parameter_count(shape, Plan()) == sum(p.numel() for p in model.parameters())


def test_heal_accepts_the_base_of_an_uneven_cut(moe, tmp_path):
    from qprune.healing.distill import check_teacher
    from qprune.io.source import open_checkpoint

    qprune.prune(moe, tmp_path / "cut", UNEVEN)
    check_teacher(open_checkpoint(tmp_path / "cut"), open_checkpoint(moe), "BASE")  # raises on a mismatch


# -- choosing uneven counts, and the KL score -----------------------------------------------------------


def test_expert_kl_is_the_kl_of_the_model_with_that_expert_masked(moe):
    """The replayed score equals the plain computation: a full forward of the model with the expert's
    router logit at -inf, KL(dense || masked) per predicted token."""
    from qprune.measure.experts import expert_kl

    model = qprune.load(moe, dtype=torch.float32)
    ids = token_batch(batch=3, length=16)
    scores = expert_kl(model, ids)
    assert set(scores) == set(SPARSE) and all(len(v) == EXPERTS for v in scores.values())
    with torch.no_grad():
        dense = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
        for layer, e in ((0, 3), (3, 6)):
            unmask = mask_experts(model, {layer: (e,)})
            masked = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
            unmask()
            expected = (dense.exp() * (dense - masked)).sum(-1).mean().item()
            assert scores[layer][e] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert torch.equal(torch.log_softmax(model(ids).logits[:, :-1].float(), -1), dense)  # unmasked again


def test_nonuniform_plan_takes_the_lowest_shares_across_layers():
    from qprune.measure.experts import ExpertSaliency

    frequency = {
        0: [0.01, 0.30, 0.30, 0.39],  # one expert hardly used
        1: [0.25, 0.25, 0.25, 0.25],  # all used evenly
        3: [0.02, 0.03, 0.45, 0.50],  # two hardly used
    }
    saliency = ExpertSaliency(4, 2, {"frequency": frequency, "reap": frequency})
    plan = saliency.plan(0.25, "frequency", "nonuniform")  # 3 of 12
    assert plan.removed_experts == {0: (0,), 3: (0, 1)}
    uniform = saliency.plan(0.25, "frequency")
    assert uniform.removed_experts == {0: (0,), 1: (0,), 3: (0,)}
    floor = saliency.plan(0.75, "frequency", "nonuniform")  # 9 of 12, but each layer keeps 2: at most 6
    assert all(len(gone) == 2 for gone in floor.removed_experts.values())


def test_prune_auto_nonuniform_writes_uneven_counts_that_verify(moe, tmp_path):
    from conftest import with_embedded_tokenizer

    base = with_embedded_tokenizer(save_tiny_moe(tmp_path / "base", num_experts=EXPERTS, vocab=4096))
    args = ("--auto", "--expert-ratio", "0.25", "--expert-allocation", "nonuniform", "--expert-metric", "kl")
    result = cli("prune", base, tmp_path / "cut", *args, "--samples", "4", "--seq-len", "32", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    removed = sum(len(v) for v in config["qprune_pruned_experts"].values())
    assert removed == round(0.25 * EXPERTS * len(SPARSE))
    assert cli("verify", tmp_path / "cut", "--base", base, "-q").exit_code == 0
    common = ("--max-tokens", "300", "--seq-len", "64", "--no-progress", "--json")
    evaluated = cli("eval", tmp_path / "cut", "--base", base, *common)
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    assert report["model"]["perplexity"] != report["base"]["perplexity"] > 1
    timing = ("--batch", "1", "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1", "--warmup", "0")
    benched = cli("bench", tmp_path / "cut", "--base", base, *timing, "--dtype", "float32", "--json", "-q")
    assert benched.exit_code == 0, benched.output
    assert json.loads(benched.output)["batches"][0]["ideal_decode_speedup"] > 1
    bad = cli("prune", base, tmp_path / "bad", "--auto", "--expert-ratio", "0.25", "--expert-allocation", "even")
    assert_one_line_error(bad, "--expert-allocation even: choose uniform or nonuniform")


def test_joint_plan_ranks_blocks_and_experts_by_kl_per_parameter():
    """A cheap expert goes before a costly block; a MoE block taken whole absorbs its layer's experts;
    the budget is never exceeded; a layer keeps the experts a token runs."""
    from conftest import tiny_moe_config

    from qprune.cost import Shape, block_parameters
    from qprune.measure.joint import expert_size, joint_plan

    config = tiny_moe_config(False, num_experts=EXPERTS).to_dict()
    shape = Shape.from_config(config)
    sizes = {(i, k): n for i in range(shape.layers) for k, n in block_parameters(shape, i).items()}
    total = sum(sizes.values())
    block_kl = {block: 1.0 for block in sizes}
    block_kl[(1, "mlp")] = 1e-9  # layer 1's MoE block matters least of all, per parameter
    expert_kl = {layer: [0.001 * (e + 1) for e in range(EXPERTS)] for layer in SPARSE}
    ratio = (sizes[(1, "mlp")] + 3 * expert_size(shape)) / total
    plan = joint_plan(config, block_kl, expert_kl, ratio)
    assert plan.mlp == (1,) and plan.attn == () and 1 not in plan.removed_experts
    assert sum(len(v) for v in plan.removed_experts.values()) == 3
    assert all(gone[0] == 0 for gone in plan.removed_experts.values())  # each layer's lowest first
    removed = sizes[(1, "mlp")] + 3 * expert_size(shape)
    assert removed <= ratio * total
    everything = joint_plan(config, block_kl | {(1, "mlp"): 1.0}, expert_kl, 0.9)
    assert all(EXPERTS - len(gone) >= 2 for gone in everything.removed_experts.values())


def test_prune_auto_joint_writes_blocks_and_experts_within_the_budget(tmp_path):
    from conftest import with_embedded_tokenizer

    from qprune.cost import Shape, parameter_count

    base = with_embedded_tokenizer(save_tiny_moe(tmp_path / "base", num_experts=EXPERTS, vocab=4096))
    args = ("--auto", "--param-ratio", "0.3", "--expert-allocation", "joint", "--samples", "4", "--seq-len", "32")
    result = cli("prune", base, tmp_path / "cut", *args, "--dtype", "float32", "-q")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    dense, cut = (Shape.from_config(json.loads((p / "config.json").read_text())) for p in (base, tmp_path / "cut"))
    plan = Plan.from_config(config)
    embeddings = dense.vocab * dense.hidden * (1 if dense.tied else 2) + dense.hidden
    decoder = parameter_count(dense, Plan()) - embeddings
    assert 0 < parameter_count(dense, Plan()) - parameter_count(cut, plan) <= 0.3 * decoder
    assert cli("verify", tmp_path / "cut", "--base", base, "-q").exit_code == 0
    for bad, message in (
        (("--param-ratio", "0.3", "--expert-allocation", "nonuniform"), "goes with --expert-ratio"),
        (("--expert-ratio", "0.3", "--expert-allocation", "joint"), "joint takes --param-ratio"),
        (("--blocks", "2", "--expert-allocation", "joint"), "joint takes --param-ratio, not --blocks"),
    ):
        assert_one_line_error(cli("prune", base, tmp_path / "bad", "--auto", *bad), message)


def test_a_dropped_final_states_generator_leaves_gradients_on(moe):
    """The engines compute under inference mode but never hold it across a yield."""
    from qprune.measure.engine import engine_of

    engine = engine_of(qprune.load(moe, dtype=torch.float32))
    first, second = engine.final_states([token_batch()]), engine.final_states([token_batch()])
    next(first), next(second)
    del first  # dropped before the other: restoring out of order must not switch gradients off
    del second
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
