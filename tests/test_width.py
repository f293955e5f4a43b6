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
        ({"ffn": {"0": [1], "1": [1, 2]}}, "remove the same number of MLP channels from every layer"),
        ({"ffn": {str(i): [CHANNELS] for i in range(LAYERS)}}, f"MLP channels 0..{CHANNELS - 1}, not {CHANNELS}"),
        ({"kv_heads": {str(i): [0, 1] for i in range(LAYERS)}}, "would keep none of its 2 KV groups"),
        ({"kv_heads": {"0": [0, 0]}}, "lists the same KV group twice"),
        ({"mlp": [1], "ffn": {"1": [0]}}, "layer 1's MLP block is pruned whole"),
        ({"attn": [2], "ffn": {str(i): [0] for i in range(LAYERS)}}, "with pruned blocks are not written yet"),
        ({"ffn": {"9": [0]}}, "out of range"),
    ],
)
def test_bad_width_plans_are_one_line_errors(base, tmp_path, plan, message):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert_one_line_error(cli("prune", base, tmp_path / "out", "--plan", path), message)
    assert not (tmp_path / "out").exists()


def test_width_of_a_qwen3_moe_is_refused(tmp_path):
    moe = save_tiny_moe(tmp_path / "moe")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"kv_heads": {str(i): [0] for i in range(4)}}))
    assert_one_line_error(cli("prune", moe, tmp_path / "out", "--plan", path), "width cuts are a dense Qwen3's")
