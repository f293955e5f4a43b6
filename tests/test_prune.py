"""`qprune prune` and `qprune info`: slim checkpoints, their contents, and every bad input."""

import json
import shutil
import struct

import pytest
import torch
from conftest import assert_one_line_error, cli, leftovers, oracle, save_tiny_qwen3, token_batch
from safetensors import safe_open

import qprune
from qprune.io.safetensors import read_checkpoint
from qprune.plan import Plan


def test_prune_writes_slim_sharded_checkpoint(tmp_path, base):
    out = tmp_path / "out"
    result = cli("prune", base, out, "--attn", "0,2", "--mlp", "3", "--max-shard-size", "50KB")
    assert result.exit_code == 0, result.output
    assert "pruned 3 blocks" in result.output and "parameters:" in result.output

    plan = Plan(attn=(0, 2), mlp=(3,))
    src, dst = read_checkpoint(base), read_checkpoint(out)
    assert set(dst) == {name for name in src if not plan.prunes(name)}
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(dst)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in dst.values())
    for name, entry in dst.items():  # the bytes are the source's, tensor by tensor
        with safe_open(entry.file, "pt") as a, safe_open(src[name].file, "pt") as b:
            assert torch.equal(a.get_tensor(name), b.get_tensor(name))

    config, source_config = (json.loads((d / "config.json").read_text()) for d in (out, base))
    assert config["model_type"] == "pruned_qwen3" and config["auto_map"]
    assert (config["pruned_attn_layers"], config["pruned_mlp_layers"]) == ([0, 2], [3])
    for key, value in source_config.items():
        if key not in ("model_type", "architectures"):
            assert config[key] == value, key
    for name in ("tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    assert (out / "modeling_pruned_qwen3.py").exists() and (out / "configuration_pruned_qwen3.py").exists()
    card = (out / "README.md").read_text()
    assert "Attention blocks pruned (layers): 0, 2" in card and "trust_remote_code=True" in card

    model = qprune.load(out, dtype=torch.float32)
    with torch.no_grad():
        assert (model(token_batch()).logits - oracle(base, plan)(token_batch()).logits).abs().max() <= 1e-5


def test_dtype_is_preserved(tmp_path):
    base = save_tiny_qwen3(tmp_path / "bf16", dtype=torch.bfloat16)
    qprune.prune(str(base), tmp_path / "out", Plan(mlp=(1,)))
    assert {t.dtype for t in read_checkpoint(tmp_path / "out").values()} == {"BF16"}
    model = qprune.load(tmp_path / "out")
    assert model.dtype == torch.bfloat16
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    stored = sum(t.nbytes for t in read_checkpoint(tmp_path / "out").values())
    assert abs(held - stored) <= 0.01 * stored


def test_pruning_a_pruned_checkpoint_combines_plans(tmp_path, untied_base):
    qprune.prune(str(untied_base), tmp_path / "one", Plan(attn=(0,)))
    result = qprune.prune(str(tmp_path / "one"), tmp_path / "two", Plan(attn=(0,), mlp=(2,)))
    assert result.plan == Plan(attn=(0,), mlp=(2,))
    info = json.loads(cli("info", tmp_path / "two", "--json").output)
    assert (info["attn"], info["mlp"], info["base_model"]) == ([0], [2], untied_base.name)
    model = qprune.load(tmp_path / "two", dtype=torch.float32)
    with torch.no_grad():
        expected = oracle(untied_base, result.plan)(token_batch()).logits
        assert (model(token_batch()).logits - expected).abs().max() <= 1e-5


def test_info(tmp_path, untied_base):
    qprune.prune(str(untied_base), tmp_path / "out", Plan(attn=(3, 1)))
    result = cli("info", tmp_path / "out")
    assert result.exit_code == 0 and "attention pruned: 1, 3" in result.output
    facts = json.loads(cli("info", tmp_path / "out", "--json").output)
    assert facts["attn"] == [1, 3] and facts["mlp"] == []
    assert facts["parameters"] == sum(t.numel for t in read_checkpoint(tmp_path / "out").values())
    dense = json.loads(cli("info", untied_base, "--json").output)
    assert dense["attn"] == [] and dense["parameters"] > facts["parameters"]


def test_force_replaces_existing_output(tmp_path, untied_base):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    result = cli("prune", untied_base, out, "--mlp", "1")
    assert result.exit_code == 2 and "not empty" in result.output and (out / "old.txt").exists()
    assert cli("prune", untied_base, out, "--mlp", "1", "--force").exit_code == 0
    assert not (out / "old.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left behind


def test_empty_output_directory_is_fine(tmp_path, untied_base):
    """An existing empty OUT is written into without --force: the pruned checkpoint, and nothing else beside it."""
    out = tmp_path / "out"
    out.mkdir()
    result = cli("prune", untied_base, out, "--mlp", "1")
    assert result.exit_code == 0, result.output
    assert "pruned 1 blocks" in result.output
    assert json.loads(cli("info", out, "--json").output)["mlp"] == [1]
    stored = read_checkpoint(out)
    assert set(stored) == {name for name in read_checkpoint(untied_base) if not Plan(mlp=(1,)).prunes(name)}
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not leftovers(out)  # no partial output anywhere


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


def _damage_header(path):
    header = b'{"x": {"dtype": "F32"}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def _llama(path):
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')


def _bin_only(path):
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "qwen3", "num_hidden_layers": 4}')
    (path / "pytorch_model.bin").write_bytes(b"not really a pickle")


BAD_SOURCES = {
    "truncated shard": (lambda p: _truncate(sorted(p.glob("model-*.safetensors"))[1]), "is truncated"),
    "missing shard": (lambda p: sorted(p.glob("model-*.safetensors"))[0].unlink(), "is missing"),
    "not a qwen3": (None, "holds a llama model; qprune supports Qwen3 (qwen3), Qwen3-MoE (qwen3_moe)"),
    "only bin weights": (None, "has only PyTorch .bin weights"),
    "no config": (lambda p: (p / "config.json").unlink(), "has no config.json"),
    "damaged header": (
        lambda p: _damage_header(sorted(p.glob("model-*.safetensors"))[0]),
        "damaged safetensors header",
    ),
}


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_bad_sources(tmp_path, untied_base, case):
    damage, message = BAD_SOURCES[case]
    src = tmp_path / "src"
    if case == "not a qwen3":
        _llama(src)
    elif case == "only bin weights":
        _bin_only(src)
    else:
        shutil.copytree(untied_base, src)
        damage(src)
    result = cli("prune", src, tmp_path / "out", "--attn", "1")
    _assert_clean_error(result, message, tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attn", "4"], "--attn: layer 4 is out of range: the model has 4 layers (0..3)"),
        (["--mlp", "-1"], "--mlp: layer -1 is negative"),
        (["--mlp", "two"], "--mlp: 'two' is not a layer number"),
        ([], "the plan prunes no blocks"),
        (["--max-shard-size", "lots", "--mlp", "1"], "is not a size"),
    ],
)
def test_bad_plans(tmp_path, untied_base, args, message):
    _assert_clean_error(cli("prune", untied_base, tmp_path / "out", *args), message, tmp_path)


