"""Scan and automatic plans, on the embedded trained model with one block made useless by construction,
and on tiny random models; prefix reuse is checked against a full forward per candidate."""

import json

import pytest
import torch
from conftest import cli, token_batch, with_embedded_tokenizer
from transformers import Qwen3ForCausalLM

from qprune import load
from qprune.cost import Shape, block_parameters
from qprune.errors import QpruneError
from qprune.measure.ablation import BlockRunner, FullForwardRunner, all_blocks
from qprune.measure.data import DataSpec, load_token_batches
from qprune.measure.scan import METRICS, scan_blocks
from qprune.measure.search import Constraints, Target, greedy_search, oneshot_search
from qprune.ops.prune import prune
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

USELESS = (4, "attn")  # naturally a middling block of the embedded model (ranks 2-6 of 12)
SMALL = DataSpec(samples=8, seq_len=256)  # enough text that every real block matters


@pytest.fixture(scope="module")
def useless_model_dir(tmp_path_factory):
    """The embedded model with layer 4's attention output projection zeroed: removing it changes nothing."""
    path = tmp_path_factory.mktemp("useless") / "model"
    model = Qwen3ForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.bfloat16)
    with torch.no_grad():
        model.model.layers[USELESS[0]].self_attn.o_proj.weight.zero_()
    model.save_pretrained(path)
    return with_embedded_tokenizer(path)


@pytest.fixture(scope="module")
def useless(useless_model_dir):
    from transformers import AutoTokenizer

    batch = load_token_batches(SMALL, AutoTokenizer.from_pretrained(useless_model_dir))
    return load(useless_model_dir, dtype=torch.bfloat16), batch


