"""Removing experts of a Qwen3-MoE: a uniform cut is a stock Qwen3-MoE that equals the original with
the removed experts' router logits at -inf (the oracle: stock transformers with that mask), loads
without remote code, decodes the same with and without cache, and passes `verify`; the plan and every
way an expert list can be wrong are refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    MOE_DENSE_LAYER,
    assert_one_line_error,
    cli,
    moe_oracle,
    save_tiny_moe,
    save_tiny_qwen3,
    token_batch,
    with_embedded_tokenizer,
)
from transformers import AutoModelForCausalLM, Qwen3MoeForCausalLM

import qprune
from qprune.errors import QpruneError
from qprune.measure.verify import mask_experts
from qprune.plan import Plan

EXPERTS = 8
SPARSE = [0, 1, 3]  # layer 2 is dense (mlp_only_layers)
UNIFORM = Plan(experts={0: (1, 6), 1: (0, 7), 3: (3, 4)})


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def moe(request, tmp_path_factory):
    return save_tiny_moe(tmp_path_factory.mktemp("moe") / "base", tied=request.param, num_experts=EXPERTS)


def masked_oracle(base, experts: dict) -> Qwen3MoeForCausalLM:
    model = Qwen3MoeForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    mask_experts(model, experts)
    return model


def test_masking_nothing_is_the_stock_router(moe):
    """mask_experts replaces 5.x's router forward: with nothing masked (a zero mask) it is stock."""
    stock = Qwen3MoeForCausalLM.from_pretrained(moe, dtype=torch.float32).eval()
    masked = masked_oracle(moe, {layer: () for layer in SPARSE})
    with torch.no_grad():
        assert torch.equal(stock(token_batch()).logits, masked(token_batch()).logits)


def test_masking_changes_the_routing(moe):
    with torch.no_grad():
        dense = Qwen3MoeForCausalLM.from_pretrained(moe, dtype=torch.float32).eval()(token_batch()).logits
        masked = masked_oracle(moe, UNIFORM.removed_experts)(token_batch()).logits
    assert (dense - masked).abs().max() > 1e-3  # the oracle is not the dense model by accident


def test_uniform_cut_is_a_stock_qwen3_moe_equal_to_the_masked_oracle(moe, tmp_path):
    out = tmp_path / "cut"
    result = qprune.prune(moe, out, UNIFORM)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and "auto_map" not in config
    assert config["num_experts"] == EXPERTS - 2
    assert config["qprune_pruned_experts"] == {str(i): list(e) for i, e in UNIFORM.experts}
    assert not list(out.glob("*.py"))  # no modeling code: it is stock
    assert result.params_after < result.params_before
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # no remote code
    assert type(stock).__name__ == "Qwen3MoeForCausalLM"
    oracle = masked_oracle(moe, UNIFORM.removed_experts)
    with torch.no_grad():
        ids = token_batch()
        assert (stock(ids).logits - oracle(ids).logits).abs().max() <= 1e-5
        assert (qprune.load(out, dtype=torch.float32)(ids).logits - oracle(ids).logits).abs().max() <= 1e-5
        cached = stock.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = stock.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_verify_checks_a_cut_against_its_base(moe, tmp_path):
    qprune.prune(moe, tmp_path / "cut", UNIFORM)
    result = cli("verify", tmp_path / "cut", "--base", moe, "-q")
    assert result.exit_code == 0, result.output
    assert "PASS  logits" in result.output and "PASS  keys" in result.output


def test_a_second_cut_records_the_base_numbering(moe, tmp_path):
    qprune.prune(moe, tmp_path / "cut", UNIFORM)
    again = Plan(experts={layer: (0,) for layer in SPARSE})  # the cut's expert 0 of each layer
    qprune.prune(tmp_path / "cut", tmp_path / "cut2", again)
    record = json.loads((tmp_path / "cut2" / "config.json").read_text())["qprune_pruned_experts"]
    # layer 0 lost 1 and 6; the cut's expert 0 is the base's 0. Layer 1 lost 0 and 7: its 0 is the base's 1.
    assert record == {"0": [0, 1, 6], "1": [0, 1, 7], "3": [0, 3, 4]}
    oracle = masked_oracle(moe, {int(k): tuple(v) for k, v in record.items()})
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "cut2", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (stock(token_batch()).logits - oracle(token_batch()).logits).abs().max() <= 1e-5


