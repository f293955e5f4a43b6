"""What a newcomer meets: the dtype chosen for the hardware, progress (or silence with -q) on every
command, --version, and model cards that carry no local paths."""

from __future__ import annotations

import json
import platform
import re

import pytest
import torch
from conftest import cli

import qprune
from qprune import progress
from qprune.cli.demo import free_output_dir
from qprune.io.source import portable_name
from qprune.plan import Plan
from qprune.runtime import precision
from qprune.runtime.precision import auto_dtype, resolve_auto
from qprune.shipped import EMBEDDED_MODEL


def _cpu(monkeypatch, machine="x86_64", amx=False, avx512_bf16=False, cuda=None):
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
    if cuda is not None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: cuda == "bf16")


@pytest.mark.parametrize(
    ("hardware", "dtype", "why"),
    [
        ({}, torch.float32, "the CPU has no native bfloat16"),
        ({"avx512_bf16": True}, torch.bfloat16, "natively (AVX512-BF16)"),
        ({"amx": True}, torch.bfloat16, "natively (AMX)"),
        ({"cuda": "bf16"}, torch.bfloat16, "the GPU computes bfloat16 natively"),
        ({"cuda": "no-bf16"}, torch.float32, "the GPU has no bfloat16"),
    ],
)
def test_auto_dtype_follows_the_hardware(monkeypatch, hardware, dtype, why):
    _cpu(monkeypatch, **hardware)
    chosen, reason = auto_dtype()
    assert chosen == dtype and why in reason
    notes = []
    assert resolve_auto("auto", notes.append) == str(dtype).removeprefix("torch.")
    assert len(notes) == 1 and notes[0].startswith(f"dtype: {str(dtype).removeprefix('torch.')} (")
    assert resolve_auto("float32", notes.append) == "float32" and len(notes) == 1  # explicit: unchanged, silent


@pytest.mark.parametrize(("flags", "native"), [("fp asimd bf16 sve", True), ("fp asimd sve", False)])
def test_auto_dtype_on_arm_reads_the_cpu_features(monkeypatch, flags, native):
    _cpu(monkeypatch, machine="aarch64")

    class CpuInfo:
        def __init__(self, _path):
            pass

        def read_text(self):
            return f"processor\t: 0\nFeatures\t: {flags}\n"

    monkeypatch.setattr(precision, "Path", CpuInfo)
    assert precision.cpu_bfloat16()[0] is native


def test_version():
    result = cli("--version")
    assert result.exit_code == 0 and re.fullmatch(r"qprune \d+\.\d+\.\d+\S*\n", result.output)


@pytest.fixture(scope="module")
def pruned_embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("first-run") / "pruned"
    qprune.prune(str(EMBEDDED_MODEL), out, Plan(attn=(1,), mlp=(4,)))
    return out


def _commands(tmp_path, pruned):
    data = ["--samples", "2", "--seq-len", "64"]
    return {
        "prune": ["prune", EMBEDDED_MODEL, tmp_path / "plain", "--attn", "2"],
        "prune --auto": ["prune", EMBEDDED_MODEL, tmp_path / "auto", "--auto", "--blocks", "2", *data],
        "scan": ["scan", EMBEDDED_MODEL, *data],
        "eval": ["eval", pruned, "--max-tokens", "600", "--seq-len", "128", "--stride", "64", "--batch-size", "1"],
        "bench": [
            "bench",
            pruned,
            "--base",
            EMBEDDED_MODEL,
            "--prompt-len",
            "8",
            "--new-tokens",
            "2",
            "--repeats",
            "2",
        ],
        "info": ["info", pruned],
        "verify": ["verify", pruned, "--base", EMBEDDED_MODEL],
        "generate": ["generate", pruned, "--prompt", "The list type", "--max-new-tokens", "3"],
    }


# Progress on stderr, without a terminal, when not quiet: what each command must say.
EXPECTED_PROGRESS = {
    "prune --auto": ["dtype: float32 (", "searching (greedy): 2 blocks", "greedy step 2 of 2"],
    "scan": ["dtype: float32 (", "scanning 12 blocks", "elapsed"],
    "eval": ["dtype: float32 (", "perplexity of model "],
    "bench": ["dtype: float32 (", "bench rounds: done"],
    "generate": ["dtype: float32 ("],
}


@pytest.mark.parametrize("command", ["prune", "prune --auto", "scan", "eval", "bench", "info", "verify", "generate"])
def test_every_command_is_quiet_with_q_and_reports_progress_without(tmp_path, pruned_embedded, monkeypatch, command):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)  # a line after every step: the slow-run behaviour
    _cpu(monkeypatch)  # the dtype line reads the same on any CI machine
    args = _commands(tmp_path, pruned_embedded)[command]
    quiet = cli(*args, "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "", quiet.stderr
    for path in (tmp_path / "plain", tmp_path / "auto"):  # written by the quiet run: rerun into fresh dirs
        if path.exists():
            path.rename(path.with_name(path.name + "-quiet"))
    loud = cli(*args)
    assert loud.exit_code == 0, loud.output
    assert "\r" not in loud.stderr and "Loading weights" not in loud.stderr  # no bars off a terminal
    for expected in EXPECTED_PROGRESS.get(command, []):
        assert expected in loud.stderr, loud.stderr


@pytest.mark.slow
def test_demo_keeps_its_output_and_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qprune-demo").mkdir()
    (tmp_path / "qprune-demo" / "mine.txt").write_text("an earlier run, or someone's files")
    assert str(free_output_dir()) == "qprune-demo-2"
    result = cli("demo", "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.output.startswith("qprune demo: choose 2 of 12 blocks of the embedded Qwen3")
    assert "verification: PASS" in result.output and "greedy search by nll" in result.output
    assert result.output.count("pruned: ") == 3 and result.output.count("dense: ") == 3
    assert "pruned checkpoint kept in qprune-demo-2" in result.output
    assert (tmp_path / "qprune-demo-2" / "config.json").exists()
    assert (tmp_path / "qprune-demo" / "mine.txt").exists()


def test_cards_and_configs_name_the_base_portably(tmp_path, untied_base):
    out = tmp_path / "out"
    qprune.prune(str(untied_base), out, Plan(attn=(1,)))
    card, config = (out / "README.md").read_text(), json.loads((out / "config.json").read_text())
    assert str(untied_base.parent) not in card and config["qprune_base_model"] == untied_base.name
    assert "pruned from:      base" in cli("info", out).output
    cached = tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "0123abc"
    cached.mkdir(parents=True)
    assert portable_name(str(cached)) == "Qwen/Qwen3-0.6B"
    assert portable_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert portable_name(str(tmp_path / "somewhere" / "my-model")) == "my-model"
