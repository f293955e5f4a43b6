"""Hostile checkpoints, read and written: every case ends in one `error: ...` line naming what is
wrong, or in a correct output.

Classes: tensors of pruned blocks copied back into a checkpoint; damaged plans and config fields;
weights of an integer dtype, and weights holding NaN/inf; a Qwen3-MoE missing an expert tensor, loaded
by transformers alone; messages that name arguments; replacing a non-empty OUT atomically for readers;
the shipped model's short name; sizes out of range.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    MOE_PLAN,
    REMOTE_CODE,
    assert_one_line_error,
    cli,
    edit_config,
    edit_header,
    leftovers,
    run_driver,
    save_tiny_moe,
    snapshot,
)
from safetensors.torch import load_file, save_file

import qprune
import qprune.io.output as output
from qprune.errors import QpruneError
from qprune.io.safetensors import SAFE_INDEX, read_checkpoint
from qprune.io.source import portable_name
from qprune.plan import Plan
from qprune.runtime.precision import nonfinite_weights, overflow_message
from qprune.runtime.streamed import StreamedModel
from qprune.shipped import EMBEDDED_MODEL

PLAN = Plan(attn=(1,), mlp=(2,))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, untied_base) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "pruned"
    qprune.prune(str(untied_base), out, PLAN)
    return out


@pytest.fixture
def pruned_copy(tmp_path, pruned) -> Path:
    return Path(shutil.copytree(pruned, tmp_path / "src"))


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> tuple[Path, Path]:
    base = save_tiny_moe(tmp_path_factory.mktemp("moe") / "base")
    qprune.prune(str(base), base.parent / "pruned", MOE_PLAN)
    return base, base.parent / "pruned"


def _add_tensors(model_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Store more tensors in a checkpoint, as a person copying them back would: into its single file,
    or as a new shard its index lists."""
    index = model_dir / SAFE_INDEX
    if index.exists():
        save_file(tensors, model_dir / "model-extra.safetensors", metadata={"format": "pt"})
        data = json.loads(index.read_text())
        data["weight_map"].update(dict.fromkeys(tensors, "model-extra.safetensors"))
        index.write_text(json.dumps(data))
        return
    single = model_dir / "model.safetensors"
    save_file(load_file(single) | tensors, single, metadata={"format": "pt"})


def _copy_back(model_dir: Path, base: Path, names: list[str]) -> None:
    stored = read_checkpoint(base)
    _add_tensors(model_dir, {name: load_file(stored[name].file)[name] for name in names})


def _edit_tensor(model_dir: Path, name: str, edit) -> None:
    entry = read_checkpoint(model_dir)[name]
    tensors = load_file(entry.file)
    tensors[name] = edit(tensors[name].clone())
    save_file(tensors, entry.file, metadata={"format": "pt"})


def _run_remote_code(path: Path) -> subprocess.CompletedProcess:
    ids = [[3, 4, 5, 6]]
    command = [sys.executable, "-c", REMOTE_CODE, str(path), json.dumps(ids)]
    return subprocess.run(command, capture_output=True, text=True, cwd=path.parent, timeout=300)


def _refused_everywhere(tmp_path: Path, damaged: Path, message: str) -> None:
    """export, info, verify, prune further, and the library's load all refuse with `message`."""
    before = snapshot(damaged)
    assert_one_line_error(cli("export", damaged, tmp_path / "stock"), message)
    assert_one_line_error(cli("info", damaged), message)
    assert_one_line_error(cli("verify", damaged), message)
    assert_one_line_error(cli("prune", damaged, tmp_path / "more", "--attn", "0"), message)
    with pytest.raises(QpruneError) as error:
        qprune.load(damaged)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert snapshot(damaged) == before
    assert not (tmp_path / "stock").exists() and not (tmp_path / "more").exists()


# -- 1. tensors of pruned blocks copied back -------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["model.layers.1.self_attn.o_proj.weight"],
            "holds model.layers.1.self_attn.o_proj.weight of blocks its plan prunes (attention of layer 1)",
        ),
        (
            [
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.2.mlp.up_proj.weight",
                "model.layers.1.input_layernorm.weight",
            ],
            "(and 2 more) of blocks its plan prunes (attention of layer 1; MLP of layer 2)",
        ),
    ],
    ids=["attention", "MLP and attention"],
)
def test_pruned_block_tensors_copied_back_are_refused_everywhere(tmp_path, pruned_copy, untied_base, names, message):
    _copy_back(pruned_copy, untied_base, names)
    _refused_everywhere(tmp_path, pruned_copy, message)
    with pytest.raises(QpruneError, match=re.escape(message)):  # what scan and search measure layer by layer
        StreamedModel.open(pruned_copy, torch.float32)


