"""`prune --patch`: for each run of pruned blocks, a least-squares correction folded into the output
projection of the kept block before it. The fold is exact algebra: the patched checkpoint computes the
unpatched pruned model with each fitted map added to its block's output; it holds exactly the same
tensors; the fit lowers the calibration error it was fitted on; a run at the very start is reported
unpatched; layer by layer fits the same; Qwen3-MoE blocks take a map of their output; verify, export
and heal take the result; bad settings are one-line errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import assert_one_line_error, cli, logit_delta, save_tiny_moe, tiny_config, token_batch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

import qprune
from qprune.measure.data import DataSpec
from qprune.measure.patch import PatchSettings, fit_patches, pruned_runs
from qprune.ops.patch import patch
from qprune.plan import Plan

LAYERS = 4
# Layer 0's attention (nothing kept before it: left unpatched), layer 1's MLP (patched into layer 1's
# attention), and layer 2's MLP with layer 3's attention (one run, patched into layer 2's attention).
PLAN = Plan(attn=(0, 3), mlp=(1, 2))
DATA = DataSpec(samples=6, seq_len=32)


def text_model(path, tied: bool = False, **overrides):
    from conftest import with_embedded_tokenizer

    torch.manual_seed(0)
    config = tiny_config(LAYERS, tied, **overrides)
    config.vocab_size = 4096  # the embedded tokenizer's
    Qwen3ForCausalLM(config).save_pretrained(path)
    return with_embedded_tokenizer(path)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def base(request, tmp_path_factory):
    return text_model(tmp_path_factory.mktemp("patch") / "base", tied=request.param)


def with_maps(model, fits):
    """The unpatched pruned model with each fit's map added to its block's output, by hooks: what the
    patched checkpoint must compute."""
    handles = []
    for fit in fits:
        layer, kind = fit.block
        block = model.model.layers[layer]
        if fit.form == "full":
            projection = block.self_attn.o_proj if kind == "attn" else block.mlp.down_proj

            def add(module, args, out, d=fit.matrix):
                return out + args[0] @ d.T

            handles.append(projection.register_forward_hook(add))
        else:
            module = block.self_attn.o_proj if kind == "attn" else block.mlp

            def add_output(module, args, out, a=fit.matrix, form=fit.form):
                y = out[0] if isinstance(out, tuple) else out
                y = y + (y * a if form == "diagonal" else y @ a.T)
                return (y, *out[1:]) if isinstance(out, tuple) else y

            handles.append(module.register_forward_hook(add_output))
    return handles


@pytest.mark.parametrize("form", ["full", "output", "diagonal"])
def test_the_fold_is_exact_algebra_and_the_tensors_are_the_same(base, tmp_path, form):
    result = patch(base, tmp_path / "patched", PLAN, PatchSettings(patch_map=form), data=DATA, dtype="float32")
    patches = result.patches
    assert [fit.block for fit in patches.fits] == [(1, "attn"), (2, "attn")]
    assert [fit.run for fit in patches.fits] == [((1, "mlp"),), ((2, "mlp"), (3, "attn"))]
    assert patches.unpatched == [((0, "attn"),)]
    assert all(fit.error_after < fit.error_before for fit in patches.fits)  # the fit improves what it fits
    qprune.prune(base, tmp_path / "plain", PLAN)
    patched, plain = qprune.open_checkpoint(tmp_path / "patched"), qprune.open_checkpoint(tmp_path / "plain")
    assert {n: (e.dtype, e.shape) for n, e in patched.tensors.items()} == {
        n: (e.dtype, e.shape) for n, e in plain.tensors.items()
    }
    record = json.loads((tmp_path / "patched" / "config.json").read_text())["qprune_patch"]
    assert record["map"] == form and record["tokens"] == 6 * 32 and record["unpatched"] == [[[0, "attn"]]]
    assert [p["block"] for p in record["patched"]] == [[1, "attn"], [2, "attn"]]
    model = qprune.load(tmp_path / "patched", dtype=torch.float32)
    expected = qprune.load(tmp_path / "plain", dtype=torch.float32)
    ids = token_batch(length=16)
    assert logit_delta(model, expected, ids) > 1e-4  # the patch changed something
    handles = with_maps(expected, patches.fits)
    try:
        assert logit_delta(model, expected, ids) <= 1e-4
    finally:
        for handle in handles:
            handle.remove()
    changed = {
        name
        for name in plain.tensors
        if not torch.equal(model.state_dict()[name], expected.state_dict()[name]) and name != "lm_head.weight"
    }
    assert changed == {"model.layers.1.self_attn.o_proj.weight", "model.layers.2.self_attn.o_proj.weight"}
    assert "patched 2 runs of pruned blocks" in result.summary() and "left unpatched" in result.summary()


def test_a_patched_checkpoint_verifies_exports_and_heals(base, tmp_path):
    patch(base, tmp_path / "patched", PLAN, data=DATA, dtype="float32")
    verified = cli("verify", tmp_path / "patched", "--base", base, "-q")
    assert verified.exit_code == 0, verified.output
    assert "patched: its weights differ from the base by design" in verified.output
    assert "PASS  self" in verified.output
    assert "## Patched" in (tmp_path / "patched" / "README.md").read_text()
    assert cli("export", tmp_path / "patched", tmp_path / "stock", "-q").exit_code == 0
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "stock", dtype=torch.float32).eval()
    model = qprune.load(tmp_path / "patched", dtype=torch.float32)
    assert logit_delta(stock, model, token_batch()) <= 1e-5
    args = ("--tokens", "256", "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "200", "-q")
    healed = cli("heal", tmp_path / "patched", tmp_path / "healed", "--base", base, *args)
    assert healed.exit_code == 0, healed.output


def test_layer_by_layer_fits_the_same(tmp_path):
    from qprune.measure.data import load_token_batches
    from qprune.runtime.load import load, load_tokenizer
    from qprune.runtime.streamed import StreamedModel

    base = text_model(tmp_path / "base", attention_bias=True)
    batch = load_token_batches(DATA, load_tokenizer(base))
    settings = PatchSettings(patch_target="local")
    whole = fit_patches(load(base, dtype=torch.float32), batch, PLAN, settings)
    layered = fit_patches(StreamedModel.open(base, torch.float32), batch, PLAN, settings)
    for a, b in zip(whole.fits, layered.fits, strict=True):
        assert a.block == b.block and torch.allclose(a.matrix, b.matrix, atol=1e-5)
    # an output map also maps the o_proj bias, which is part of the block's output
    patch(base, tmp_path / "out", PLAN, PatchSettings(patch_map="output"), data=DATA, dtype="float32")
    plain = qprune.prune(base, tmp_path / "plain", PLAN)
    fits = qprune.open_checkpoint(tmp_path / "out").config["qprune_patch"]["patched"]
    assert fits and plain
    model, expected = (
        qprune.load(tmp_path / "out", dtype=torch.float32),
        qprune.load(tmp_path / "plain", dtype=torch.float32),
    )
    refit = fit_patches(load(base, dtype=torch.float32), batch, PLAN, PatchSettings(patch_map="output"))
    handles = with_maps(expected, refit.fits)
    assert logit_delta(model, expected, token_batch(length=16)) <= 1e-4
    for handle in handles:
        handle.remove()


def test_a_qwen3_moe_block_takes_a_map_of_its_output(tmp_path):
    from conftest import with_embedded_tokenizer

    moe = save_tiny_moe(tmp_path / "moe", vocab=4096)
    with_embedded_tokenizer(moe)
    plan = Plan(attn=(2,), mlp=(3,))
    result = patch(moe, tmp_path / "patched", plan, data=DATA, dtype="float32")
    assert [(f.block, f.form) for f in result.patches.fits] == [((1, "mlp"), "output"), ((3, "attn"), "full")]
    qprune.prune(moe, tmp_path / "plain", plan)
    model, expected = (
        qprune.load(tmp_path / "patched", dtype=torch.float32),
        qprune.load(tmp_path / "plain", dtype=torch.float32),
    )
    handles = with_maps(expected, result.patches.fits)
    assert logit_delta(model, expected, token_batch(length=16)) <= 1e-4
    for handle in handles:
        handle.remove()
    changed = [
        n for n, e in qprune.open_checkpoint(tmp_path / "patched").tensors.items() if "layers.1.mlp.experts" in n
    ]
    assert changed  # every expert's down_proj carries the map


def test_runs_are_maximal_and_the_source_s_own_are_left_alone():
    order = [(i, k) for i in range(3) for k in ("attn", "mlp")]
    pruned = {(0, "attn"), (1, "attn"), (1, "mlp"), (2, "mlp")}
    assert pruned_runs(order, pruned, new={(1, "mlp"), (2, "mlp")}) == [
        ((0, "mlp"), ((1, "attn"), (1, "mlp"))),
        ((2, "attn"), ((2, "mlp"),)),
    ]  # layer 0's attention was pruned by the source: nothing to fit for it


def test_prune_patch_from_the_command_line(base, tmp_path):
    args = ("--samples", "4", "--seq-len", "32", "--dtype", "float32", "-q")
    result = cli("prune", base, tmp_path / "a", "--mlp", "1,2", "--patch", *args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["qprune_patch"]["tokens"] == 128
    auto = cli("prune", base, tmp_path / "b", "--auto", "--blocks", "2", "--patch", "--patch-map", "output", *args)
    assert auto.exit_code == 0, auto.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["qprune_patch"]["map"] == "output"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--mlp", "1", "--patch", "--patch-map", "cubic"), "--patch-map cubic: choose full or output or diagonal"),
        (("--mlp", "1", "--patch-ridge", "0.1"), "say how to patch: add --patch"),
        (("--mlp", "1", "--patch", "--patch-ridge", "-1"), "--patch-ridge must be a number >= 0"),
        (("--auto", "--ffn-ratio", "0.25", "--patch"), "--patch corrects for pruned blocks; experts and width"),
        (("--plan", "PLAN", "--patch"), "--patch corrects for pruned blocks; experts and width"),
    ],
)
def test_bad_patch_settings_are_one_line_errors(base, tmp_path, args, message):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"ffn": {"0": [1]}}))
    args = tuple(str(plan) if a == "PLAN" else a for a in args)
    result = cli("prune", base, tmp_path / "out", *args, "--samples", "2", "--seq-len", "32")
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


def test_a_full_map_on_too_few_tokens_is_warned_about(base):
    """A full map has as many unknowns per output as its input has features: with fewer than 16 tokens per
    feature it fits the text (the shipped model got worse than unpatched at 1.3), so qprune says so."""
    from qprune.errors import QpruneWarning
    from qprune.measure.data import load_token_batches
    from qprune.runtime.load import load, load_tokenizer

    model = load(base, dtype=torch.float32)
    few = load_token_batches(DataSpec(samples=6, seq_len=32), load_tokenizer(base))  # 192 tokens, o_proj has 64
    with pytest.warns(QpruneWarning, match="a full map of 64 features fitted on 192 tokens"):
        fit_patches(model, few, PLAN)
    enough = load_token_batches(DataSpec(samples=34, seq_len=32), load_tokenizer(base))  # 1,088 >= 16 x 64
    with warnings.catch_warnings():
        warnings.simplefilter("error", QpruneWarning)
        fit_patches(model, enough, PLAN)
        fit_patches(model, few, PLAN, PatchSettings(patch_map="output"))  # hidden-size maps: not warned
