"""Width cuts that differ between layers: qprune's format, each layer built at its own sizes
(`layer_intermediate_size`, `layer_num_key_value_heads`). It equals the base with the removed
channels' `down_proj` columns and the removed groups' `o_proj` columns zeroed, stores and allocates
nothing of them, decodes the same with and without cache, passes `verify` with and without its base,
runs layer by layer, is taught by its base, and refuses `export` in one line until a later cut evens
it out (then it is a stock Qwen3 again)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, cli, logit_delta, save_tiny_qwen3, tiny_config, token_batch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

import qprune
from qprune.cost import Shape, parameter_count
from qprune.measure.verify import zero_width
from qprune.plan import Plan

LAYERS, CHANNELS, GROUPS, HEAD_DIM = 4, 96, 2, 16
# Layer 0 loses 3 channels, layer 1 one, layer 3 forty; layer 2 loses a KV group (and its 2 query heads).
UNEVEN = Plan(ffn={0: (0, 5, 95), 1: (10,), 3: tuple(range(40))}, kv_heads={2: (0,)})


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def base(request, tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("uneven") / "base", tied=request.param)


def width_oracle(base, plan: Plan, blocks: Plan = Plan()) -> Qwen3ForCausalLM:
    from conftest import oracle as block_oracle

    model = block_oracle(base, blocks) if blocks.num_blocks else Qwen3ForCausalLM.from_pretrained(base).float()
    zero_width(model, plan)
    return model.eval()


def test_uneven_cut_is_the_pruned_format_equal_to_the_zeroed_oracle(base, tmp_path):
    out = tmp_path / "cut"
    result = qprune.prune(base, out, UNEVEN)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3" and "auto_map" in config
    assert (config["intermediate_size"], config["num_key_value_heads"], config["num_attention_heads"]) == (96, 2, 4)
    assert config["layer_intermediate_size"] == [93, 95, 96, 56]
    assert config["layer_num_key_value_heads"] == [2, 2, 1, 2]
    assert (
        "44 MLP channels (1 to 40 per layer) and 1 KV group (with their query heads) from 4 layers" in result.summary()
    )
    assert "MLP channels removed: 44 over 3 layers (1 to 40 per layer)" in cli("info", out).output
    tensors = qprune.open_checkpoint(out).tensors
    assert tensors["model.layers.3.mlp.down_proj.weight"].shape == (64, 56)  # nothing stored for what went
    assert tensors["model.layers.2.self_attn.k_proj.weight"].shape == (HEAD_DIM, 64)
    oracle, ids = width_oracle(base, UNEVEN), token_batch()
    model = qprune.load(out, dtype=torch.float32)
    assert model.model.layers[3].mlp.down_proj.weight.shape == (64, 56)  # nothing allocated either
    assert logit_delta(model, oracle, ids) <= 1e-5
    remote = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=True).eval()
    assert logit_delta(remote, oracle, ids) <= 1e-5
    assert logit_delta(Qwen3ForCausalLM.from_pretrained(base).float().eval(), oracle, ids) > 1e-3
    with torch.no_grad():
        cached = remote.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = remote.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    held = sum(p.numel() for p in model.parameters())
    assert held == result.params_after == parameter_count(Shape.from_config(config), Plan())
    for args in (("--base", base), ()):
        verified = cli("verify", out, *args, "-q")
        assert verified.exit_code == 0, verified.output
        assert "PASS  self" in verified.output and "PASS  cache" in verified.output
    assert "PASS  logits" in cli("verify", out, "--base", base, "-q").output


def test_export_refuses_uneven_widths_and_a_cut_that_evens_them_is_stock(base, tmp_path):
    qprune.prune(base, tmp_path / "cut", UNEVEN)
    refused = cli("export", tmp_path / "cut", tmp_path / "stock")
    assert_one_line_error(refused, "has 56 to 96 MLP channels in different layers; a stock Qwen3 has one width")
    assert not (tmp_path / "stock").exists()
    # Cut each layer down to 56 channels and one KV group: even again, so a stock Qwen3.
    sizes = json.loads((tmp_path / "cut" / "config.json").read_text())["layer_intermediate_size"]
    even = Plan(
        ffn={i: tuple(range(n - 56)) for i, n in enumerate(sizes) if n > 56},
        kv_heads={i: (1,) for i in (0, 1, 3)},
    )
    qprune.prune(tmp_path / "cut", tmp_path / "even", even)
    config = json.loads((tmp_path / "even" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and "layer_intermediate_size" not in config
    assert (config["intermediate_size"], config["num_key_value_heads"]) == (56, 1)
    record = config["qprune_pruned_width"]
    twice = Plan(
        ffn={int(k): tuple(v) for k, v in record["ffn"].items()},
        kv_heads={int(k): tuple(v) for k, v in record["kv_heads"].items()},
    )
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "even", dtype=torch.float32).eval()
    assert logit_delta(stock, width_oracle(base, twice), token_batch()) <= 1e-5
    assert cli("verify", tmp_path / "even", "--base", base, "-q").exit_code == 0


def test_uneven_widths_with_blocks_verify_stream_and_are_taught_by_the_base(base, tmp_path):
    """Blocks pruned too (layer 0's attention): both oracles, the layer-by-layer engine, and the base
    accepted as teacher (another model refused)."""
    from conftest import oracle as block_oracle

    from qprune.healing.distill import check_teacher
    from qprune.measure.ablation import BlockRunner
    from qprune.measure.layerwise import LayerwiseRunner
    from qprune.runtime.streamed import StreamedModel

    blocks = Plan(attn=(0,), mlp=(2,))
    plan = Plan(attn=(0,), mlp=(2,), ffn={0: (1, 2), 3: tuple(range(30))}, kv_heads={1: (1,)})
    qprune.prune(base, tmp_path / "mixed", plan)
    expected = block_oracle(base, blocks)
    zero_width(expected, plan)
    model, ids = qprune.load(tmp_path / "mixed", dtype=torch.float32), token_batch()
    assert logit_delta(model, expected, ids) <= 1e-5
    for args in (("--base", base), ()):
        verified = cli("verify", tmp_path / "mixed", *args, "-q")
        assert verified.exit_code == 0, verified.output
    batch = token_batch(batch=4, length=16)
    streamed = StreamedModel.open(tmp_path / "mixed", torch.float32)
    with BlockRunner(model, batch, kl=True) as memory, LayerwiseRunner(streamed, batch, kl=True) as layered:
        assert layered.dense_stats == memory.dense_stats
        candidates = memory.candidates()
        assert layered.evaluate(candidates) == memory.evaluate(candidates)
    student = qprune.open_checkpoint(tmp_path / "mixed")
    check_teacher(student, qprune.open_checkpoint(base), "base")  # no error: the model it was cut from
    Qwen3ForCausalLM(tiny_config(LAYERS, intermediate_size=80)).save_pretrained(tmp_path / "narrow")
    with pytest.raises(qprune.QpruneError, match="intermediate_size 80"):
        check_teacher(student, qprune.open_checkpoint(tmp_path / "narrow"), "narrow")


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"layer_intermediate_size": [93, 95]},
            "layer_intermediate_size must be a list of one positive integer per layer",
        ),
        ({"layer_intermediate_size": [93, 95, 97, 56]}, "none above intermediate_size"),
        ({"layer_num_key_value_heads": [2, 2, 0, 2]}, "layer_num_key_value_heads must be"),
    ],
)
def test_bad_per_layer_widths_in_a_config_are_one_line_errors(base, tmp_path, fields, message):
    qprune.prune(base, tmp_path / "cut", UNEVEN)
    path = tmp_path / "cut" / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))
    assert_one_line_error(cli("info", tmp_path / "cut"), message)