def test_useless_block_scores_least_important_in_every_metric(useless):
    model, batch = useless
    result = scan_blocks(model, batch)
    assert set(result.scores) == set(all_blocks(6))
    for metric in METRICS:
        importance = result.importance(metric)
        others = [value for block, value in importance.items() if block != USELESS]
        assert importance[USELESS] < min(others), metric
    scores = result.scores[USELESS]
    assert scores["delta_nll"] == 0.0 and scores["kl"] == 0.0 and scores["relative_update_norm"] == 0.0
    assert scores["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert all(result.scores[b]["delta_nll"] > 0 for b in result.scores if b != USELESS)  # a trained model
    report = result.to_dict()
    assert report["dense"]["perplexity"] > 1 and len(report["blocks"]) == 12 and report["timings_s"]["ablation"] > 0


@pytest.mark.parametrize("metric", ["nll", "kl"])
@pytest.mark.slow
def test_greedy_chooses_the_useless_block_first(useless, metric):
    model, batch = useless
    result = greedy_search(model, batch, Target(blocks=2), metric)
    assert (result.steps[0].layer, result.steps[0].block) == USELESS
    assert result.steps[0].score == pytest.approx(result.dense["nll"] if metric == "nll" else 0.0, abs=1e-9)
    assert result.plan.num_blocks == 2 and USELESS[0] in result.plan.attn


@pytest.mark.parametrize("metric", list(METRICS))
def test_oneshot_chooses_the_useless_block_first(useless, metric):
    model, batch = useless
    result = oneshot_search(model, batch, Target(blocks=1), metric)
    assert result.plan == Plan(attn=(USELESS[0],))


@pytest.mark.parametrize("kl", [False, True])
def test_prefix_reuse_equals_a_full_forward_per_candidate(untied_base, tmp_path, kl):
    """On a checkpoint that already prunes blocks (their weights absent), over two greedy steps."""
    prune(str(untied_base), tmp_path / "p", Plan(attn=(0,), mlp=(2,)))
    model = load(tmp_path / "p", dtype=torch.float32)
    batch = token_batch(batch=10, length=16)  # two micro-batches
    with BlockRunner(model, batch, kl=kl) as fast, FullForwardRunner(model, batch, kl=kl) as slow:
        assert fast.removed == slow.removed == {(0, "attn"), (2, "mlp")}
        assert fast.dense_stats == slow.dense_stats
        for step in range(2):
            candidates = fast.candidates()
            assert len(candidates) == 6 - step
            ours, reference = fast.evaluate(candidates), slow.evaluate(candidates)
            for block in candidates:
                assert ours[block].nll == pytest.approx(reference[block].nll, rel=1e-6, abs=0)
                assert ours[block].kl == pytest.approx(reference[block].kl, rel=1e-5, abs=1e-9)
            best = min(candidates, key=lambda b: ours[b].nll)
            fast.remove(best)
            slow.remove(best)
    assert model.model.layers[1].prune_self_attn is False  # flags restored


def test_greedy_matches_the_naive_search(base):
    model = load(base, dtype=torch.float32)
    batch = token_batch(batch=6, length=16)
    fast = greedy_search(model, batch, Target(blocks=4), "nll")
    slow = greedy_search(model, batch, Target(blocks=4), "nll", naive=True)
    assert fast.plan == slow.plan and len(fast.steps) == 4
    assert [s.score for s in fast.steps] == pytest.approx([s.score for s in slow.steps], rel=1e-6)


def test_block_parameters_match_the_model(untied_base):
    model = load(untied_base, dtype=torch.float32)
    layer = model.model.layers[0]
    sizes = block_parameters(Shape.from_config(model.config))
    assert sizes["attn"] == sum(p.numel() for m in (layer.self_attn, layer.input_layernorm) for p in m.parameters())
    assert sizes["mlp"] == sum(p.numel() for m in (layer.mlp, layer.post_attention_layernorm) for p in m.parameters())


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.55])
def test_param_ratio_respects_its_budget(untied_base, ratio):
    model = load(untied_base, dtype=torch.float32)
    sizes = block_parameters(Shape.from_config(model.config))
    total = 4 * (sizes["attn"] + sizes["mlp"])
    result = greedy_search(model, token_batch(batch=4, length=12), Target(param_ratio=ratio), "nll")
    removed = len(result.plan.attn) * sizes["attn"] + len(result.plan.mlp) * sizes["mlp"]
    assert removed <= ratio * total and result.params_removed_share == pytest.approx(removed / total)
    left = {kind for layer, kind in all_blocks(4) if layer not in getattr(result.plan, kind)}
    assert all(removed + sizes[kind] > ratio * total for kind in left)  # nothing more would fit
    assert result.plan.num_blocks >= 1


def test_param_ratio_too_small_for_any_block(untied_base):
    model = load(untied_base, dtype=torch.float32)
    with pytest.raises(QpruneError, match=r"^param_ratio 0.05: no block fits; the smallest .* holds 10.0%"):
        greedy_search(model, token_batch(batch=2, length=8), Target(param_ratio=0.05), "nll")


def test_constraints(untied_base):
    model = load(untied_base, dtype=torch.float32)
    batch = token_batch(batch=4, length=12)
    result = greedy_search(model, batch, Target(blocks=3), "nll", Constraints(only="mlp", keep_first=1))
    assert result.plan.attn == () and set(result.plan.mlp) == {1, 2, 3}
    result = oneshot_search(model, batch, Target(blocks=4), "cosine", Constraints(keep_first=1, keep_last=1))
    assert set(result.plan.attn) | set(result.plan.mlp) <= {1, 2}
    with pytest.raises(QpruneError, match="only 4 blocks may be removed"):
        greedy_search(model, batch, Target(blocks=5), "nll", Constraints(keep_first=1, keep_last=1))
    with pytest.raises(QpruneError, match="no block may be removed"):
        greedy_search(model, batch, Target(blocks=1), "nll", Constraints(keep_first=2, keep_last=2))


