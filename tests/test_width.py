"""Width cuts of a dense Qwen3: MLP channels and KV groups. A cut that removes the same numbers in
every layer is a stock Qwen3 (smaller `intermediate_size`, `num_key_value_heads`,
`num_attention_heads`) that equals the original with those channels' `down_proj` columns and those
groups' query heads' `o_proj` columns zeroed (the oracle), loads without remote code, decodes the same
with and without cache, and passes `verify`; its tensors are the base's rows and columns, byte for
byte; every way a width list can be wrong is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, cli, logit_delta, save_tiny_moe, save_tiny_qwen3, tiny_config, token_batch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

import qprune
from qprune.measure.verify import zero_width
from qprune.plan import Plan

LAYERS, CHANNELS, GROUPS, REP, HEAD_DIM = 4, 96, 2, 2, 16
FFN = {0: (0, 5, 95), 1: (10, 11, 12), 2: (1, 50, 60), 3: (7, 8, 90)}
KV = {0: (1,), 1: (0,), 2: (0,), 3: (1,)}
CUT = Plan(ffn=FFN, kv_heads=KV)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def base(request, tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("width") / "base", tied=request.param)


def width_oracle(base, plan: Plan) -> Qwen3ForCausalLM:
    model = Qwen3ForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    zero_width(model, plan)
    return model


def test_uniform_width_cut_is_a_stock_qwen3_equal_to_the_zeroed_oracle(base, tmp_path):
    out = tmp_path / "cut"
    result = qprune.prune(base, out, CUT)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3" and "auto_map" not in config and not list(out.glob("*.py"))
    assert (config["intermediate_size"], config["num_key_value_heads"], config["num_attention_heads"]) == (93, 1, 2)
    assert config["head_dim"] == HEAD_DIM
    assert config["qprune_pruned_width"] == {
        "ffn": {str(i): list(c) for i, c in FFN.items()},
        "kv_heads": {str(i): list(g) for i, g in KV.items()},
    }
    assert "3 MLP channels and 1 KV group (with their query heads) from each of 4 layers" in result.summary()
    assert "a stock Qwen3" in result.summary() and result.params_after < result.params_before
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()  # no remote code
    assert type(stock).__name__ == "Qwen3ForCausalLM"
    ids = token_batch()
    oracle = width_oracle(base, CUT)
    assert logit_delta(stock, oracle, ids) <= 1e-5
    assert logit_delta(qprune.load(out, dtype=torch.float32), oracle, ids) <= 1e-5
    dense = Qwen3ForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    assert logit_delta(dense, oracle, ids) > 1e-3  # the oracle is not the dense model by accident
    with torch.no_grad():
        cached = stock.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = stock.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    verified = cli("verify", out, "--base", base, "-q")
    assert verified.exit_code == 0, verified.output
    assert "PASS  keys" in verified.output and "PASS  logits" in verified.output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_the_cut_holds_the_bases_rows_and_columns_byte_for_byte(tmp_path, dtype):
    base = save_tiny_qwen3(tmp_path / "base", dtype=dtype)
    qprune.prune(base, tmp_path / "cut", CUT)
    source, cut = qprune.open_checkpoint(base), qprune.open_checkpoint(tmp_path / "cut")

    def tensor(checkpoint, name):
        with safe_open(checkpoint.tensors[name].file, "pt") as f:
            return f.get_tensor(name)

    layer = 2
    channels = [j for j in range(CHANNELS) if j not in FFN[layer]]
    heads = [
        h * HEAD_DIM + d
        for g in range(GROUPS)
        if g not in KV[layer]
        for h in (g * REP, g * REP + 1)
        for d in range(HEAD_DIM)
    ]
    kv = [g * HEAD_DIM + d for g in range(GROUPS) if g not in KV[layer] for d in range(HEAD_DIM)]
    prefix = f"model.layers.{layer}."
    expected = {
        "mlp.gate_proj.weight": tensor(source, prefix + "mlp.gate_proj.weight")[channels],
        "mlp.up_proj.weight": tensor(source, prefix + "mlp.up_proj.weight")[channels],
        "mlp.down_proj.weight": tensor(source, prefix + "mlp.down_proj.weight")[:, channels],
        "self_attn.q_proj.weight": tensor(source, prefix + "self_attn.q_proj.weight")[heads],
        "self_attn.k_proj.weight": tensor(source, prefix + "self_attn.k_proj.weight")[kv],
        "self_attn.v_proj.weight": tensor(source, prefix + "self_attn.v_proj.weight")[kv],
        "self_attn.o_proj.weight": tensor(source, prefix + "self_attn.o_proj.weight")[:, heads],
        "self_attn.q_norm.weight": tensor(source, prefix + "self_attn.q_norm.weight"),
    }
    for name, value in expected.items():
        got = tensor(cut, prefix + name)
        assert got.dtype == dtype and torch.equal(got, value), name
    assert set(cut.tensors) == set(source.tensors)


def test_ffn_alone_kv_alone_biases_and_a_second_cut(tmp_path):
    """Each list alone; attention biases sliced with their rows; a second cut records the base's numbering."""
    torch.manual_seed(0)
    Qwen3ForCausalLM(tiny_config(LAYERS, attention_bias=True)).save_pretrained(tmp_path / "base")
    base, ids = tmp_path / "base", token_batch()
    for name, plan in (("ffn", Plan(ffn=FFN)), ("kv", Plan(kv_heads=KV))):
        qprune.prune(base, tmp_path / name, plan)
        stock = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32).eval()
        assert logit_delta(stock, width_oracle(base, plan), ids) <= 1e-5, name
    again = Plan(ffn={i: (0,) for i in range(LAYERS)})  # the cut's channel 0 of each layer
    qprune.prune(tmp_path / "ffn", tmp_path / "ffn2", again)
    record = json.loads((tmp_path / "ffn2" / "config.json").read_text())["qprune_pruned_width"]
    # layer 0 lost 0, 5, 95: the cut's channel 0 is the base's 1. Layer 1 lost 10-12: its 0 is the base's 0.
    assert record["ffn"]["0"] == [0, 1, 5, 95] and record["ffn"]["1"] == [0, 10, 11, 12]
    twice = Plan(ffn={int(k): tuple(v) for k, v in record["ffn"].items()})
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "ffn2", dtype=torch.float32).eval()
    assert logit_delta(stock, width_oracle(base, twice), ids) <= 1e-5
    assert cli("verify", tmp_path / "ffn2", "--base", base, "-q").exit_code == 0


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"ffn": {str(i): [CHANNELS] for i in range(LAYERS)}}, f"MLP channels 0..{CHANNELS - 1}, not {CHANNELS}"),
        ({"kv_heads": {str(i): [0, 1] for i in range(LAYERS)}}, "would keep none of its 2 KV groups"),
        ({"kv_heads": {"0": [0, 0]}}, "lists the same KV group twice"),
        ({"mlp": [1], "ffn": {"1": [0]}}, "layer 1's MLP block is pruned whole"),
        ({"ffn": {"9": [0]}}, "out of range"),
    ],
)
def test_bad_width_plans_are_one_line_errors(base, tmp_path, plan, message):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert_one_line_error(cli("prune", base, tmp_path / "out", "--plan", path), message)
    assert not (tmp_path / "out").exists()


