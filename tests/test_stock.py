"""`io.stock` on its own: the stock config and tensors it describes, loaded by stock transformers, compute
what the oracle computes (the stock model with the pruned blocks' output projections zeroed). Export and
verify's self-oracle both build on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import MOE_DENSE_LAYER, moe_oracle, oracle, save_tiny_moe, save_tiny_qwen3, token_batch
from transformers import Qwen3ForCausalLM, Qwen3MoeForCausalLM

import qprune
from qprune.io.safetensors import write_shards
from qprune.io.source import open_checkpoint
from qprune.io.stock import stock_config, stock_tensors
from qprune.plan import Plan


def _stock_model(pruned: Path, out: Path, kept_layers: list[int], zero_blocks: Plan, stock_class):
    checkpoint = open_checkpoint(pruned)
    write_shards(stock_tensors(checkpoint, kept_layers, zero_blocks), out, max_shard_size=2**62)
    (out / "config.json").write_text(json.dumps(stock_config(checkpoint.config, kept_layers)))
    model, info = stock_class.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return model.eval()


def _assert_same_logits(model, reference) -> None:
    ids = token_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize(
    "plan, kept_layers, zero_blocks",
    [
        (Plan(attn=(1,), mlp=(2,)), [0, 1, 2, 3], Plan(attn=(1,), mlp=(2,))),  # every layer, blocks as zeros
        (Plan(attn=(1, 2), mlp=(1, 3)), [0, 2, 3], Plan(attn=(2,), mlp=(3,))),  # layer 1 whole: left out
    ],
    ids=["zeros", "layer-removed"],
)
def test_stock_qwen3_computes_the_oracle(tmp_path, tied, plan, kept_layers, zero_blocks):
    base = save_tiny_qwen3(tmp_path / "base", tied=tied)
    qprune.prune(str(base), tmp_path / "pruned", plan)
    (tmp_path / "stock").mkdir()
    model = _stock_model(tmp_path / "pruned", tmp_path / "stock", kept_layers, zero_blocks, Qwen3ForCausalLM)
    assert model.config.num_hidden_layers == len(kept_layers)
    _assert_same_logits(model, oracle(base, plan))


def test_stock_config_drops_qprune_fields_and_renumbers(tmp_path):
    base = save_tiny_qwen3(tmp_path / "base")
    qprune.prune(str(base), tmp_path / "pruned", Plan(attn=(1,), mlp=(1,)))
    config = stock_config(open_checkpoint(tmp_path / "pruned").config, [0, 2, 3])
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["num_hidden_layers"] == 3
    assert not {"auto_map", "pruned_attn_layers", "pruned_mlp_layers", "qprune_base_model"} & set(config)


def test_stock_qwen3_moe_computes_the_oracle(tmp_path):
    plan = Plan(attn=(0, 1), mlp=(1, MOE_DENSE_LAYER))  # layer 1 whole: left out; the dense layer's MLP as zeros
    base = save_tiny_moe(tmp_path / "base")
    qprune.prune(str(base), tmp_path / "pruned", plan)
    (tmp_path / "stock").mkdir()
    zero_blocks = Plan(attn=(0,), mlp=(MOE_DENSE_LAYER,))
    model = _stock_model(tmp_path / "pruned", tmp_path / "stock", [0, 2, 3], zero_blocks, Qwen3MoeForCausalLM)
    assert model.config.mlp_only_layers == [1]
    _assert_same_logits(model, moe_oracle(base, plan))
