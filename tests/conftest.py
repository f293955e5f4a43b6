"""Tiny random Qwen3 checkpoints and the stock-transformers oracle, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from qprune.plan import Plan

VOCAB = 96


def tiny_config(num_layers: int = 4, tied: bool = False, **overrides) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        pad_token_id=0,
        eos_token_id=1,
        **overrides,
    )


def save_tiny_qwen3(
    path: Path,
    *,
    num_layers: int = 4,
    tied: bool = False,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "60KB",
    seed: int = 0,
) -> Path:
    """A random Qwen3 saved with transformers (multi-shard by default), plus tokenizer-side files."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(num_layers, tied)).to(dtype)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 256}\n')
    (path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}\n")
    return path


def oracle(base: Path, plan: Plan, attn_implementation: str = "eager") -> Qwen3ForCausalLM:
    """Stock Qwen3 with the pruned blocks' output projections zeroed: what the pruned model must compute."""
    model = Qwen3ForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation=attn_implementation)
    with torch.no_grad():
        for i in plan.attn:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
        for i in plan.mlp:
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model.eval()


def token_batch(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def untied_base(tmp_path_factory) -> Path:
    return save_tiny_qwen3(tmp_path_factory.mktemp("untied") / "base")


@pytest.fixture(scope="session")
def tied_base(tmp_path_factory) -> Path:
    return save_tiny_qwen3(tmp_path_factory.mktemp("tied") / "base", tied=True)


@pytest.fixture(params=["untied", "tied"])
def base(request, untied_base, tied_base) -> Path:
    return untied_base if request.param == "untied" else tied_base
