"""`qprune eval`: sliding-window perplexity against a direct computation, side-by-side output, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import VOCAB, cli, oracle, save_tiny_qwen3

from qprune.errors import QpruneError
from qprune.measure.evaluate import perplexity, windows
from qprune.ops.prune import prune
from qprune.plan import Plan
from qprune.runtime.load import load
from qprune.shipped import EMBEDDED_MODEL


@pytest.mark.parametrize(("total", "seq_len", "stride"), [(300, 64, 24), (64, 64, 32), (10, 64, 16), (129, 32, 31)])
def test_windows_score_every_token_but_the_first_once(total, seq_len, stride):
    scored = []
    for w in windows(total, seq_len, stride):
        assert w.end - w.begin <= seq_len and w.begin < w.scored_from <= w.end
        scored += range(w.scored_from, w.end)
    assert scored == list(range(1, total))


def hf_guide_perplexity(model, tokens: torch.Tensor, seq_len: int, stride: int) -> float:
    """The loop of transformers' perplexity guide, with `labels=` and exact token counts."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, tokens.numel(), stride):
        end = min(begin + seq_len, tokens.numel())
        ids = tokens[begin:end].unsqueeze(0)
        labels = ids.clone()
        labels[:, : -(end - prev_end)] = -100
        with torch.no_grad():
            loss = model(ids, labels=labels).loss
        valid = int((labels[:, 1:] != -100).sum())
        nll, count, prev_end = nll + float(loss) * valid, count + valid, end
        if end == tokens.numel():
            break
    return math.exp(nll / count)


def test_perplexity_matches_the_guide_and_the_oracle(untied_base, tmp_path):
    plan = Plan(attn=(0,), mlp=(2,))
    prune(str(untied_base), tmp_path / "p", plan)
    model = load(tmp_path / "p", dtype=torch.float32)
    tokens = torch.randint(2, VOCAB, (300,), generator=torch.Generator().manual_seed(3))
    ours = perplexity(model, tokens, seq_len=64, stride=24, batch_size=3)  # 12 windows, the last one short
    assert ours.tokens == 299
    assert ours.value == pytest.approx(hf_guide_perplexity(model, tokens, 64, 24), rel=1e-5)
    assert ours.value == pytest.approx(hf_guide_perplexity(oracle(untied_base, plan), tokens, 64, 24), rel=1e-5)
    dense = perplexity(load(untied_base, dtype=torch.float32), tokens, seq_len=64, stride=24)
    assert dense.value != pytest.approx(ours.value, rel=1e-3)  # the plan changes what is measured


def test_one_window_is_one_forward(untied_base):
    model = load(untied_base, dtype=torch.float32)
    tokens = torch.randint(2, VOCAB, (50,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        loss = model(tokens.unsqueeze(0), labels=tokens.unsqueeze(0)).loss
    assert perplexity(model, tokens, seq_len=64, stride=32).value == pytest.approx(math.exp(float(loss)), rel=1e-5)


@pytest.fixture(scope="module")
def pruned_embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "pruned"
    prune(str(EMBEDDED_MODEL), out, Plan(attn=(3,), mlp=(4,)))
    return out


@pytest.mark.slow
def test_eval_cli_side_by_side(pruned_embedded, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The list type\n\n  def main():\n")
    common = ["--max-tokens", "1500", "--seq-len", "256", "--stride", "128", "--no-progress"]
    result = cli(
        "eval", str(pruned_embedded), "--base", str(EMBEDDED_MODEL), "--prompts", str(prompts), "--json", *common
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["data"]["source"] == "qprune:pydocs-heldout.txt" and report["tokens"] == 1499
    model, base = report["model"]["perplexity"], report["base"]["perplexity"]
    assert model > base > 1  # two blocks of a trained model removed: quality drops
    assert report["perplexity_change"] == pytest.approx(model / base - 1)
    assert [g["prompt"] for g in report["generations"]] == ["The list type", "def main():"]
    assert all(g["model"] and g["base"] for g in report["generations"])

    table = cli("eval", str(pruned_embedded), "--base", str(EMBEDDED_MODEL), *common)
    assert table.exit_code == 0 and f"{model:10.3f}" in table.stdout and "change" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--base", "/nonexistent/base"], "/nonexistent/base does not exist"),
        (["--stride", "1024"], "--stride must be at least 1 and less than --seq-len (1024)"),
        (["--seq-len", "1"], "--seq-len must be at least 2"),
        (["--data", "qprune:nope.txt"], "qprune ships no such text"),
        (["--prompts", "/nonexistent/prompts.txt"], "prompts file /nonexistent/prompts.txt does not exist"),
        (["--dtype", "float8"], "--dtype float8: choose one of auto, bfloat16, float32, float16"),
        (["--quantize", "int3"], "--quantize 'int3': choose one of int8, nf4, torchao-int8, torchao-int4"),
    ],
)
def test_eval_bad_input(pruned_embedded, args, message):
    result = cli("eval", str(pruned_embedded), "--no-progress", *args)
    assert result.exit_code == 2 and message in result.output


def test_eval_refuses_a_base_with_another_vocabulary(pruned_embedded, tmp_path):
    other = save_tiny_qwen3(tmp_path / "tiny")
    with pytest.raises(QpruneError, match="different vocabularies"):
        from qprune.measure.evaluate import run_eval

        run_eval(str(pruned_embedded), base=str(other))


def test_eval_refuses_an_empty_prompts_file(pruned_embedded, tmp_path):
    (tmp_path / "p.txt").write_text("\n \n")
    result = cli("eval", str(pruned_embedded), "--prompts", str(tmp_path / "p.txt"))
    assert result.exit_code == 2 and "holds no prompts" in result.output


@pytest.mark.slow
def test_eval_in_a_fresh_process_asks_nothing(pruned_embedded):
    # The tokenizer of a pruned checkpoint reads its config, which names remote code; unregistered,
    # transformers would stop and ask whether to run it.
    args = ["eval", str(pruned_embedded), "--max-tokens", "300", "--seq-len", "64", "--stride", "32", "--no-progress"]
    done = subprocess.run(
        [sys.executable, "-m", "qprune.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "custom code" not in done.stdout + done.stderr and "299 tokens scored" in done.stdout
