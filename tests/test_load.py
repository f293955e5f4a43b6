"""The three ways to load a pruned checkpoint, and the two ways loading must refuse or skip tensors."""

import json
import logging
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REMOTE_CODE, oracle, token_batch
from safetensors.torch import load_file, save_file

import qprune
from qprune import PrunedQwen3ForCausalLM
from qprune.errors import QpruneError
from qprune.io.safetensors import read_checkpoint
from qprune.modeling.pruned_blocks import MissingTensorsError, PrunedTensorsPresentError
from qprune.plan import Plan
from qprune.runtime.load import load_config

PLAN = Plan(attn=(0, 3), mlp=(1,))


@pytest.fixture
def pruned(tmp_path, base):
    qprune.prune(str(base), tmp_path / "pruned", PLAN)
    return tmp_path / "pruned"


def _run_remote_code(path):
    ids = token_batch()
    return subprocess.run(
        [sys.executable, "-c", REMOTE_CODE, str(path), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        cwd=path.parent,
    )


@pytest.mark.slow
def test_remote_code_path_without_qprune(pruned, base):
    proc = _run_remote_code(pruned)
    assert proc.returncode == 0, proc.stderr
    logits = torch.tensor(json.loads(proc.stdout.split("LOGITS ", 1)[1]))
    with torch.no_grad():
        assert (logits - oracle(base, PLAN)(token_batch()).logits).abs().max() <= 1e-5
    log = proc.stderr.lower()
    for phrase in ("newly initialized", "not initialized", "missing", "were not used"):
        assert phrase not in log, proc.stderr


def test_qprune_load_needs_no_remote_code(pruned, base):
    model = qprune.load(pruned)
    assert model.dtype == torch.float32 and not model.training
    with torch.no_grad():
        assert (model(token_batch()).logits - oracle(base, PLAN)(token_batch()).logits).abs().max() <= 1e-5


def test_seed_path_config_then_load_state_dict(pruned, base):
    model = PrunedQwen3ForCausalLM(load_config(pruned))
    state = {}
    for shard in pruned.glob("*.safetensors"):
        state.update(load_file(shard))
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        assert (model.eval()(token_batch()).logits - oracle(base, PLAN)(token_batch()).logits).abs().max() <= 1e-5


def _drop_tensor(checkpoint, name):
    entry = read_checkpoint(checkpoint)[name]
    tensors = load_file(entry.file)
    del tensors[name]
    save_file(tensors, entry.file, metadata={"format": "pt"})
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        del data["weight_map"][name]
        index.write_text(json.dumps(data))


KEPT = "model.layers.2.mlp.down_proj.weight"


@pytest.mark.slow
def test_missing_kept_tensor_is_an_error_on_every_path(pruned):
    _drop_tensor(pruned, KEPT)
    with pytest.raises(QpruneError, match=KEPT):
        qprune.load(pruned)
    with pytest.raises(MissingTensorsError, match=KEPT):
        PrunedQwen3ForCausalLM.from_pretrained(pruned)
    state = {}
    for shard in pruned.glob("*.safetensors"):
        state.update(load_file(shard))
    with pytest.raises(MissingTensorsError, match=KEPT):
        PrunedQwen3ForCausalLM(load_config(pruned)).load_state_dict(state, strict=False)
    proc = _run_remote_code(pruned)
    assert proc.returncode != 0 and KEPT in proc.stderr


def test_pruned_tensors_present_are_skipped_and_reported_once(base, caplog):
    full = {}
    for shard in base.glob("*.safetensors"):
        full.update(load_file(shard))
    config = load_config(base)
    config.pruned_attn_layers, config.pruned_mlp_layers = list(PLAN.attn), list(PLAN.mlp)
    model = PrunedQwen3ForCausalLM(config)
    with caplog.at_level(logging.WARNING):
        result = model.load_state_dict(full, strict=True)
    messages = [r.getMessage() for r in caplog.records if "pruned blocks" in r.getMessage()]
    assert len(messages) == 1 and "were not loaded" in messages[0]
    assert not result.missing_keys and not result.unexpected_keys
    assert not any(PLAN.prunes(name) for name, _ in model.named_parameters())
    with torch.no_grad():
        assert (model.eval()(token_batch()).logits - oracle(base, PLAN)(token_batch()).logits).abs().max() <= 1e-5


def test_pruned_tensors_in_checkpoint_are_refused_by_from_pretrained(tmp_path, pruned, base):
    """A checkpoint holding its pruned blocks' tensors is ambiguous (loading would skip what a stock export
    writes): qprune and the checkpoint's own code refuse it, naming the tensors and blocks."""
    for shard in pruned.glob("model*"):  # the pruned config and code, with the dense weights
        shard.unlink()
    for shard in base.glob("model*"):
        shutil.copy(shard, pruned)
    message = "(and 17 more) of blocks its plan prunes (attention of layers 0, 3; MLP of layer 1)"
    with pytest.raises(QpruneError, match=re.escape(message)):
        qprune.load(pruned, dtype=torch.float32)
    with pytest.raises(PrunedTensorsPresentError, match=re.escape(message)):
        PrunedQwen3ForCausalLM.from_pretrained(pruned)


def test_dense_qwen3_loads_with_nothing_pruned(untied_base):
    model = qprune.load(untied_base)
    assert isinstance(model, PrunedQwen3ForCausalLM)
    assert not any(layer.prune_self_attn or layer.prune_mlp for layer in model.model.layers)
    with torch.no_grad():
        assert (model(token_batch()).logits - oracle(untied_base, Plan())(token_batch()).logits).abs().max() <= 1e-6
