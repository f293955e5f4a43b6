"""`qprune verify`: passes on honest checkpoints, fails (exit 1) on damaged ones."""

import json

import pytest
import torch
from conftest import cli
from safetensors.torch import load_file, save_file

import qprune
from qprune.io.safetensors import read_checkpoint
from qprune.plan import Plan


@pytest.fixture
def pruned(tmp_path, base):
    qprune.prune(str(base), tmp_path / "pruned", Plan(attn=(0,), mlp=(2,)))
    return tmp_path / "pruned"


def test_verify_passes_with_and_without_base(pruned, base):
    result = cli("verify", str(pruned), "--base", str(base))
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("PASS")
    for name in ("keys", "params", "logits", "self", "cache"):
        assert f"PASS  {name}" in result.output
    assert "max |Δlogits| vs oracle" in result.output
    result = cli("verify", str(pruned))  # without --base: the self-oracle still checks logits
    assert result.exit_code == 0, result.output
    assert "PASS  self       max |Δlogits| vs self-oracle" in result.output


def test_verify_of_a_twice_pruned_checkpoint(tmp_path, pruned, untied_base):
    qprune.prune(str(pruned), tmp_path / "twice", Plan(attn=(3,)))
    checks = qprune.verify(str(tmp_path / "twice"), str(pruned))
    assert all(c.passed for c in checks), [str(c) for c in checks]


def test_verify_fails_on_changed_weights(pruned, base):
    name = "model.layers.1.mlp.down_proj.weight"
    entry = read_checkpoint(pruned)[name]
    tensors = load_file(entry.file)
    tensors[name] = tensors[name] + 0.05 * torch.randn_like(tensors[name])
    save_file(tensors, entry.file, metadata={"format": "pt"})
    result = cli("verify", str(pruned), "--base", str(base))
    assert result.exit_code == 1
    assert "FAIL  logits" in result.output and result.output.strip().endswith("FAIL")


def test_verify_fails_on_wrong_key_accounting(tmp_path, pruned, base):
    # a checkpoint whose config claims a block is pruned although its tensors were kept
    config = json.loads((pruned / "config.json").read_text())
    config["pruned_attn_layers"] = []
    (pruned / "config.json").write_text(json.dumps(config))
    result = cli("verify", str(pruned), "--base", str(base))
    assert result.exit_code == 1 and "FAIL  keys" in result.output and "missing" in result.output


def test_verify_bad_path(tmp_path):
    result = cli("verify", str(tmp_path / "nope"))
    assert result.exit_code == 2 and result.output.startswith("error: ")