def test_width_with_blocks_is_the_pruned_format_equal_to_both_oracles(base, tmp_path):
    """Uniform widths and pruned blocks (layer 0's attention among them) in one checkpoint: qprune's
    format with the narrower sizes; it equals stock with the blocks' output projections and the width's
    columns zeroed, with and without cache, passes verify, and exports to a stock Qwen3 that equals it."""
    from conftest import oracle as block_oracle

    plan = Plan(attn=(0,), mlp=(2,), ffn={i: FFN[i] for i in (0, 1, 3)}, kv_heads={i: KV[i] for i in (1, 2, 3)})
    result = qprune.prune(base, tmp_path / "mixed", plan)
    config = json.loads((tmp_path / "mixed" / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3" and config["intermediate_size"] == 93
    assert (config["pruned_attn_layers"], config["pruned_mlp_layers"]) == ([0], [2])
    assert "a stock" not in result.summary()
    info = cli("info", tmp_path / "mixed").output
    assert (
        "MLP channels removed: 3 in each of 3 layers" in info and "KV groups removed:    1 in each of 3 layers" in info
    )
    expected = block_oracle(base, Plan(attn=(0,), mlp=(2,)))
    zero_width(expected, plan)
    model, ids = qprune.load(tmp_path / "mixed", dtype=torch.float32), token_batch()
    assert logit_delta(model, expected, ids) <= 1e-5
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    verified = cli("verify", tmp_path / "mixed", "--base", base, "-q")
    assert verified.exit_code == 0, verified.output
    assert cli("export", tmp_path / "mixed", tmp_path / "stock", "-q").exit_code == 0
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "stock", dtype=torch.float32).eval()
    assert type(stock).__name__ == "Qwen3ForCausalLM" and logit_delta(stock, expected, ids) <= 1e-5


def test_width_of_a_qwen3_moe_is_refused(tmp_path):
    moe = save_tiny_moe(tmp_path / "moe")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"kv_heads": {str(i): [0] for i in range(4)}}))
    assert_one_line_error(cli("prune", moe, tmp_path / "out", "--plan", path), "width cuts are a dense Qwen3's")