def test_plan_file_with_experts(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"experts": {"3": [4, 0], "1": [2]}}))
    plan = Plan.from_json(path)
    assert plan.removed_experts == {1: (2,), 3: (0, 4)} and plan.to_dict()["experts"] == {"1": [2], "3": [0, 4]}
    for bad, message in (
        ({"experts": {"3": [0, 0]}}, "twice"),
        ({"experts": {"x": [0]}}, "not a layer number"),
        ({"experts": {"3": [-1]}}, "list of expert indices"),
        ({"experts": [0, 1]}, "must be an object"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(QpruneError, match=message):
            Plan.from_json(path)


@pytest.mark.parametrize(
    "experts, message",
    [
        ({layer: (0,) for layer in (0, 1, 3)} | {MOE_DENSE_LAYER: (0,)}, "dense MLP, no experts"),
        ({0: (EXPERTS,), 1: (0,), 3: (0,)}, f"experts 0..{EXPERTS - 1}"),
        ({layer: tuple(range(EXPERTS - 1)) for layer in SPARSE}, "fewer than the 2 each token runs"),
        ({layer: (0,) for layer in (0, 1, 3, 9)}, "out of range"),
    ],
)
def test_bad_expert_plans_are_one_line_errors(moe, tmp_path, experts, message):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(Plan(experts=experts).to_dict()))
    assert_one_line_error(cli("prune", moe, tmp_path / "out", "--plan", plan), message)
    assert not (tmp_path / "out").exists()


def test_experts_of_a_pruned_moe_block_or_of_a_dense_model_are_refused(moe, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"mlp": [0], "experts": {"0": [1], "1": [1], "3": [1]}}))
    assert_one_line_error(cli("prune", moe, tmp_path / "out", "--plan", plan), "pruned whole")
    dense = save_tiny_qwen3(tmp_path / "dense")
    plan.write_text(json.dumps({"experts": {"0": [1]}}))
    assert_one_line_error(cli("prune", dense, tmp_path / "out", "--plan", plan), "experts are Qwen3-MoE's")


JOINT = Plan(attn=(0,), mlp=(1,), experts={0: (2, 5), 3: (0, 7)})  # layer 1's MoE block goes whole


def test_experts_with_blocks_are_the_pruned_format_equal_to_both_oracles(moe, tmp_path):
    """Blocks and experts in one checkpoint: qprune's format with the smaller num_experts; it equals stock
    transformers with the blocks' output projections zeroed and the experts' router logits at -inf,
    with and without cache, and its stock export equals it too."""
    out = tmp_path / "joint"
    result = qprune.prune(moe, out, JOINT)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3_moe" and config["num_experts"] == EXPERTS - 2
    assert (config["pruned_attn_layers"], config["pruned_mlp_layers"]) == ([0], [1])
    assert config["qprune_pruned_experts"] == {"0": [2, 5], "1": [], "3": [0, 7]}
    assert "removed 2 experts from each of 2 MoE layers" in result.summary()
    oracle = moe_oracle(moe, Plan(JOINT.attn, JOINT.mlp))
    mask_experts(oracle, JOINT.removed_experts)
    model = qprune.load(out, dtype=torch.float32)
    ids = token_batch()
    with torch.no_grad():
        assert (model(ids).logits - oracle(ids).logits).abs().max() <= 1e-5
    assert cli("verify", out, "--base", moe, "-q").exit_code == 0
    assert cli("export", out, tmp_path / "stock", "-q").exit_code == 0
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "stock", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (stock(ids).logits - oracle(ids).logits).abs().max() <= 1e-5


# -- saliency and prune --auto --expert-ratio ---------------------------------------------------------


@pytest.fixture(scope="module")
def moe_with_text(tmp_path_factory):
    path = save_tiny_moe(tmp_path_factory.mktemp("moe-text") / "base", num_experts=EXPERTS, vocab=4096)
    return with_embedded_tokenizer(path)


def _stock(path) -> Qwen3MoeForCausalLM:
    return Qwen3MoeForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_frequency_counts_the_routing_stock_transformers_reports(moe):
    from qprune.measure.experts import expert_saliency

    model, ids = _stock(moe), token_batch(batch=3, length=20)
    saliency = expert_saliency(model, ids)
    with torch.no_grad():
        router_logits = model(ids, output_router_logits=True).router_logits
    for layer, logits in zip(SPARSE, router_logits, strict=True):
        chosen = torch.topk(logits.float().softmax(-1), 2, dim=-1).indices
        expected = torch.bincount(chosen.flatten(), minlength=EXPERTS) / chosen.numel()
        assert saliency.scores["frequency"][layer] == pytest.approx(expected.tolist(), abs=1e-6)  # float32 division