@pytest.mark.slow
def test_pruned_block_tensors_copied_back_are_refused_by_the_remote_code(pruned_copy, untied_base):
    _copy_back(pruned_copy, untied_base, ["model.layers.2.mlp.down_proj.weight"])
    done = _run_remote_code(pruned_copy)
    assert done.returncode != 0
    assert "PrunedTensorsPresentError" in done.stderr, done.stderr
    assert "holds model.layers.2.mlp.down_proj.weight of blocks its plan prunes (MLP of layer 2)" in done.stderr


@pytest.mark.slow
def test_a_moe_expert_tensor_copied_back_is_refused_everywhere(tmp_path, moe):
    base, pruned = moe
    damaged = Path(shutil.copytree(pruned, tmp_path / "src"))
    _copy_back(damaged, base, ["model.layers.1.mlp.experts.3.down_proj.weight"])
    _refused_everywhere(
        tmp_path,
        damaged,
        "holds model.layers.1.mlp.experts.3.down_proj.weight of blocks its plan prunes (MLP of layer 1)",
    )
    done = _run_remote_code(damaged)  # transformers 5.x would otherwise try to fuse it with nothing
    assert done.returncode != 0 and "model.layers.1.mlp.experts.3.down_proj.weight" in done.stderr, done.stderr


# -- 2. damaged plans and config fields ------------------------------------------------------------

PLAN_DAMAGE = {
    "plan null": ({"pruned_attn_layers": None}, "pruned_attn_layers must be a sorted list"),
    "plan a string": ({"pruned_mlp_layers": "2"}, "pruned_mlp_layers must be a sorted list"),
    "plan a dict": ({"pruned_attn_layers": {"1": True}}, "pruned_attn_layers must be a sorted list"),
    "plan of floats": ({"pruned_attn_layers": [1.0]}, "pruned_attn_layers must be a sorted list"),
    "plan of booleans": ({"pruned_mlp_layers": [False]}, "pruned_mlp_layers must be a sorted list"),
    "plan negative": ({"pruned_mlp_layers": [-1, 2]}, "pruned_mlp_layers must be a sorted list"),
    "plan out of range": ({"pruned_attn_layers": [1, 4]}, "distinct layer numbers in 0..3, not [1, 4]"),
    "plan unsorted": ({"pruned_mlp_layers": [2, 0]}, "pruned_mlp_layers must be a sorted list"),
    "plan a number": ({"pruned_mlp_layers": 2}, "pruned_mlp_layers must be a sorted list"),
    "layers a float": ({"num_hidden_layers": 4.0}, "no valid num_hidden_layers"),
    "layers negative": ({"num_hidden_layers": -4}, "no valid num_hidden_layers"),
    "heads null": ({"num_attention_heads": None}, "num_attention_heads must be a positive integer"),
    "eps a string": ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a positive number"),
    "eps NaN": ({"rms_norm_eps": math.nan}, "rms_norm_eps must be a positive number"),
    "rope theta negative": ({"rope_theta": -1}, "rope_theta must be a positive number"),
    "layer types too short": ({"layer_types": ["full_attention"]}, "layer_types must be a list of 4 strings"),
    "max window layers a string": ({"max_window_layers": "4"}, "max_window_layers must be a non-negative integer"),
    "quantization config a list": ({"quantization_config": []}, "quantization_config must be an object"),
    "base model a number": ({"qprune_base_model": 3}, "qprune_base_model must be a string"),
    "sliding flag a string": ({"use_sliding_window": "no"}, "use_sliding_window must be true or false"),
}


@pytest.mark.parametrize("case", PLAN_DAMAGE)
def test_a_damaged_config_of_a_pruned_checkpoint_is_refused_by_every_command(tmp_path, pruned_copy, case):
    fields, message = PLAN_DAMAGE[case]
    edit_config(**fields)(pruned_copy)
    _refused_everywhere(tmp_path, pruned_copy, message)
    assert_one_line_error(cli("generate", pruned_copy, "--prompt", "hi"), message)