# -- importance and prune --auto --ffn-ratio / --kv-head-ratio ----------------------------------------


@pytest.fixture(scope="module")
def text_base(tmp_path_factory):
    from conftest import with_embedded_tokenizer

    path = tmp_path_factory.mktemp("width-text") / "base"
    torch.manual_seed(0)
    config = tiny_config(LAYERS)
    config.vocab_size = 4096  # the embedded tokenizer's
    Qwen3ForCausalLM(config).save_pretrained(path)
    return with_embedded_tokenizer(path)


def test_activation_importance_is_the_mean_channel_activation(base):
    """Minitron's measure from the hooks equals the channel activations computed from the MLP's input."""
    from qprune.measure.width import width_importance

    model = qprune.load(base, dtype=torch.float32)
    ids = token_batch(batch=3, length=16)
    importance = width_importance(model, ids)
    inputs = {}
    handles = [
        layer.mlp.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(ids)
        for handle in handles:
            handle.remove()
        for i, mlp in enumerate(layer.mlp for layer in model.model.layers):
            x = inputs[i].reshape(-1, inputs[i].shape[-1])
            act = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).abs().mean(0)
            assert importance.scores["ffn"]["activation"][i] == pytest.approx(act.tolist(), rel=1e-4, abs=1e-7)
            weighted = act * mlp.down_proj.weight.norm(dim=0)
            assert importance.scores["ffn"]["output"][i] == pytest.approx(weighted.tolist(), rel=1e-4, abs=1e-7)
    assert len(importance.scores["kv_heads"]["activation"][0]) == GROUPS


def test_kv_group_kl_is_the_kl_with_its_o_proj_columns_zeroed(base):
    from qprune.measure.width import kv_group_kl

    model = qprune.load(base, dtype=torch.float32)
    ids = token_batch(batch=2, length=16)
    scores = kv_group_kl(model, ids)
    with torch.no_grad():
        dense = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
        for layer, group in ((0, 1), (3, 0)):
            stock = Qwen3ForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
            zero_width(stock, Plan(kv_heads={layer: (group,)}))
            masked = torch.log_softmax(stock(ids).logits[:, :-1].float(), -1)
            expected = (dense.exp() * (dense - masked)).sum(-1).mean().item()
            assert scores[layer][group] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        assert torch.equal(torch.log_softmax(model(ids).logits[:, :-1].float(), -1), dense)  # restored


def test_prune_auto_ffn_and_kv_head_ratio_write_the_lowest_as_a_stock_qwen3(text_base, tmp_path):
    from qprune.measure.data import DataSpec, load_token_batches
    from qprune.measure.width import width_importance

    args = ("--auto", "--ffn-ratio", "0.25", "--kv-head-ratio", "0.5", "--samples", "4", "--seq-len", "32")
    result = cli("prune", text_base, tmp_path / "cut", *args, "--dtype", "float32", "-q")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["intermediate_size"] == 72 and config["num_key_value_heads"] == 1
    model = qprune.load(text_base, dtype=torch.float32)
    batch = load_token_batches(DataSpec(samples=4, seq_len=32), qprune.runtime.load.load_tokenizer(text_base))
    expected = width_importance(model, batch).plan(0.25, 0.5)
    assert config["qprune_pruned_width"] == {
        "ffn": {str(i): list(c) for i, c in expected.ffn},
        "kv_heads": {str(i): list(g) for i, g in expected.kv_heads},
    }
    assert cli("verify", tmp_path / "cut", "--base", text_base, "-q").exit_code == 0
    layered = cli("prune", text_base, tmp_path / "layered", *args, "--dtype", "float32", "--max-memory", "9.6MB")
    assert layered.exit_code == 0, layered.output
    assert "measuring in memory" not in layered.output  # it ran layer by layer
    assert (
        json.loads((tmp_path / "layered" / "config.json").read_text())["qprune_pruned_width"]
        == config["qprune_pruned_width"]
    )