def test_reap_follows_the_expert_output_norm(moe, tmp_path):
    """Doubling one expert's down_proj (in the last MoE layer, so that no later routing changes) doubles
    its REAP score and leaves routing and the others alone; zeroing it makes it score 0, the first to go."""
    from qprune.measure.experts import _expert_weights, expert_saliency

    ids, LAST = token_batch(batch=3, length=20), SPARSE[-1]
    model = _stock(moe)
    before = expert_saliency(model, ids)
    with torch.no_grad():
        _expert_weights(model.model.layers[LAST].mlp.experts, 5)[2].mul_(2)
    after = expert_saliency(model, ids)
    assert before.scores["frequency"] == after.scores["frequency"]
    assert after.scores["reap"][LAST][5] == pytest.approx(2 * before.scores["reap"][LAST][5], rel=1e-5)
    others = [e for e in range(EXPERTS) if e != 5]
    unchanged = [before.scores["reap"][LAST][e] for e in others]
    assert [after.scores["reap"][LAST][e] for e in others] == pytest.approx(unchanged)
    with torch.no_grad():
        _expert_weights(model.model.layers[LAST].mlp.experts, 5)[2].zero_()
    zeroed = expert_saliency(model, ids)
    assert zeroed.scores["reap"][LAST][5] == 0 and 5 in zeroed.plan(0.25).removed_experts[LAST]


def test_saliency_plan_takes_the_lowest_in_every_layer(moe):
    from qprune.measure.experts import expert_saliency

    saliency = expert_saliency(_stock(moe), token_batch())
    plan = saliency.plan(0.25, "frequency")
    for layer in SPARSE:
        removed, values = plan.removed_experts[layer], saliency.scores["frequency"][layer]
        assert len(removed) == 2 and max(values[e] for e in removed) <= min(
            values[e] for e in range(EXPERTS) if e not in removed
        )
    with pytest.raises(QpruneError, match="fewer than the 2 each token runs"):
        saliency.plan(0.9)


def test_prune_auto_expert_ratio_writes_the_reap_cut(moe_with_text, tmp_path):
    out = tmp_path / "cut"
    result = cli("prune", moe_with_text, out, "--auto", "--expert-ratio", "0.25", "--samples", "4", "--seq-len", "32")
    assert result.exit_code == 0, result.output
    assert "removed 2 experts from each of 3 MoE layers" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["num_experts"] == EXPERTS - 2
    assert cli("verify", out, "--base", moe_with_text, "-q").exit_code == 0
    scan = cli("scan", moe_with_text, "--experts", "--samples", "4", "--seq-len", "32", "--json", "-q")
    assert scan.exit_code == 0, scan.output
    scores = json.loads(scan.output)["experts"]["scores"]
    assert set(scores) == {"reap", "frequency"} and set(scores["reap"]) == {str(i) for i in SPARSE}


