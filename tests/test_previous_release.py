"""Checkpoints written before the current layout still load, verify, export and prune further.

tests/data/release-40a8b91 holds a tiny bfloat16 Qwen3 (`base`) and what release 40a8b91's `qprune
prune` made of it (`pruned`: attention 0 and 2, MLP 1): its config and its own copy of that release's
modeling code, which had no `pruned_blocks.py`. It was made by a checkout of that commit running
`qprune.prune(base, pruned, Plan(attn=(0, 2), mlp=(1,)))` on the base that conftest's
`save_tiny_qwen3(num_layers=3, dtype=torch.bfloat16)` writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REMOTE_CODE, oracle, token_batch
from transformers import Qwen3ForCausalLM

import qprune
from qprune.measure.verify import verify
from qprune.plan import Plan

RELEASE = Path(__file__).parent / "data" / "release-40a8b91"
PLAN = Plan(attn=(0, 2), mlp=(1,))


def test_the_stored_checkpoint_is_of_the_old_format():
    files = {p.name for p in (RELEASE / "pruned").iterdir()}
    assert "modeling_pruned_qwen3.py" in files and "pruned_blocks.py" not in files
    assert json.loads((RELEASE / "pruned" / "config.json").read_text())["pruned_attn_layers"] == [0, 2]


def test_qprune_loads_and_verifies_a_previous_release_checkpoint():
    model = qprune.load(RELEASE / "pruned", dtype=torch.float32)
    with torch.no_grad():
        delta = (model(token_batch()).logits - oracle(RELEASE / "base", PLAN)(token_batch()).logits).abs().max()
    assert delta <= 1e-5
    checks = verify(str(RELEASE / "pruned"), str(RELEASE / "base"))
    assert all(check.passed for check in checks), "\n".join(map(str, checks))


@pytest.mark.slow
def test_its_own_code_still_loads_it_with_transformers_alone():
    ids = token_batch()
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE, str(RELEASE / "pruned"), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    logits = torch.tensor(json.loads(done.stdout.split("LOGITS ", 1)[1]))
    with torch.no_grad():
        assert (logits - oracle(RELEASE / "base", PLAN)(ids).logits).abs().max() <= 1e-5


def test_it_prunes_further_and_exports_with_the_current_code(tmp_path):
    result = qprune.prune(str(RELEASE / "pruned"), tmp_path / "more", Plan(mlp=(2,)))
    assert result.plan == Plan(attn=(0, 2), mlp=(1, 2))
    assert (tmp_path / "more" / "pruned_blocks.py").exists()  # the current code ships with it
    assert all(check.passed for check in verify(str(tmp_path / "more"), str(RELEASE / "base")))
    qprune.export(str(RELEASE / "pruned"), tmp_path / "stock")
    stock = Qwen3ForCausalLM.from_pretrained(tmp_path / "stock", dtype=torch.float32)
    with torch.no_grad():
        delta = (stock(token_batch()).logits - oracle(RELEASE / "base", PLAN)(token_batch()).logits).abs().max()
    assert delta <= 1e-5