def test_prune_auto_nonuniform_takes_the_same_total_with_counts_free_per_layer(text_base, tmp_path):
    """The lowest channels across layers, each scored as a share of its layer's total: the same number
    as the uniform cut, in qprune's format, equal to its oracle and written as `WidthImportance.plan` says."""
    from qprune.measure.data import DataSpec, load_token_batches
    from qprune.measure.width import width_importance

    args = ("--auto", "--ffn-ratio", "0.25", "--width-allocation", "nonuniform", "--samples", "4", "--seq-len", "32")
    result = cli("prune", text_base, tmp_path / "cut", *args, "--dtype", "float32", "-q")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3" and len(set(config["layer_intermediate_size"])) > 1
    assert sum(config["layer_intermediate_size"]) == LAYERS * (CHANNELS - 24)  # the uniform cut's total
    model = qprune.load(text_base, dtype=torch.float32)
    batch = load_token_batches(DataSpec(samples=4, seq_len=32), qprune.runtime.load.load_tokenizer(text_base))
    scores = width_importance(model, batch).scores["ffn"]["activation"]
    expected = width_importance(model, batch).plan(0.25, allocation="nonuniform")
    assert config["qprune_pruned_width"] == {"ffn": {str(i): list(c) for i, c in expected.ffn}}
    # every channel removed scores (as a share of its layer's total) no more than any channel kept
    share = {(i, j): v / sum(values) for i, values in scores.items() for j, v in enumerate(values)}
    removed = {(i, j) for i, channels in expected.ffn for j in channels}
    assert max(share[u] for u in removed) <= min(v for u, v in share.items() if u not in removed)
    assert (
        logit_delta(qprune.load(tmp_path / "cut", dtype=torch.float32), width_oracle(text_base, expected), batch)
        <= 1e-4
    )
    assert cli("verify", tmp_path / "cut", "--base", text_base, "-q").exit_code == 0


def test_scan_width_writes_scores_and_the_figure(text_base, tmp_path):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib")
    result = cli("scan", text_base, "--width", "--samples", "2", "--seq-len", "32", "--out", tmp_path / "scan", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scan" / "width.png").stat().st_size > 0
    width = json.loads((tmp_path / "scan" / "scan.json").read_text())["width"]
    assert set(width["scores"]["kv_heads"]) == {"activation", "output", "kl"}
    assert len(width["scores"]["ffn"]["activation"]["0"]) == CHANNELS


@pytest.mark.parametrize(
    "args, message",
    [
        (("--ffn-ratio", "0.25", "--width-metric", "kl"), "kl ranks KV groups only"),
        (("--kv-head-ratio", "0.1"), "removes 0 of 2 KV groups per layer"),
        (("--ffn-ratio", "1.5"), "--ffn-ratio must be between 0 and 1"),
        (("--ffn-ratio", "0.25", "--blocks", "2"), "take no --blocks or experts"),
        (("--ffn-ratio", "0.25", "--param-ratio", "0.2"), "--param-ratio R --width-allocation joint"),
        (("--kv-head-ratio", "0.5", "--width-allocation", "joint"), "joint takes --param-ratio, not --ffn-ratio"),
        (
            ("--ffn-ratio", "0.25", "--width-allocation", "even"),
            "--width-allocation even: choose uniform or nonuniform",
        ),
    ],
)
def test_width_ratio_bad_input(text_base, tmp_path, args, message):
    result = cli("prune", text_base, tmp_path / "out", "--auto", *args, "--samples", "2", "--seq-len", "32")
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


def test_bench_compares_a_width_cut_with_its_base(base, tmp_path):
    """Its ideal is the base's cost over the narrower shape's (cost.ideal_speedups with pruned_shape)."""
    from qprune.cost import Shape, ideal_speedups

    qprune.prune(base, tmp_path / "cut", CUT)
    args = ("--batch", "1", "--prompt-len", "8", "--new-tokens", "2", "--repeats", "1", "--warmup", "0")
    result = cli("bench", tmp_path / "cut", "--base", base, *args, "--dtype", "float32", "--json", "-q")
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)["batches"][0]
    dense = Shape.from_config(json.loads((base / "config.json").read_text()))
    cut = Shape.from_config(json.loads((tmp_path / "cut" / "config.json").read_text()))
    ideal = ideal_speedups(dense, Plan(), Plan(), 1, 8, 2, 4, pruned_shape=cut)
    assert row["ideal_decode_speedup"] == pytest.approx(ideal.decode) and ideal.decode > 1
    assert row["ideal_prefill_speedup"] == pytest.approx(ideal.prefill) and ideal.prefill > 1