@pytest.mark.slow
def test_auto_prune_cli_is_deterministic_and_records_its_search(useless_model_dir, tmp_path):
    args = ["--auto", "--blocks", "3", "--samples", "8", "--seq-len", "256", "--seed", "3", "--no-progress"]
    outputs = []
    for name in ("a", "b"):
        result = cli("prune", str(useless_model_dir), str(tmp_path / name), *args)
        assert result.exit_code == 0, result.output
        outputs.append(json.loads((tmp_path / name / "qprune_search.json").read_text()))
    assert outputs[0]["plan"] == outputs[1]["plan"] and outputs[0]["steps"] == outputs[1]["steps"]
    report = outputs[0]
    assert report["method"] == "greedy" and report["metric"] == "nll" and report["data"]["seed"] == 3
    assert len(report["steps"]) == 3 and [report["steps"][0]["layer"], report["steps"][0]["block"]] == list(USELESS)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (
        config["pruned_attn_layers"] == report["plan"]["attn"] and config["pruned_mlp_layers"] == report["plan"]["mlp"]
    )
    card = (tmp_path / "a" / "README.md").read_text()
    assert "## How the blocks were chosen" in card and card.count("\n| ") >= 5
    assert load(tmp_path / "a").num_parameters() < load(useless_model_dir).num_parameters()


