"""float16 safety: the default dtype, the float16 warning, and overflow found and explained.

The model made to overflow is the embedded trained model with layer 2's MLP output projection scaled
by 1e5: its hidden states reach ~7e5, finite in bfloat16, beyond float16's 65504.
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch
from conftest import cli, save_tiny_qwen3
from safetensors.torch import load_file, save_file

import qprune
from qprune.measure.evaluate import perplexity
from qprune.runtime.generate import complete
from qprune.runtime.load import load_tokenizer
from qprune.runtime.precision import Float16Warning, NonFiniteLogitsError, choose_dtype, find_overflow
from qprune.shipped import EMBEDDED_MODEL


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    path = tmp_path_factory.mktemp("precision") / "hot"
    shutil.copytree(EMBEDDED_MODEL, path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.2.mlp.down_proj.weight"] *= 1e5
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def load_quietly(path, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Float16Warning)
        return qprune.load(path, dtype=dtype)


@pytest.mark.parametrize("saved", [torch.bfloat16, torch.float32])
def test_default_dtype_is_the_checkpoints(tmp_path, saved):
    path = save_tiny_qwen3(tmp_path / "base", dtype=saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16Warning)
        assert qprune.load(path).dtype == saved


def test_bfloat16_falls_back_to_float32_where_unsupported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_dtype(None, "bfloat16", on_cuda=True) == torch.float32
    assert choose_dtype(None, "bfloat16", on_cuda=False) == torch.bfloat16  # every CPU runs bfloat16
    assert choose_dtype("bfloat16", "bfloat16", on_cuda=True) == torch.bfloat16  # asked for: kept


def test_float16_on_qwen3_warns(tmp_path):
    path = save_tiny_qwen3(tmp_path / "base")
    with pytest.warns(Float16Warning, match="trained in bfloat16.*overflow.*load it in bfloat16"):
        model = qprune.load(path, dtype="float16")
    assert model.dtype == torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("error", Float16Warning)
        qprune.load(path, dtype=torch.bfloat16)


def test_check_overflow_names_the_first_layer(overflowing):
    ids = torch.randint(4096, (1, 64), generator=torch.Generator().manual_seed(0))
    report = find_overflow(load_quietly(overflowing, torch.float16), ids)
    assert report.first == "layer 2 MLP"
    assert "first overflow (inf/NaN) at layer 2 MLP" in str(report)
    safe = find_overflow(qprune.load(overflowing, dtype=torch.bfloat16), ids)
    assert safe.first is None and max(value for _, value in safe.largest) > 65504  # beyond float16


def test_nonfinite_logits_are_reported_with_advice(overflowing):
    tokenizer = load_tokenizer(overflowing)
    hot = load_quietly(overflowing, torch.float16)
    with pytest.raises(NonFiniteLogitsError, match="overflows in float16; load it in bfloat16"):
        complete(hot, tokenizer, "The list type", max_new_tokens=3)
    tokens = torch.tensor(tokenizer("The list type holds items. " * 40)["input_ids"])
    with pytest.raises(NonFiniteLogitsError, match="check_overflow names the first layer"):  # Python names it so
        perplexity(hot, tokens, seq_len=64, stride=32)
    assert complete(qprune.load(overflowing), tokenizer, "The list type", max_new_tokens=3)  # bf16: fine


def test_cli_generate_in_float16_warns_names_the_layer_and_fails(overflowing):
    args = ["generate", str(overflowing), "--prompt", "The list type", "--max-new-tokens", "3"]
    with pytest.warns(Float16Warning):  # pytest captures it; the CLI prints it as "warning: ..."
        result = cli(*args, "--dtype", "float16", "--check-overflow")
    assert result.exit_code == 2
    assert "hidden states first overflow (inf/NaN) at layer 2 MLP" in result.output
    assert "error: the model's logits hold inf or NaN: Qwen3 overflows in float16" in result.output
    fine = cli(*args, "--check-overflow", "--dtype", "bfloat16")
    assert fine.exit_code == 0, fine.output
    assert "overflow check (bfloat16): hidden states finite in every layer" in fine.output


def test_cli_eval_check_overflow(overflowing):
    args = ["eval", str(overflowing), "--seq-len", "64", "--stride", "32", "--max-tokens", "200", "--no-progress"]
    with pytest.warns(Float16Warning):
        result = cli(*args, "--dtype", "float16", "--check-overflow")
    assert result.exit_code == 2
    assert "first overflow (inf/NaN) at layer 2 MLP" in result.output and "load it in bfloat16" in result.output