def test_heal_distils_the_wider_base_into_a_width_cut(text_base, tmp_path):
    """The base the cut records teaches it (its greater width is no mismatch); another model's is refused."""
    from qprune.healing.distill import check_teacher
    from qprune.io.source import open_checkpoint

    qprune.prune(text_base, tmp_path / "cut", CUT)
    args = ("--tokens", "256", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "200", "-q")
    result = cli("heal", tmp_path / "cut", tmp_path / "healed", *args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "healed" / "config.json").read_text())
    assert config["intermediate_size"] == 93 and config["qprune_pruned_width"]
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "healed")).__name__ == "Qwen3ForCausalLM"
    twice = Plan(ffn={i: (0,) for i in range(LAYERS)})
    qprune.prune(text_base, tmp_path / "other", twice)  # one channel narrower: not this cut's base
    with pytest.raises(qprune.QpruneError, match="intermediate_size 95, the pruned model 96"):
        check_teacher(open_checkpoint(tmp_path / "cut"), open_checkpoint(tmp_path / "other"), "OTHER")


def test_prune_auto_joint_splits_one_budget_between_blocks_and_channels(text_base, tmp_path):
    """Every split is tried, with MLP channels alone and with a KV group per layer as well, and judged by
    its KL from the dense model; the written plan is the best, within the budget, and verifies against
    the base."""
    from qprune.cost import Shape, parameter_count
    from qprune.measure.data import DataSpec
    from qprune.measure.goal import WidthTarget
    from qprune.ops.auto import auto_prune

    target = WidthTarget(param_ratio=0.3, width_allocation="joint")
    spec = DataSpec(samples=4, seq_len=32)
    result, report = auto_prune(text_base, tmp_path / "cut", spec, target, dtype="float32", progress=False)
    assert [c.width_share for c in report.candidates if not c.groups] == [0.0, 0.25, 0.5, 0.75, 1.0]
    with_kv = [c for c in report.candidates if c.groups]  # one KV group from every attention that remains
    assert with_kv and all({i for i, _ in c.plan.kv_heads} == set(range(LAYERS)) - set(c.plan.attn) for c in with_kv)
    assert all(len(groups) == 1 for c in with_kv for _, groups in c.plan.kv_heads)
    assert report.best.kl == min(c.kl for c in report.candidates)
    assert report.candidates[-1].plan.num_blocks == 0 < report.candidates[0].plan.num_blocks
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert Plan.from_config(config).num_blocks == report.best.plan.num_blocks
    dense = Shape.from_config(json.loads((text_base / "config.json").read_text()))
    decoder = parameter_count(dense, Plan()) - dense.vocab * dense.hidden * 2 - dense.hidden
    assert 0 < result.params_before - result.params_after <= 0.3 * decoder + 1
    assert cli("verify", tmp_path / "cut", "--base", text_base, "-q").exit_code == 0
    shown = cli("prune", text_base, tmp_path / "cli", "--auto", "--param-ratio", "0.3", "--width-allocation", "joint",
                "--samples", "4", "--seq-len", "32", "--dtype", "float32", "-q")  # fmt: skip
    assert shown.exit_code == 0 and "<- written" in shown.output, shown.output