@pytest.mark.parametrize(
    "value", [None, "1", {"1": 1}, [1.5], [True], [-1], [9], [2, 1], [1, 1], 3, 1.0, [[1]], [None], ["1"]]
)
def test_plan_from_config_never_crashes(value):
    for field in ("pruned_attn_layers", "pruned_mlp_layers"):
        with pytest.raises(QpruneError, match=f"{field} must be a sorted list"):
            Plan.from_config({"num_hidden_layers": 4, field: value})
    assert Plan.from_config({"num_hidden_layers": 4, "pruned_mlp_layers": [0, 3]}) == Plan(mlp=(0, 3))
    assert Plan.from_config({"num_hidden_layers": 4}) == Plan()


def test_moe_fields_are_checked(tmp_path, moe):
    _, pruned = moe
    for fields, message in [
        ({"mlp_only_layers": "2"}, "mlp_only_layers must be a list of layer numbers"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok is 9, more than the 4 experts"),
        ({"decoder_sparse_step": 0}, "decoder_sparse_step must be a positive integer"),
    ]:
        damaged = Path(shutil.copytree(pruned, tmp_path / "src", dirs_exist_ok=True))
        edit_config(**fields)(damaged)
        assert_one_line_error(cli("info", damaged), message)
        assert_one_line_error(cli("export", damaged, tmp_path / "stock"), message)
        shutil.rmtree(damaged)
    damaged = Path(shutil.copytree(pruned, tmp_path / "src"))
    edit_config(mlp_only_layers=None)(damaged)  # stock semantics: null is none (its one dense layer is pruned anyway)
    result = cli("info", damaged, "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert (facts["attn"], facts["mlp"]) == (list(MOE_PLAN.attn), list(MOE_PLAN.mlp))
    assert facts["parameters"] == sum(t.numel for t in read_checkpoint(damaged).values())


# -- 3. weights of an integer dtype, and weights holding NaN/inf -------------------------------------


@pytest.mark.parametrize("dtype", ["I32", "U32"])
def test_float_weights_stored_as_integers_are_refused(tmp_path, pruned_copy, dtype):
    name = "model.layers.3.mlp.down_proj.weight"
    entry = read_checkpoint(pruned_copy)[name]
    assert entry.dtype == "F32"
    edit_header(entry.file, lambda header: header[name].update(dtype=dtype))  # same size: only the header lies
    _refused_everywhere(tmp_path, pruned_copy, f"{name} is stored as {dtype}, not a floating-point dtype")


def test_pre_quantized_checkpoints_are_exempt_from_the_dtype_check(tmp_path, pruned_copy):
    name = "model.layers.3.mlp.down_proj.weight"
    edit_header(read_checkpoint(pruned_copy)[name].file, lambda header: header[name].update(dtype="I32"))
    edit_config(quantization_config={"quant_method": "bitsandbytes", "load_in_8bit": True})(pruned_copy)
    result = cli("info", pruned_copy, "--json")
    assert result.exit_code == 0, result.output
    assert "I32" in json.loads(result.output)["dtypes"]


def test_weights_holding_nan_are_named_and_no_dtype_is_advised(pruned_copy):
    name = "model.layers.3.mlp.down_proj.weight"
    _edit_tensor(pruned_copy, name, lambda t: t.index_fill_(0, torch.tensor([0]), math.nan))
    model = qprune.load(pruned_copy, dtype=torch.float32)
    assert nonfinite_weights(model) == [name]
    message = overflow_message(model)
    assert f"the checkpoint's weights themselves hold NaN or inf ({name})" in message
    assert "try float32" not in message and "check_overflow" not in message
    result = cli("verify", pruned_copy)
    assert (
        result.exit_code == 1
        and "FAIL  logits     the model's logits hold inf or NaN: the checkpoint's" in result.output
    )
    assert name in result.output and "{" not in result.output


def test_overflow_advice_fits_the_dtype(pruned):
    finite32 = qprune.load(pruned, dtype=torch.float32)
    assert nonfinite_weights(finite32) == []
    message = overflow_message(finite32)
    assert "in float32, although its weights are finite" in message and "try float32" not in message
    assert "try float32" in overflow_message(qprune.load(pruned, dtype=torch.bfloat16))
    error = QpruneError(overflow_message(finite32))
    assert "--check-overflow names" in error.for_cli() and "check_overflow names" in str(error)


def test_weights_beyond_float16_are_named_with_float16_advice(pruned_copy):
    name = "model.layers.3.mlp.down_proj.weight"
    _edit_tensor(pruned_copy, name, lambda t: t * 1e7)  # finite on disk, inf once cast to float16
    with pytest.warns(UserWarning, match="float16"):
        hot = qprune.load(pruned_copy, dtype=torch.float16)
    error = QpruneError(overflow_message(hot))
    assert f"{name} holds NaN or inf in float16; load it in bfloat16 (--dtype=bfloat16)" in error.for_cli()
    assert "themselves" not in str(error) and "(dtype=bfloat16)" in str(error)


def test_a_nan_expert_is_named_as_the_checkpoint_names_it(tmp_path, moe):
    _, pruned = moe
    damaged = Path(shutil.copytree(pruned, tmp_path / "src"))
    name = "model.layers.3.mlp.experts.2.up_proj.weight"
    _edit_tensor(damaged, name, lambda t: t.fill_(math.inf))
    assert nonfinite_weights(qprune.load(damaged, dtype=torch.float32)) == [name]  # fused in 5.x, per expert in 4.x


# -- 4. a Qwen3-MoE missing an expert tensor, loaded by transformers alone ---------------------------


@pytest.mark.parametrize(
    "name", ["model.layers.3.mlp.experts.2.up_proj.weight", "model.layers.0.mlp.experts.1.down_proj.weight"]
)
@pytest.mark.slow
def test_remote_code_names_a_missing_expert_tensor(tmp_path, moe, name):
    _, pruned = moe
    damaged = Path(shutil.copytree(pruned, tmp_path / "src"))
    entry = read_checkpoint(damaged)[name]
    tensors = load_file(entry.file)
    del tensors[name]
    save_file(tensors, entry.file, metadata={"format": "pt"})
    if (damaged / SAFE_INDEX).exists():
        index = json.loads((damaged / SAFE_INDEX).read_text())
        del index["weight_map"][name]
        (damaged / SAFE_INDEX).write_text(json.dumps(index))
    done = _run_remote_code(damaged)
    assert done.returncode != 0
    assert f"MissingTensorsError: the checkpoint lacks 1 tensors that the pruning plan keeps: {name}" in done.stderr, (
        done.stderr[-3000:]
    )


# -- 5. messages name arguments by the convention ----------------------------------------------------


def test_a_non_empty_output_names_force_for_each_audience(tmp_path, untied_base):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(
        cli("prune", untied_base, out, "--attn", "1"), "exists and is not empty; use --force to replace it"
    )
    assert_one_line_error(cli("export", untied_base, out), "exists and is not empty; use --force to replace it")
    with pytest.raises(QpruneError, match=r"exists and is not empty; use force to replace it$"):
        qprune.prune(str(untied_base), out, Plan(attn=(1,)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(QpruneError, match=r"exists and is a file; use force to replace it$"):
        qprune.prune(str(untied_base), tmp_path / "file", Plan(attn=(1,)))
    with pytest.raises(QpruneError, match=r"^max_shard_size must be positive"):
        qprune.export(str(untied_base), tmp_path / "stock", max_shard_size=0)
    assert (out / "keep.txt").read_text() == "mine"


# -- 6. replacing a non-empty OUT is atomic for readers ---------------------------------------------


def _plan_of(out: Path) -> list[int]:
    return json.loads((out / "config.json").read_text())["pruned_attn_layers"]


@pytest.mark.parametrize("exchange", ["renameat2", "rename aside"])
def test_force_swaps_the_whole_output_in_one_step(tmp_path, untied_base, monkeypatch, exchange):
    out = tmp_path / "out"
    assert cli("prune", untied_base, out, "--attn", "1").exit_code == 0
    os.chmod(out, 0o750)
    old, old_inode = snapshot(out), os.stat(out).st_ino
    seen = {}
    swap = output._swap_into_place

    def watched(real, new):
        # Just before the swap OUT is still exactly the old run's, and the new directory is complete.
        seen["before"], seen["new"] = snapshot(real), snapshot(new)
        swap(real, new)
        seen["after"] = snapshot(real)

    monkeypatch.setattr(output, "_swap_into_place", watched)
    if exchange == "rename aside":
        monkeypatch.setattr(output, "_renameat2", lambda: None)
    result = cli("prune", untied_base, out, "--attn", "2", "--force")
    assert result.exit_code == 0, result.output
    assert seen["before"] == old and seen["after"] == seen["new"] == snapshot(out) != old
    assert _plan_of(out) == [2] and os.stat(out).st_ino != old_inode
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o750)  # the old OUT's permissions carried over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not leftovers(tmp_path)


def test_force_onto_a_symlinked_output_replaces_the_target(tmp_path, untied_base):
    target, link = tmp_path / "target", tmp_path / "link"
    assert cli("prune", untied_base, target, "--attn", "1").exit_code == 0
    link.symlink_to(target, target_is_directory=True)
    assert cli("prune", untied_base, link, "--attn", "3", "--force").exit_code == 0
    assert link.is_symlink() and _plan_of(target) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_an_interrupted_replacement_leaves_the_old_output(tmp_path, src_copy):
    out = tmp_path / "out"
    assert cli("prune", src_copy, out, "--attn", "1").exit_code == 0
    old = snapshot(out)
    done = run_driver("SIGTERM", "prune", src_copy, out, "--attn", "2", "--force")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert snapshot(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_a_killed_replacement_is_cleaned_up_by_the_next_run_only_for_its_output(tmp_path, src_copy):
    out = tmp_path / "out"
    assert cli("prune", src_copy, out, "--attn", "1").exit_code == 0
    other = tmp_path / ".out.x.qprune-abc123.partial"  # another OUT's ("out.x") replacement in progress
    other.mkdir()
    killed = run_driver("SIGKILL", "prune", src_copy, out, "--attn", "2", "--force")
    assert killed.returncode == -signal.SIGKILL
    assert _plan_of(out) == [1] and len(list(tmp_path.glob(".out.qprune-*.partial"))) == 1
    rerun = subprocess.run(
        [sys.executable, "-m", "qprune.cli", "prune", str(src_copy), str(out), "--attn", "3", "--force"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 partial output(s)" in rerun.stderr
    assert _plan_of(out) == [3] and not list(tmp_path.glob(".out.qprune-*")) and other.is_dir()


@pytest.fixture
def src_copy(tmp_path, untied_base) -> Path:
    return Path(shutil.copytree(untied_base, tmp_path / "src"))


# -- 7. the shipped model's short name ----------------------------------------------------------------


def test_the_shipped_model_has_a_short_name(tmp_path):
    result = cli("info", "qprune:qwen3-pydocs", "--json")
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.output)["path"]).resolve() == EMBEDDED_MODEL.resolve()
    result = cli("prune", "qprune:qwen3-pydocs", tmp_path / "out", "--attn", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["qprune_base_model"] == "qprune:qwen3-pydocs"
    assert json.loads(cli("info", tmp_path / "out", "--json").output)["base_model"] == "qprune:qwen3-pydocs"
    assert portable_name(str(EMBEDDED_MODEL)) == portable_name("qprune:qwen3-pydocs") == "qprune:qwen3-pydocs"
    assert qprune.load("qprune:qwen3-pydocs").config.num_hidden_layers == 6


def test_an_unknown_short_name_lists_the_shipped_ones(tmp_path):
    message = "qprune:qwen3-nope is not a model qprune ships; it ships: qprune:qwen3-pydocs"
    assert_one_line_error(cli("info", "qprune:qwen3-nope"), message)
    assert_one_line_error(cli("prune", "qprune:qwen3-nope", tmp_path / "out", "--attn", "1"), message)
    assert not (tmp_path / "out").exists()


# -- 8. sizes out of range --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("1e400GB", "'1e400GB' is not a size"),
        ("inf", "'inf' is not a size"),
        ("nan", "'nan' is not a size"),
        ("-5GB", "'-5GB' is not a size"),
        ("0.1", "'0.1' is not a size"),
        ("9" * 400, "is out of range (more than 1 PB)"),
        ("9" * 400 + "GB", "is out of range (more than 1 PB)"),
        ("1000001GB", "'1000001GB' is out of range (more than 1 PB)"),
    ],
)
def test_sizes_must_be_finite_positive_and_in_range(tmp_path, untied_base, size, message):
    assert_one_line_error(cli("prune", untied_base, tmp_path / "out", "--attn", "1", "--max-shard-size", size), message)
    assert_one_line_error(cli("scan", untied_base, "--out", tmp_path / "scan", "--max-memory", size), message)
    assert not (tmp_path / "out").exists() and not (tmp_path / "scan").exists()
