"""Qwen3-MoE: the same guarantees as Qwen3, against the stock `Qwen3MoeForCausalLM` oracle.

The tiny models have sparse MoE layers and one dense layer (`mlp_only_layers`), several shards, tied
and untied. transformers 4.x holds experts as Linears and 5.x fuses them; the checkpoints keep one
tensor per expert either way, and every test here runs on both (CI tests both versions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    MOE_DENSE_LAYER,
    MOE_PLAN,
    REMOTE_CODE,
    assert_one_line_error,
    cli,
    edit_config,
    moe_oracle,
    save_tiny_moe,
    tiny_moe_config,
    token_batch,
    with_embedded_tokenizer,
)
from transformers import Qwen3MoeForCausalLM

import qprune
from qprune.arch import FAMILIES, family_of
from qprune.arch.qwen3_moe import QWEN3_MOE
from qprune.cost import Shape, block_parameters, ideal_speedups, parameter_count, shape_named
from qprune.errors import QpruneError
from qprune.io.safetensors import read_checkpoint
from qprune.io.source import open_checkpoint
from qprune.measure.bench import BenchSettings, run_bench
from qprune.measure.verify import verify
from qprune.plan import Plan


@pytest.fixture(scope="module", params=["untied", "tied"])
def moe_base(request, tmp_path_factory) -> Path:
    return save_tiny_moe(tmp_path_factory.mktemp(request.param) / "base", tied=request.param == "tied")


@pytest.fixture(scope="module")
def moe_pruned(moe_base) -> Path:
    out = moe_base.parent / "pruned"
    if not out.exists():
        qprune.prune(str(moe_base), out, MOE_PLAN)
    return out


def test_expected_tensors_are_what_transformers_saves(moe_base):
    config = json.loads((moe_base / "config.json").read_text())
    expected = family_of(config).expected_tensors(config)
    saved = {name: entry.shape for name, entry in read_checkpoint(moe_base).items()}
    if config["tie_word_embeddings"]:
        expected.pop("lm_head.weight")
    assert saved == expected
    assert len(read_checkpoint(moe_base)) > 1 and len({e.file for e in read_checkpoint(moe_base).values()}) > 1


def test_pruned_moe_matches_the_oracle_and_holds_what_it_stores(moe_base, moe_pruned):
    config = json.loads((moe_pruned / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3_moe" and config["auto_map"]["AutoModelForCausalLM"].startswith(
        "modeling_pruned_qwen3_moe."
    )
    assert {"pruned_blocks.py", "modeling_pruned_qwen3_moe.py"} <= {p.name for p in moe_pruned.iterdir()}
    stored = read_checkpoint(moe_pruned)
    assert not any(MOE_PLAN.prunes(name) for name in stored)
    assert not any(name.startswith("model.layers.1.mlp.") for name in stored)  # router and every expert
    model = qprune.load(moe_pruned, dtype=torch.float32)
    assert type(model).__name__ == "PrunedQwen3MoeForCausalLM"
    held = {name: p for name, p in model.named_parameters()}
    assert sum(p.numel() * p.element_size() for p in held.values()) == sum(e.nbytes for e in stored.values())
    with torch.no_grad():
        delta = (model(token_batch()).logits - moe_oracle(moe_base, MOE_PLAN)(token_batch()).logits).abs().max()
    assert delta <= 1e-5


def test_cached_decoding_equals_uncached_with_layer_0_attention_pruned(moe_pruned):
    model = qprune.load(moe_pruned, dtype=torch.float32)
    ids = token_batch(seed=1)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_verify_passes_every_check(moe_base, moe_pruned):
    checks = verify(str(moe_pruned), str(moe_base))
    assert [c.name for c in checks] == ["keys", "params", "logits", "self", "cache"], checks
    assert all(c.passed for c in checks), "\n".join(map(str, checks))


@pytest.mark.slow
def test_remote_code_loads_with_transformers_alone(moe_base, moe_pruned):
    ids = token_batch()
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE, str(moe_pruned), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        cwd=moe_pruned.parent,
    )
    assert proc.returncode == 0, proc.stderr
    logits = torch.tensor(json.loads(proc.stdout.split("LOGITS ", 1)[1]))
    with torch.no_grad():
        assert (logits - moe_oracle(moe_base, MOE_PLAN)(ids).logits).abs().max() <= 1e-5
    log = proc.stderr.lower()
    for phrase in ("newly initialized", "not initialized", "missing", "were not used"):
        assert phrase not in log, proc.stderr


def test_a_pruned_expert_tensor_missing_is_named(moe_pruned, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(moe_pruned, damaged)
    from safetensors.torch import load_file, save_file

    for shard in damaged.glob("*.safetensors"):
        tensors = load_file(shard)
        if "model.layers.3.mlp.experts.2.up_proj.weight" in tensors:
            del tensors["model.layers.3.mlp.experts.2.up_proj.weight"]
            save_file(tensors, shard, metadata={"format": "pt"})
    index_file = damaged / "model.safetensors.index.json"
    if index_file.exists():
        index = json.loads(index_file.read_text())
        del index["weight_map"]["model.layers.3.mlp.experts.2.up_proj.weight"]
        index_file.write_text(json.dumps(index))
    with pytest.raises(QpruneError, match=r"lacks the tensor model\.layers\.3\.mlp\.experts\.2\.up_proj\.weight"):
        qprune.load(damaged)


def test_router_logits_and_loss_with_pruned_moe_blocks(moe_pruned, tmp_path):
    model = qprune.load(moe_pruned, dtype=torch.float32)
    ids = token_batch()
    out = model(ids, labels=ids, output_router_logits=True)
    sparse_running = [i for i in range(4) if i not in MOE_PLAN.mlp and i != MOE_DENSE_LAYER]
    assert len(out.router_logits) == len(sparse_running)  # a pruned MoE block routes nothing
    assert torch.isfinite(out.aux_loss) and torch.isfinite(out.loss)
    out.loss.backward()
    # Every MoE block pruned: no router logits at all, and the loss is the language-model loss.
    qprune.prune(str(moe_pruned), tmp_path / "no-moe", Plan(mlp=tuple(sparse_running)))
    model = qprune.load(tmp_path / "no-moe", dtype=torch.float32)
    out = model(ids, labels=ids, output_router_logits=True)
    assert out.aux_loss is None and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, model(ids, labels=ids).loss)


def test_export_is_a_stock_qwen3_moe_that_computes_the_same(moe_base, tmp_path):
    plan = Plan(attn=(0, 1), mlp=(1, MOE_DENSE_LAYER))  # layer 1 whole: removed, so the dense layer 2 becomes 1
    qprune.prune(str(moe_base), tmp_path / "pruned", plan)
    result = qprune.export(str(tmp_path / "pruned"), tmp_path / "stock")
    assert result.removed_layers == (1,)
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe" and config["num_hidden_layers"] == 3
    assert config["mlp_only_layers"] == [1] and config["decoder_sparse_step"] == 1
    stock, info = Qwen3MoeForCausalLM.from_pretrained(tmp_path / "stock", dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        delta = (stock.eval()(token_batch()).logits - moe_oracle(moe_base, plan)(token_batch()).logits).abs().max()
    assert delta <= 1e-5
    assert "stock Qwen3-MoE" in result.summary()


def test_decoder_sparse_step_is_respected_in_tensors_and_costs(tmp_path):
    base = save_tiny_moe(tmp_path / "base", mlp_only_layers=[], decoder_sparse_step=2)
    config = json.loads((base / "config.json").read_text())
    shape = Shape.from_config(config)
    assert shape.dense_mlp_layers == (0, 2)  # (layer + 1) % 2 != 0: dense
    model = Qwen3MoeForCausalLM.from_pretrained(base)
    for layer in range(4):
        params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"model.layers.{layer}.mlp."))
        params += model.config.hidden_size  # post_attention_layernorm belongs to the MLP block
        assert block_parameters(shape, layer)["mlp"] == params
    qprune.prune(str(base), tmp_path / "pruned", Plan(attn=(0,), mlp=(0, 1)))
    assert verify(str(tmp_path / "pruned"), str(base))[2].passed


def test_parameter_count_matches_a_loaded_moe(moe_pruned):
    model = qprune.load(moe_pruned)
    shape = Shape.from_config(json.loads((moe_pruned / "config.json").read_text()))
    assert parameter_count(shape, MOE_PLAN) == sum(p.numel() for p in model.parameters())


def test_released_moe_shapes_have_their_published_sizes():
    # Qwen3-30B-A3B: 30.5B parameters, 3.3B activated; Qwen3-235B-A22B: 235B and 22B (the model cards).
    for name, total, active in (("qwen3-30b-a3b", 30.5e9, 3.3e9), ("qwen3-235b-a22b", 235e9, 22e9)):
        shape = shape_named(name)
        assert abs(parameter_count(shape, Plan()) / total - 1) < 0.02
        idle_experts = (
            shape.layers * (shape.experts - shape.experts_per_token) * 3 * shape.hidden * shape.expert_intermediate
        )
        assert abs((parameter_count(shape, Plan()) - idle_experts) / active - 1) < 0.05
    # Pruning one MoE block saves a block's active experts in prefill, and in decode at batch 1.
    shape = shape_named("qwen3-30b-a3b")
    ideal = ideal_speedups(shape, Plan(), Plan(mlp=(5,)), batch=1, prompt_len=512, new_tokens=64)
    assert 1 < ideal.prefill < 1.03 and 1 < ideal.decode < 1.03


def test_bench_on_an_moe_shape_cut_to_its_first_layers(monkeypatch):
    # The released shapes are too large for a unit test; a narrow MoE shape runs the same code.
    tiny = Shape.from_config(tiny_moe_config(num_hidden_layers=6, mlp_only_layers=[4])).to_dict()
    monkeypatch.setitem(QWEN3_MOE.bench_shapes, "qwen3-moe-tiny", tiny)
    settings = BenchSettings(prompt_len=8, new_tokens=2, batches=(1,), repeats=1, warmup=0)
    report = run_bench(shape="qwen3-moe-tiny", layers=5, plan=Plan(attn=(0,), mlp=(1, 4)), settings=settings,
                       dtype="float32", device="cpu", progress=False).to_dict()  # fmt: skip
    assert report["shape"]["layers"] == 5 and tuple(report["shape"]["dense_mlp_layers"]) == (4,)
    shape = Shape(**{**tiny, "dense_mlp_layers": (4,)}).with_layers(5)
    assert report["pruned"]["param_bytes"] == 4 * parameter_count(shape, Plan(attn=(0,), mlp=(1, 4)))
    assert report["pruned"]["kv_bytes"] * 5 == report["dense"]["kv_bytes"] * 4
    with pytest.raises(QpruneError, match=r"layers 7: qwen3-moe-tiny has 1..6 layers"):
        run_bench(shape="qwen3-moe-tiny", layers=7, plan=Plan(attn=(0,)), settings=settings, progress=False)


def test_unsupported_family_names_the_supported_ones(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    with pytest.raises(QpruneError, match=r"holds a llama model; qprune supports Qwen3 \(qwen3\), Qwen3-MoE"):
        qprune.prune(str(tmp_path / "llama"), tmp_path / "out", Plan(attn=(0,)))


def test_moe_plan_out_of_range(moe_base, tmp_path):
    result = cli("prune", moe_base, tmp_path / "out", "--mlp", "4")
    assert_one_line_error(result, "--mlp: layer 4 is out of range: the model has 4 layers (0..3)")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_scan_and_auto_prune_on_moe(tmp_path):
    """Scan and search rank MoE blocks and prune them (the embedded tokenizer, a random MoE)."""
    base = with_embedded_tokenizer(save_tiny_moe(tmp_path / "base", vocab=4096))
    args = ["--samples", "4", "--seq-len", "64", "--no-progress"]
    result = cli("scan", str(base), "--out", str(tmp_path / "scan"), *args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert len(report["blocks"]) == 8
    result = cli("prune", str(base), str(tmp_path / "auto"), "--auto", "--blocks", "2", *args)
    assert result.exit_code == 0, result.output
    assert verify(str(tmp_path / "auto"), str(base))[2].passed
    facts = json.loads(cli("info", tmp_path / "auto", "--json").output)
    assert len(facts["attn"]) + len(facts["mlp"]) == 2
    result = cli("eval", tmp_path / "auto", "--base", base, "--max-tokens", "500", "-q", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    model, dense = report["model"]["perplexity"], report["base"]["perplexity"]
    assert model > 1 and dense > 1 and report["perplexity_change"] == pytest.approx(model / dense - 1)


@pytest.mark.parametrize("mode", ["int8", "torchao-int8"])
def test_quantized_moe_skips_pruned_blocks_and_matches_the_quantized_oracle(moe_base, moe_pruned, mode):
    library = {"int8": "bitsandbytes", "torchao-int8": "torchao"}[mode]
    pytest.importorskip(library, reason=f"{library} is not installed: pip install -e '.[quant]'")
    checks = verify(str(moe_pruned), str(moe_base), quantize=mode)
    assert all(c.passed for c in checks), "\n".join(map(str, checks))
    assert "of pruned blocks hold nothing" in checks[1].detail


def test_heal_writes_an_exact_slim_moe_checkpoint_with_per_expert_names(tmp_path):
    from qprune.healing.distill import HealSettings, heal
    from qprune.measure.data import DataSpec

    base = with_embedded_tokenizer(save_tiny_moe(tmp_path / "base", vocab=4096))
    qprune.prune(str(base), tmp_path / "pruned", MOE_PLAN)
    text = tmp_path / "train.txt"
    text.write_text((Path(qprune.__file__).parent / "assets" / "text" / "pydocs-calibration.txt").read_text()[:8_000])
    settings = HealSettings(tokens=2048, seq_len=64, batch_size=4, lr=1e-3, eval_tokens=500)
    heal(
        str(tmp_path / "pruned"),
        tmp_path / "healed",
        settings,
        base=str(base),
        data=DataSpec(str(text)),
        progress=False,
    )
    healed, pruned = read_checkpoint(tmp_path / "healed"), read_checkpoint(tmp_path / "pruned")
    assert {n: e.shape for n, e in healed.items()} == {n: e.shape for n, e in pruned.items()}  # never fused names
    checks = {c.name: c for c in verify(str(tmp_path / "healed"), str(base))}
    assert all(c.passed for c in checks.values()), checks


def test_configs_qprune_writes_name_the_experts_for_every_transformers_version(moe_base, moe_pruned):
    # 5.x writes num_local_experts, which 4.x does not read (it would build 128 experts).
    written = json.loads((moe_pruned / "config.json").read_text())
    source = json.loads((moe_base / "config.json").read_text())
    assert written["num_experts"] == source.get("num_experts", source.get("num_local_experts")) == 4


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.model_type)
def test_each_family_checks_its_own_config_fields(tmp_path, untied_base, family):
    """A bad value of each field in a family's config-check table is refused when a checkpoint opens."""
    source = untied_base if family.model_type == "qwen3" else save_tiny_moe(tmp_path / "base")
    config = json.loads((source / "config.json").read_text())
    assert family_of(config) is family and open_checkpoint(source)
    expected = {"num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size"}
    expected |= {"mlp_only_layers", "decoder_sparse_step", "layer_num_experts"}
    widths = {"layer_intermediate_size", "layer_num_key_value_heads"}  # a width cut's sizes per layer
    assert set(family.config_checks) == (expected if family is QWEN3_MOE else widths)
    for name, kind in family.config_checks.items():
        bad = next(value for value in ("x", 1.5, -1, [-1]) if not kind.test(value, config))
        damaged = Path(shutil.copytree(source, tmp_path / name))
        edit_config(**{name: bad})(damaged)
        with pytest.raises(QpruneError, match=f"config.json: {name} must be .*, not {bad!r}"):
            open_checkpoint(damaged)