def test_expert_ratio_bad_input(moe_with_text, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(cli("prune", moe_with_text, out, "--expert-ratio", "0.25"), "add --auto")
    args = ("prune", moe_with_text, out, "--auto", "--expert-ratio")
    assert_one_line_error(cli(*args, "0.25", "--blocks", "1"), "--expert-ratio removes experts only")
    assert_one_line_error(cli(*args, "1.5"), "--expert-ratio must be between 0 and 1")
    bad_metric = cli(*args, "0.25", "--expert-metric", "mean")
    assert_one_line_error(bad_metric, "--expert-metric mean: choose reap or frequency or kl")
    dense = save_tiny_qwen3(tmp_path / "dense")  # refused from its config, before any data is read
    assert_one_line_error(cli("prune", dense, out, "--auto", "--expert-ratio", "0.25"), "experts are Qwen3-MoE's")
    assert not out.exists()


def test_bench_ideal_counts_the_experts_a_cut_lacks(moe, tmp_path):
    """bench measures an expert cut against its base: its ideal is the base's cost over the cut's, whose
    router is smaller and whose batch reads fewer distinct experts (cost.decode_bytes_per_step)."""
    from qprune.cost import Shape, decode_bytes_per_step, ideal_speedups

    qprune.prune(moe, tmp_path / "cut", UNIFORM)
    args = ("--batch", "1,8", "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1", "--warmup", "0")
    result = cli("bench", tmp_path / "cut", "--base", moe, *args, "--dtype", "float32", "--json", "-q")
    assert result.exit_code == 0, result.output
    rows = {row["batch"]: row for row in json.loads(result.output)["batches"]}
    dense = Shape.from_config(json.loads((moe / "config.json").read_text()))
    cut = Shape.from_config(json.loads((tmp_path / "cut" / "config.json").read_text()))
    assert cut.experts == dense.experts - 2
    for batch, row in rows.items():
        ideal = ideal_speedups(dense, Plan(), Plan(), batch, 8, 2, 4, pruned_shape=cut)
        assert row["ideal_decode_speedup"] == pytest.approx(ideal.decode)
        assert ideal.decode == pytest.approx(
            decode_bytes_per_step(dense, Plan(), batch, 8, 2, 4) / decode_bytes_per_step(cut, Plan(), batch, 8, 2, 4)
        )
    assert rows[8]["ideal_decode_speedup"] > rows[1]["ideal_decode_speedup"] > 1  # a batch reads more experts


def test_heal_distils_the_dense_moe_into_an_expert_cut(moe_with_text, tmp_path):
    """The base the cut records teaches it (its extra experts are no mismatch); the healed model keeps
    the stock format and the record."""
    qprune.prune(moe_with_text, tmp_path / "cut", UNIFORM)
    args = ("--tokens", "256", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "200", "-q")
    result = cli("heal", tmp_path / "cut", tmp_path / "healed", *args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "healed" / "config.json").read_text())
    assert config["num_experts"] == EXPERTS - 2 and config["qprune_pruned_experts"]
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "healed")).__name__ == "Qwen3MoeForCausalLM"


def test_a_damaged_expert_record_is_one_line(moe, tmp_path):
    qprune.prune(moe, tmp_path / "cut", UNIFORM)
    path = tmp_path / "cut" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"qprune_pruned_experts": {"0": "1,6"}}))
    result = cli("verify", tmp_path / "cut", "--base", moe, "-q")
    assert_one_line_error(result, "qprune_pruned_experts: experts of layer 0 must be a list of expert indices")


def test_scan_experts_writes_the_expert_heatmap(moe_with_text, tmp_path):
    pytest.importorskip("matplotlib", reason="the heatmaps need matplotlib")
    args = ("--experts", "--expert-kl", "--samples", "2", "--seq-len", "32", "--out", tmp_path / "scan", "-q")
    result = cli("scan", moe_with_text, *args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scan" / "experts.png").stat().st_size > 0 and "experts.png" in result.output
    scores = json.loads((tmp_path / "scan" / "scan.json").read_text())["experts"]["scores"]
    assert set(scores) == {"reap", "frequency", "kl"}
    assert len(scores["reap"][str(SPARSE[0])]) == len(scores["kl"][str(SPARSE[0])]) == EXPERTS
    assert all(value >= 0 for value in scores["kl"][str(SPARSE[0])]) and max(scores["kl"][str(SPARSE[0])]) > 0


def test_saliency_layer_by_layer_equals_in_memory(moe):
    """Within --max-memory the hooks fire while each layer is resident: the same scores."""
    from qprune.measure.experts import expert_saliency
    from qprune.runtime.streamed import StreamedModel

    ids = token_batch(batch=3, length=20)
    whole = expert_saliency(_stock(moe), ids)
    streamed = expert_saliency(StreamedModel.open(moe, torch.float32, max_memory=2 * 10**8), ids)
    for metric in ("frequency", "reap"):
        for layer in SPARSE:
            assert streamed.scores[metric][layer] == pytest.approx(whole.scores[metric][layer], rel=1e-5, abs=1e-7)


def test_prune_auto_expert_ratio_within_max_memory(moe_with_text, tmp_path):
    args = ("--auto", "--expert-ratio", "0.25", "--samples", "4", "--seq-len", "32", "--dtype", "float32")
    whole = cli("prune", moe_with_text, tmp_path / "whole", *args, "-q")
    spilled = cli("prune", moe_with_text, tmp_path / "layered", *args, "--max-memory", "9.6MB")
    assert whole.exit_code == 0 and spilled.exit_code == 0, spilled.output
    assert "measuring in memory" not in spilled.output  # it ran layer by layer
    records = [json.loads((tmp_path / name / "config.json").read_text()) for name in ("whole", "layered")]
    assert records[0]["qprune_pruned_experts"] == records[1]["qprune_pruned_experts"]