def test_auto_prune_of_a_pruned_checkpoint_adds_to_its_plan(tmp_path):
    prune(str(EMBEDDED_MODEL), tmp_path / "p", Plan(attn=(2,), mlp=(3,)))
    args = ["--auto", "--blocks", "2", "--keep-first", "1", "--samples", "2", "--seq-len", "64", "--no-progress"]
    result = cli("prune", tmp_path / "p", tmp_path / "q", *args)
    assert result.exit_code == 0, result.output
    search = json.loads((tmp_path / "q" / "qprune_search.json").read_text())
    chosen = {(s["layer"], s["block"]) for s in search["steps"]}
    assert len(chosen) == 2 and not chosen & {(2, "attn"), (3, "mlp"), (0, "attn"), (0, "mlp")}
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    total = {(i, "attn") for i in config["pruned_attn_layers"]} | {(i, "mlp") for i in config["pruned_mlp_layers"]}
    assert total == chosen | {(2, "attn"), (3, "mlp")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auto"], "exactly one of --blocks and --param-ratio"),
        (["--auto", "--blocks", "2", "--param-ratio", "0.2"], "exactly one of"),
        (["--blocks", "2"], "add --auto"),
        (["--auto", "--blocks", "2", "--attn", "1"], "either --auto or --attn"),
        (["--auto", "--param-ratio", "1.5"], "between 0 and 1"),
        (["--auto", "--blocks", "0"], "at least 1"),
        (["--auto", "--blocks", "13"], "only 12 blocks may be removed"),
        (["--auto", "--blocks", "2", "--method", "random"], "--method random"),
        (["--auto", "--blocks", "2", "--metric", "cosine"], "the greedy search uses nll or kl"),
        (["--auto", "--blocks", "2", "--only", "norm"], "--only norm"),
        (["--auto", "--blocks", "2", "--dtype", "float16"], "overflows in float16"),
    ],
)
def test_auto_prune_bad_options(tmp_path, args, message):
    result = cli(
        "prune", str(EMBEDDED_MODEL), str(tmp_path / "out"), *args, "--samples", "2", "--seq-len", "64", "--no-progress"
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()


def test_auto_prune_refuses_an_existing_output_before_searching(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = cli("prune", str(EMBEDDED_MODEL), str(tmp_path / "out"), "--auto", "--blocks", "1")
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_scan_cli_writes_report_heatmap_and_table(useless_model_dir, tmp_path):
    out = tmp_path / "scan"
    result = cli(
        "scan", str(useless_model_dir), "--out", str(out), "--samples", "8", "--seq-len", "256", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    assert "ranks cos/upd/nll/kl" in result.output and "   4 attn " in result.output
    report = json.loads((out / "scan.json").read_text())
    assert report["data"]["samples"] == 8 and report["seed"] == 0 and report["num_layers"] == 6
    assert {"one_pass", "ablation", "load", "total"} <= set(report["timings_s"])
    entry = next(b for b in report["blocks"] if (b["layer"], b["block"]) == USELESS)
    assert entry["delta_nll"] == 0.0 and entry["kl"] == 0.0
    assert (out / "scan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scan_json_and_offline_hub_id(tmp_path):
    result = cli("scan", str(EMBEDDED_MODEL), "--json", "--samples", "2", "--seq-len", "64", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["data"]["source"] == "qprune:pydocs-calibration.txt" and len(report["blocks"]) == 12
    assert all({"cosine_similarity", "relative_update_norm", "delta_nll", "kl"} <= set(b) for b in report["blocks"])
    result = cli("scan", "no-such-owner-qprune/no-such-model", "--no-progress")
    assert result.exit_code == 2 and "could not be downloaded from the Hugging Face Hub" in result.output


def test_whole_layer_candidates_equal_a_full_forward_and_search_whole_layers(untied_base, tmp_path):
    """A layer is one candidate (both blocks); prefix reuse still equals a full forward, on a checkpoint
    whose layer 2 is already half pruned (its candidate removes the MLP that is left)."""
    prune(str(untied_base), tmp_path / "p", Plan(attn=(2,)))
    model = load(tmp_path / "p", dtype=torch.float32)
    batch = token_batch(batch=10, length=16)
    layers = [(i, "layer") for i in range(4)]
    with BlockRunner(model, batch, kl=True) as fast, FullForwardRunner(model, batch, kl=True) as slow:
        ours, reference = fast.evaluate(layers), slow.evaluate(layers)
        for unit in layers:
            assert ours[unit].nll == pytest.approx(reference[unit].nll, rel=1e-6, abs=0)
            assert ours[unit].kl == pytest.approx(reference[unit].kl, rel=1e-5, abs=1e-9)
        fast.remove((1, "layer"))
        slow.remove((1, "layer"))
        rest = [(0, "layer"), (2, "layer"), (3, "layer")]
        ours, reference = fast.evaluate(rest), slow.evaluate(rest)
        assert [ours[u].nll for u in rest] == pytest.approx([reference[u].nll for u in rest], rel=1e-6)

    for naive in (False, True):
        result = greedy_search(model, batch, Target(blocks=2), "kl", Constraints(whole_layers=True), naive=naive)
        assert len(result.steps) == 2 and all(step.block == "layer" for step in result.steps)
        # whole layers: both blocks chosen, except layer 2's attention, which was gone already
        assert set(result.plan.mlp) - {2} == set(result.plan.attn) and len(result.plan.mlp) == 2
    result = oneshot_search(model, batch, Target(blocks=1), "nll", Constraints(whole_layers=True))
    assert len(result.plan.mlp) == 1 and set(result.plan.mlp) - {2} == set(result.plan.attn)
    with pytest.raises(QpruneError, match=r"whole_layers removes both blocks .* cannot be combined with only"):
        Constraints(only="attn", whole_layers=True)


def test_scan_and_auto_prune_rank_whole_layers(useless_model_dir, tmp_path):
    result = cli("scan", str(useless_model_dir), "--whole-layers", "--samples", "2", "--seq-len", "64", "-q", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [entry["layer"] for entry in report["layers"]] == list(range(6))
    assert all(entry["delta_nll"] > 0 and 0 < entry["cosine_similarity"] < 1 for entry in report["layers"])

    args = ["--auto", "--whole-layers", "--blocks", "2", "--samples", "2", "--seq-len", "64", "-q"]
    result = cli("prune", str(useless_model_dir), str(tmp_path / "w"), *args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["pruned_attn_layers"] == config["pruned_mlp_layers"] and len(config["pruned_mlp_layers"]) == 2
    from qprune.ops.export import export

    exported = export(str(tmp_path / "w"), tmp_path / "stock")
    assert exported.export_bytes == exported.slim_bytes and exported.zero_blocks.num_blocks == 0
