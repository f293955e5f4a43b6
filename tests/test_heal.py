"""`qprune heal` and LoRA on pruned models: healing helps, the output is an exact slim checkpoint, LoRA
merges exactly, the teacher cache is exact KD at k = vocabulary, and bad input is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cli

import qprune
from qprune.errors import QpruneError
from qprune.healing.distill import HealSettings, heal
from qprune.healing.kd import kd_loss
from qprune.healing.lora import lora_config, pruned_modules
from qprune.io.safetensors import read_checkpoint
from qprune.measure.data import DataSpec
from qprune.measure.verify import verify
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

peft = pytest.importorskip("peft", reason="peft is in the test extra; without it LoRA cannot be tested")
QUICK = HealSettings(tokens=4096, seq_len=64, batch_size=4, lr=1e-3, eval_tokens=2000)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("heal") / "pruned"
    qprune.prune(str(EMBEDDED_MODEL), out, Plan(attn=(4,), mlp=(1, 2, 3)))
    return out


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """A little training text (about 10,000 tokens: heal trains on as many as its budget needs and no
    more), disjoint from the held-out text used to evaluate."""
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text((Path(qprune.__file__).parent / "assets" / "text" / "pydocs-calibration.txt").read_text()[:40_000])
    return path


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.slow
def test_heal_improves_and_writes_an_exact_slim_checkpoint(tmp_path, pruned, text):
    before = files(pruned)
    result = heal(str(pruned), tmp_path / "healed", QUICK, base=str(EMBEDDED_MODEL), data=DataSpec(str(text)))
    report, out = result.report, tmp_path / "healed"
    assert files(pruned) == before  # PRUNED is never modified
    assert report["perplexity"]["after"] < report["perplexity"]["before"]
    losses = [h["loss"] for h in report["loss_history"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # slim, same format: the same tensors, shapes and dtypes as PRUNED, some of them changed
    healed, original = read_checkpoint(out), read_checkpoint(pruned)
    assert {n: (e.shape, e.dtype) for n, e in healed.items()} == {n: (e.shape, e.dtype) for n, e in original.items()}
    assert json.loads((out / "config.json").read_text()) == json.loads((pruned / "config.json").read_text())
    assert "## Healing" in (out / "README.md").read_text() and (out / "qprune_heal.json").exists()
    checks = {check.name: check for check in verify(str(out), str(EMBEDDED_MODEL))}
    assert all(check.passed for check in checks.values()), checks
    assert "self-oracle" in checks["self"].detail  # exact against stock Qwen3 holding its own tensors


@pytest.mark.slow
def test_heal_cli_lora_and_last_layers(tmp_path, pruned, text):
    common = ["--base", EMBEDDED_MODEL, "--data", text, "--tokens", "2048", "--seq-len", "64", "--batch-size", "4"]
    common += ["--eval-tokens", "1000", "-q"]
    lora = cli("heal", str(pruned), str(tmp_path / "lora"), "--lora", "4", *map(str, common))
    assert lora.exit_code == 0, lora.output
    assert "LoRA rank 4 on the kept Linears" in lora.output and lora.stderr == ""
    last = cli("heal", str(pruned), str(tmp_path / "last"), "--last-layers", "1", *map(str, common))
    assert last.exit_code == 0, last.output
    report = json.loads((tmp_path / "last" / "qprune_heal.json").read_text())
    assert report["trainable"].startswith("the last 1 layers")
    for out in ("lora", "last"):
        assert all(c.passed for c in verify(str(tmp_path / out))), out


def test_lora_merge_equals_the_adapter_and_saves_slim(pruned, tmp_path):
    model = qprune.load(pruned, dtype=torch.float32)
    peft_model = peft.get_peft_model(model, lora_config(model, r=4))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)  # a trained adapter: B is no longer zero
    ids = torch.randint(0, 4096, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        merged = peft_model.merge_and_unload()
        assert (merged(input_ids=ids).logits - adapted).abs().max() <= 1e-4
    assert sum(p.numel() for p in merged.parameters()) == sum(e.numel for e in read_checkpoint(pruned).values())
    merged.save_pretrained(tmp_path / "merged")
    assert set(read_checkpoint(tmp_path / "merged")) == set(read_checkpoint(pruned))
    reloaded = qprune.load(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - adapted).abs().max() <= 1e-4
    assert all(check.passed for check in verify(str(tmp_path / "merged")))


def test_usual_lora_target_names_work_with_exclude_modules(pruned):
    model = qprune.load(pruned, dtype=torch.float32)
    names = ["q_proj", "v_proj", "down_proj"]
    with pytest.raises(ValueError, match="PrunedLinear"):  # what users meet without the helper
        peft.get_peft_model(qprune.load(pruned, dtype=torch.float32), peft.LoraConfig(r=4, target_modules=names))
    config = peft.LoraConfig(r=4, target_modules=names, exclude_modules=pruned_modules(model))
    adapted = peft.get_peft_model(model, config)
    wrapped = [n for n, m in adapted.named_modules() if n.endswith("q_proj") and hasattr(m, "lora_A")]
    assert len(wrapped) == 5  # layer 4's attention is pruned: 5 of 6 layers have a q_proj


@pytest.mark.slow
def test_teacher_cache_is_exact_kd_at_full_vocabulary(tmp_path, pruned, text):
    logits = torch.randn(2, 7, 11)
    teacher = torch.log_softmax(torch.randn(2, 7, 11), -1)
    values, ids = teacher.topk(11, dim=-1)
    assert torch.allclose(kd_loss(logits, values, ids), kd_loss(logits, teacher), atol=1e-6)
    settings = HealSettings(tokens=1024, seq_len=64, batch_size=4, lr=1e-3, eval_tokens=500)
    data = DataSpec(str(text))
    full = heal(str(pruned), tmp_path / "full", settings, base=str(EMBEDDED_MODEL), data=data, progress=False)
    cached = heal(
        str(pruned), tmp_path / "cached", settings, base=str(EMBEDDED_MODEL), data=data,
        teacher_cache=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert (tmp_path / "cache" / "teacher_topk.safetensors").exists()
    losses = [h["loss"] for h in full.report["loss_history"]], [h["loss"] for h in cached.report["loss_history"]]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert cached.report["perplexity"]["after"] == pytest.approx(full.report["perplexity"]["after"], rel=1e-4)


def _damaged_sources(tmp_path: Path, pruned: Path) -> dict[str, list]:
    other = tmp_path / "other"
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2}
    Qwen3ForCausalLM(Qwen3Config(vocab_size=4096, num_hidden_layers=6, head_dim=16, **shape)).save_pretrained(other)
    more = tmp_path / "more-pruned"
    qprune.prune(str(EMBEDDED_MODEL), more, Plan(attn=(0,)))
    short = tmp_path / "short.txt"
    short.write_text("too short to train on")
    return {
        "another hidden size": (["--base", other], "the base"),
        "base more pruned": (["--base", more], "prunes blocks the student keeps"),
        "data too short": (["--base", EMBEDDED_MODEL, "--data", short], "short.txt"),
        "tokens zero": (["--base", EMBEDDED_MODEL, "--tokens", "0"], "tokens must be positive"),
        "lr negative": (["--base", EMBEDDED_MODEL, "--lr", "-1"], "lr must be positive"),
        "lora zero": (["--base", EMBEDDED_MODEL, "--lora", "0"], "lora must be positive"),
        "unknown loss": (["--base", EMBEDDED_MODEL, "--loss", "mse"], "loss 'mse': choose kd, lm, mix"),
        "no base recorded": ([], "unavailable"),
    }


def test_bad_heal_input_is_one_line(tmp_path, pruned, monkeypatch):
    cases = _damaged_sources(tmp_path, pruned)
    moved = tmp_path / "elsewhere"  # as written before 0.3, PRUNED records its base by name only
    shutil.copytree(pruned, moved)
    config = json.loads((moved / "config.json").read_text())
    del config["qprune_base_path"]
    config["qprune_base_model"] = "qwen3-gone"  # a directory's name, not resolvable from here
    (moved / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    for case, (args, message) in cases.items():
        source = moved if case == "no base recorded" else pruned
        assert_one_line_error(cli("heal", source, tmp_path / "out", *args), message)
        assert not (tmp_path / "out").exists(), case
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    assert_one_line_error(cli("heal", pruned, tmp_path / "out", "--base", EMBEDDED_MODEL), "--force")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]  # not ours: left as it was
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(QpruneError, match=r"needs peft: pip install peft"):
        heal(str(pruned), tmp_path / "new", HealSettings(lora=4), base=str(EMBEDDED_MODEL))


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
@pytest.mark.slow
def test_two_process_data_parallel_heal_equals_one_process(tmp_path, pruned, text):
    """torchrun with 2 CPU processes (gloo DDP, 2 sequences each) against one process with the same 4
    sequences per step: DDP averages the two halves' gradients, which is the full batch's gradient."""
    common = ["heal", str(pruned), "--base", str(EMBEDDED_MODEL), "--data", str(text), "--tokens", "1024"]
    common += ["--seq-len", "64", "--eval-tokens", "500", "--lr", "1e-3", "-q"]
    one = cli(*common[:2], str(tmp_path / "one"), *common[2:], "--batch-size", "4")
    assert one.exit_code == 0, one.output
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
         "-m", "qprune.cli", *common[:2], str(tmp_path / "two"), *common[2:], "--batch-size", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "qprune_heal.json").read_text())
    b = json.loads((tmp_path / "two" / "qprune_heal.json").read_text())
    assert a["steps"] == b["steps"] and a["tokens_trained"] == b["tokens_trained"]
    from safetensors.torch import load_file

    one_w, two_w = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    worst = max((one_w[n].float() - two_w[n].float()).abs().max().item() for n in one_w)
    assert worst <= 2e-2, worst  # bf16 storage: one rounding step of the largest weights
