"""`qprune bench`: the ideal-speedup arithmetic by hand, exact KV bytes, the JSON report, bad input.
Timings themselves are not asserted (benchmarks print them); only that they were taken."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, save_tiny_qwen3

from qprune.arch.qwen3 import QWEN3
from qprune.cost import IdealSpeedups, Shape, ideal_speedups, kv_bytes, parameter_count
from qprune.measure.bench import BenchSettings, measure, random_pair, run_bench
from qprune.ops.prune import prune
from qprune.plan import Plan
from qprune.runtime.load import load
from qprune.runtime.precision import auto_dtype

HAND = Shape(hidden=4, intermediate=8, layers=2, heads=2, kv_heads=1, head_dim=2, vocab=10, tied=False)
TINY = Shape(hidden=64, intermediate=96, layers=4, heads=4, kv_heads=2, head_dim=16, vocab=96, tied=True)
QUICK = BenchSettings(prompt_len=8, new_tokens=3, batches=(1, 2), repeats=2, warmup=1)


def test_ideal_speedups_by_hand():
    # Attention block: q 4x4, k and v 4x2, o 4x4 = 48 weights, + q/k norms 2+2, + input norm 4 = 56.
    # MLP block: 3 x 4x8 = 96, + norm 4 = 100. Dense: 2x56 + 2x100 + embed 40 + lm_head 40 + norm 4 = 396.
    assert parameter_count(HAND, Plan()) == 396
    assert parameter_count(HAND, Plan(attn=(1,))) == 340
    # Prefill, prompt of 3: attention block 2x48 + QK/AV 2x2x4x(3+1)/2 = 96 + 32; MLP 2x96 = 192;
    # lm_head 2x4x10 / 3. Dense 2x128 + 2x192 + 80/3 = 2000/3; pruned 128 + 2x192 + 80/3 = 1616/3.
    # Decode, batch 2, 2 new tokens, 2 bytes: weights read = 396 - 40 (input embedding) + 2x4 rows = 364
    # values = 728 bytes, KV per context token 2 layers x 2 (k, v) x batch 2 x 1 head x 2 dims x 2 bytes
    # = 32 over 3 + (2+1)/2 = 4.5 tokens = 144: 872. Pruned: (340 - 40 + 8) x 2 = 616 + 16 x 4.5 = 688.
    ideal = ideal_speedups(HAND, Plan(), Plan(attn=(1,)), batch=2, prompt_len=3, new_tokens=2, dtype_bytes=2)
    assert ideal.prefill == pytest.approx(2000 / 1616)
    assert ideal.decode == pytest.approx(872 / 688)
    # A tied lm_head is read once, and pruning nothing gains nothing.
    tied = Shape(**{**HAND.to_dict(), "tied": True})
    assert parameter_count(tied, Plan()) == 356
    assert ideal_speedups(tied, Plan(), Plan(), 1, 3, 2) == IdealSpeedups(1.0, 1.0)


def test_parameter_count_matches_a_loaded_checkpoint(untied_base, tmp_path):
    plan = Plan(attn=(0, 2), mlp=(3,))
    prune(str(untied_base), tmp_path / "p", plan)
    model = load(tmp_path / "p")
    assert parameter_count(Shape.from_config(model.config), plan) == sum(p.numel() for p in model.parameters())


def test_random_pair_is_the_dense_model_with_blocks_skipped():
    plan = Plan(attn=(0,), mlp=(1, 3))
    dense, pruned = random_pair(TINY, plan, torch.float32, "cpu")
    ids = torch.randint(0, TINY.vocab, (2, 10))
    with torch.no_grad():
        got = pruned(ids).logits
        dense.set_pruned(list(plan.attn), list(plan.mlp))
        want = dense(ids).logits
    assert torch.equal(got, want)
    assert sum(p.numel() for p in pruned.parameters()) == parameter_count(TINY, plan)
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # still tied


def test_kv_bytes_scale_exactly_with_kept_attention_layers():
    plan = Plan(attn=(0, 3), mlp=(1,))
    dense, pruned = random_pair(TINY, plan, torch.bfloat16, "cpu")
    rows = measure(dense, pruned, QUICK, "cpu", progress=False)
    for row in rows:
        tokens = QUICK.prompt_len + QUICK.new_tokens
        assert row["dense"]["kv_bytes"] == kv_bytes(TINY, Plan(), row["batch"], tokens, 2)
        assert row["pruned"]["kv_bytes"] * TINY.layers == row["dense"]["kv_bytes"] * (TINY.layers - 2)
        for side in ("dense", "pruned"):
            assert len(row[side]["prefill_seconds"]) == QUICK.repeats and row[side]["decode_tokens_per_s"] > 0
            assert row[side]["peak_bytes"] >= row[side]["param_bytes"]


@pytest.mark.slow
def test_bench_checkpoints_json(untied_base, tmp_path):
    prune(str(untied_base), tmp_path / "p", Plan(attn=(1,), mlp=(2, 3)))
    args = ["bench", str(tmp_path / "p"), "--base", str(untied_base), "--prompt-len", "8", "--new-tokens", "3"]
    result = cli(*args, "--batch", "1,3", "--repeats", "2", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("prefill_speedup", "decode_speedup", "ideal_prefill_speedup", "ideal_decode_speedup"):
        assert report[key] > 0 and all(row[key] > 0 for row in report["batches"])
    assert [row["batch"] for row in report["batches"]] == [1, 3] and report["batch"] == 1
    assert report["pruned_plan"] == {"attn": [1], "mlp": [2, 3]} and report["dense_plan"] == {"attn": [], "mlp": []}
    dense, pruned = report["dense"], report["pruned"]
    itemsize = auto_dtype()[0].itemsize  # bench's default dtype, auto: float32 on a CPU without native bf16
    assert dense["param_bytes"] == sum(p.numel() for p in load(untied_base).parameters()) * itemsize
    assert pruned["param_bytes"] < dense["param_bytes"]
    assert pruned["kv_bytes"] * 4 == dense["kv_bytes"] * 3
    assert report["ideal_decode_speedup"] == pytest.approx(
        ideal_speedups(Shape.from_config(load(untied_base).config), Plan(), Plan(attn=(1,), mlp=(2, 3)), 1, 8, 3).decode
    )

    table = cli(*args, "--repeats", "1", "--warmup", "0", "--no-progress")
    assert table.exit_code == 0 and "decode tok/s" in table.stdout and "KV bytes" in table.stdout


def test_bench_shape_uses_the_named_shape(monkeypatch):
    monkeypatch.setitem(QWEN3.bench_shapes, "qwen3-tiny", TINY.to_dict())
    report = run_bench(shape="qwen3-tiny", plan=Plan.parse("0-1", None), settings=QUICK, progress=False).to_dict()
    assert report["shape"] == TINY.to_dict() and report["pruned_plan"] == {"attn": [0, 1], "mlp": []}
    assert report["pruned"]["kv_bytes"] * 2 == report["dense"]["kv_bytes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "qwen3-7b", "--attn", "1"], "--shape qwen3-7b: unknown; choose one of qwen3-0.6b"),
        (["--shape", "qwen3-0.6b", "--attn", "28"], "--attn: layer 28 is out of range: the model has 28 layers"),
        (["--shape", "qwen3-0.6b"], "--shape needs blocks to prune"),
        (["MODEL"], "bench MODEL needs --base"),
        ([], "give a pruned checkpoint and --base, or --shape"),
        (["MODEL", "--base", "BASE", "--shape", "qwen3-0.6b"], "give either --shape"),
        (["--shape", "qwen3-0.6b", "--attn", "1", "--batch", "1,x"], "--batch: '1,x' is not a list"),
        (["--shape", "qwen3-0.6b", "--attn", "1", "--batch", "0"], "batch sizes must be at least 1"),
        (["--shape", "qwen3-0.6b", "--attn", "1", "--repeats", "0"], "--repeats must be at least 1"),
        (["--shape", "qwen3-0.6b", "--attn", "1", "--device", "cuda:0"], "no CUDA device"),
        (["/nonexistent/pruned", "--base", "/nonexistent/base"], "/nonexistent/pruned does not exist"),
        (["--shape", "qwen3-0.6b", "--attn", "1", "--layers", "0"], "--layers 0: qwen3-0.6b has 1..28 layers"),
        (["--shape", "qwen3-30b-a3b", "--attn", "3", "--layers", "2"], "--attn: layer 3 is out of range"),
        (["MODEL", "--base", "BASE", "--layers", "2"], "--layers goes with --shape"),
    ],
)
def test_bench_bad_input(args, message):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA, so --device cuda:0 is valid here")
    result = cli("bench", *args)
    assert result.exit_code == 2 and message in result.output


def test_bench_refuses_a_base_of_another_shape(untied_base, tmp_path):
    other = save_tiny_qwen3(tmp_path / "three", num_layers=3)
    result = cli("bench", str(untied_base), "--base", str(other))
    assert result.exit_code == 2 and "are not the same Qwen3 shape" in result.output