def test_plan_file_and_its_conflicts(tmp_path, untied_base):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text('{"attn": [1], "mlp": [2]}')
    result = cli("prune", untied_base, tmp_path / "out", "--plan", plan_file)
    assert result.exit_code == 0, result.output
    assert json.loads(cli("info", tmp_path / "out", "--json").output)["mlp"] == [2]
    result = cli("prune", untied_base, tmp_path / "out2", "--plan", plan_file, "--attn", "1")
    _assert_clean_error(result, "not both", tmp_path, out="out2")


def test_missing_source_and_offline_hub_id(tmp_path, monkeypatch):
    _assert_clean_error(cli("prune", tmp_path / "nope", tmp_path / "out", "--attn", "1"), "does not exist", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("prune", "qprune-test/no-such-model", tmp_path / "out", "--attn", "1")
    _assert_clean_error(result, "could not be downloaded from the Hugging Face Hub", tmp_path)
    assert "offline" in result.output


def test_output_equal_to_source_is_refused(tmp_path, untied_base):
    src = tmp_path / "src"
    shutil.copytree(untied_base, src)
    result = cli("prune", src, src, "--attn", "1", "--force")
    assert result.exit_code == 2 and "the output directory is the source" in result.output
    assert read_checkpoint(src)  # untouched


def _assert_clean_error(result, message, tmp_path, out="out"):
    assert_one_line_error(result, message)
    assert not (tmp_path / out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial output


def test_sliding_window_attention_is_refused_and_its_mlp_pruned(tmp_path, untied_base):
    source = tmp_path / "sliding"
    shutil.copytree(untied_base, source)
    config = json.loads((source / "config.json").read_text()) | {"use_sliding_window": True, "sliding_window": 8}
    (source / "config.json").write_text(json.dumps(config))
    result = cli("prune", str(source), str(tmp_path / "a"), "--attn", "1")
    assert result.exit_code == 2
    assert result.output == "error: attention blocks of a sliding-window Qwen3 cannot be pruned\n"
    assert not (tmp_path / "a").exists()
    qprune.prune(str(source), tmp_path / "m", Plan(mlp=(1,)))  # MLP blocks are fine
