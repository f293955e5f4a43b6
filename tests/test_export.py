"""`qprune export`: a pruned checkpoint as a stock Qwen3 (no code) that computes exactly the same."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import cli, oracle, save_tiny_qwen3, token_batch
from transformers import AutoModelForCausalLM

import qprune
from qprune.errors import QpruneError
from qprune.ops.export import export
from qprune.plan import Plan

PLANS = {
    # layer 1 loses both blocks (removed), layer 0's attention and layer 3's MLP alone (zero-filled)
    "mixed": Plan(attn=(0, 1, 2), mlp=(1, 3)),
    "no whole layer": Plan(attn=(0,), mlp=(2,)),
    "whole layers only": Plan(attn=(0, 2), mlp=(0, 2)),
}


def _stock(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "Qwen3ForCausalLM"  # the stock class: no remote code involved
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.parametrize("plan_name", PLANS)
def test_export_is_exact_and_loads_as_stock_qwen3(base, tmp_path, plan_name):
    plan = PLANS[plan_name]
    slim = tmp_path / "slim"
    qprune.prune(str(base), slim, plan, max_shard_size=40_000)
    before = _digest(slim)
    result = export(str(slim), tmp_path / "stock", max_shard_size=40_000)
    assert _digest(slim) == before  # the input is never modified

    out = tmp_path / "stock"
    config = json.loads((out / "config.json").read_text())
    whole = sorted(set(plan.attn) & set(plan.mlp))
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["num_hidden_layers"] == 4 - len(whole) == len(config["layer_types"])
    assert not {"auto_map", "pruned_attn_layers", "pruned_mlp_layers"} & set(config)
    assert not list(out.glob("*.py"))
    assert result.removed_layers == tuple(whole)
    assert (out / "model.safetensors.index.json").exists()  # sharded like the source

    stock = _stock(out)
    ids = token_batch()
    with torch.no_grad():
        logits = stock(ids).logits
        assert (logits - qprune.load(slim, dtype=torch.float32)(ids).logits).abs().max() <= 1e-5
        assert (logits - oracle(base, plan)(ids).logits).abs().max() <= 1e-5
        cached = stock.generate(ids[:1, :5], max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = stock.generate(ids[:1, :5], max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert result.export_bytes == sum(p.stat().st_size for p in out.glob("*.safetensors")) - sum(
        8 + int.from_bytes(p.read_bytes()[:8], "little") for p in out.glob("*.safetensors")
    )
    if plan_name == "whole layers only":
        assert result.export_bytes == result.slim_bytes  # nothing zero-filled: portability is free
        assert result.ideal["export"] == result.ideal["slim"]
    else:
        assert result.export_bytes > result.slim_bytes
        assert result.ideal["export"]["decode"] < result.ideal["slim"]["decode"]


def test_zero_blocks_keep_the_dtype_and_the_card_states_the_cost(tmp_path):
    base = save_tiny_qwen3(tmp_path / "base", dtype=torch.bfloat16, max_shard_size="10MB")
    slim = tmp_path / "slim"
    qprune.prune(str(base), slim, Plan(attn=(0, 1), mlp=(1,)))
    result = cli("export", str(slim), str(tmp_path / "stock"))
    assert result.exit_code == 0, result.output
    assert "ideal decode speedup" in result.output and "zero-filled" in result.output
    from safetensors import safe_open

    with safe_open(tmp_path / "stock" / "model.safetensors", "pt") as f:
        zero = f.get_tensor("model.layers.0.self_attn.o_proj.weight")  # layer 1 is gone: 0 keeps its number
        assert zero.dtype == torch.bfloat16 and not zero.any()
        assert "model.layers.3.mlp.down_proj.weight" not in f.keys()  # 3 layers left: 0..2
    card = (tmp_path / "stock" / "README.md").read_text()
    assert "| KV cache (share of the base's) | 50% | 75% |" in card


def test_export_refuses_bad_input(untied_base, tmp_path):
    with pytest.raises(QpruneError, match="stock Qwen3 already"):
        export(str(untied_base), tmp_path / "a")
    slim = tmp_path / "slim"
    qprune.prune(str(untied_base), slim, Plan(attn=(1,)))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = cli("export", str(slim), str(taken))
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--force" in result.output
    assert (taken / "keep.txt").read_text() == "mine"
    result = cli("export", slim, taken, "--force")
    assert result.exit_code == 0, result.output
    assert not (taken / "keep.txt").exists()
    assert json.loads((taken / "config.json").read_text())["model_type"] == "qwen3"  # the stock export, written

    sliding = tmp_path / "sliding"
    qprune.prune(str(untied_base), sliding, Plan(mlp=(1,)))
    sliding_config = json.loads((sliding / "config.json").read_text()) | {"use_sliding_window": True}
    (sliding / "config.json").write_text(json.dumps(sliding_config))
    with pytest.raises(QpruneError, match="sliding-window"):
        export(str(sliding), tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing half-written
