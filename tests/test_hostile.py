"""Hostile input and faults: every case ends in one `error: ...` line (exit 2) or a correct output,
the source is unchanged (hashed), and nothing is left behind.

Classes: the source is never touched (data loss with --force); damaged sources (safetensors headers,
shard index, config.json, stored plan, incomplete tensors, integer weights, tensors of pruned blocks);
output faults (read-only filesystem, full disk, mount points, symlinks; the filesystem ones need root
to mount a small tmpfs); signals and kills during a write; concurrent runs; files that do not belong
in a model; oversized ranges. More on checkpoints read and written: tests/test_hostile_checkpoints.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, cli, edit_config, edit_header, edit_json, leftovers, run_driver, snapshot

import qprune
from qprune.errors import QpruneError
from qprune.io.safetensors import read_checkpoint
from qprune.plan import Plan

INDEX = "model.safetensors.index.json"


@pytest.fixture
def src(tmp_path, untied_base) -> Path:
    """A private copy of the tiny multi-shard Qwen3, safe to damage."""
    return Path(shutil.copytree(untied_base, tmp_path / "src"))


@pytest.fixture(scope="module")
def pruned_src(tmp_path_factory, untied_base) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "pruned"
    qprune.prune(str(untied_base), out, Plan(attn=(1,), mlp=(2,)))
    return out


# -- the source is read-only to qprune -------------------------------------------------------------


def _out_is_parent(src: Path) -> Path:
    return src.parent


def _out_inside_src(src: Path) -> Path:
    return src / "pruned"


def _out_links_to_src(src: Path) -> Path:
    link = src.parent / "link-to-src"
    link.symlink_to(src, target_is_directory=True)
    return link


def _out_links_to_parent(src: Path) -> Path:
    (src.parent / "deep").mkdir()
    link = src.parent / "deep" / "link-to-parent"
    link.symlink_to(src.parent, target_is_directory=True)
    return link


SOURCE_OVERLAPS = {
    "OUT contains SRC": (_out_is_parent, "contains the source"),
    "OUT inside SRC": (_out_inside_src, "is inside the source"),
    "OUT is a symlink to SRC": (_out_links_to_src, "the output directory is the source"),
    "OUT is a symlink to SRC's parent": (_out_links_to_parent, "contains the source"),
}


@pytest.mark.parametrize("case", SOURCE_OVERLAPS)
@pytest.mark.parametrize("command", ["prune", "prune --auto", "scan"])
def test_force_never_touches_the_source(tmp_path, src, case, command):
    make_out, message = SOURCE_OVERLAPS[case]
    (tmp_path / "sibling.txt").write_text("the user's other files")
    out = make_out(src)
    before, before_parent = snapshot(src), snapshot(tmp_path)
    if command == "prune":
        result = cli("prune", src, out, "--attn", "1", "--force")
    elif command == "prune --auto":
        result = cli("prune", src, out, "--auto", "--blocks", "1", "--force")
    else:
        result = cli("scan", src, "--out", out, "--force")
    assert_one_line_error(result, message)
    assert snapshot(src) == before and snapshot(tmp_path) == before_parent


def test_force_never_deletes_shards_linked_from_elsewhere(tmp_path, untied_base):
    """The hub cache's layout: the snapshot directory holds symlinks to blobs in another directory."""
    blobs, snapshot_dir = tmp_path / "blobs", tmp_path / "snapshot"
    shutil.copytree(untied_base, blobs)
    snapshot_dir.mkdir()
    for file in blobs.iterdir():
        (snapshot_dir / file.name).symlink_to(file)
    before = snapshot(blobs)
    assert_one_line_error(cli("prune", snapshot_dir, blobs, "--attn", "1", "--force"), "contains the source")
    assert snapshot(blobs) == before


def test_library_refuses_the_same_with_one_exception_type(tmp_path, src):
    with pytest.raises(QpruneError, match="contains the source"):
        qprune.prune(str(src), tmp_path, Plan(attn=(1,)), force=True)
    with pytest.raises(QpruneError, match="max_shard_size must be positive"):
        qprune.prune(str(src), tmp_path / "out", Plan(attn=(1,)), max_shard_size=0)
    assert not (tmp_path / "out").exists()


# -- damaged sources -------------------------------------------------------------------------------


def _shards(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("model-*.safetensors"))


def _set_first(key, value_of):
    def edit(header):
        info = min((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
        info[key] = value_of(info)

    return lambda model_dir: edit_header(_shards(model_dir)[0], edit)


def _shift_later_tensors(model_dir: Path) -> None:
    def edit(header):
        infos = sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0])
        for info in infos[1:]:
            info["data_offsets"] = [o - 4 for o in info["data_offsets"]]

    edit_header(_shards(model_dir)[0], edit)


def _map_first(value):
    def edit(index):
        first = next(iter(index["weight_map"]))
        index["weight_map"][first] = value
        return index

    return edit_json(INDEX, edit)


def _duplicate_tensor(model_dir: Path) -> None:
    second = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    name_in_last = next(name for name, file in second.items() if file == _shards(model_dir)[-1].name)

    def edit(header):
        old = next(k for k in header if k != "__metadata__")
        header[name_in_last] = header.pop(old)

    edit_header(_shards(model_dir)[0], edit)


DAMAGED = {
    # safetensors headers
    "unknown dtype": (_set_first("dtype", lambda i: "Q4_K"), "unknown dtype 'Q4_K'"),
    "shape disagrees with the bytes": (
        _set_first("shape", lambda i: [d + 1 for d in i["shape"]]),
        "but its data_offsets",
    ),
    "float offsets": (
        _set_first("data_offsets", lambda i: [float(o) for o in i["data_offsets"]]),
        "invalid data_offsets",
    ),
    "reversed offsets": (_set_first("data_offsets", lambda i: i["data_offsets"][::-1]), "invalid data_offsets"),
    "shape of the wrong type": (_set_first("shape", lambda i: "64"), "invalid shape '64'"),
    "overlapping tensors": (_shift_later_tensors, "overlaps the tensor before it"),
    "header is a list": (lambda d: edit_header(_shards(d)[0], lambda h: [1, 2]), "not a JSON object"),
    "metadata is a list": (lambda d: edit_header(_shards(d)[0], lambda h: {**h, "__metadata__": []}), "__metadata__"),
    "tensor stored twice": (_duplicate_tensor, "is stored twice"),
    # the shard index
    "empty weight map": (
        edit_json("model.safetensors.index.json", lambda i: {**i, "weight_map": {}}),
        "lists no tensors",
    ),
    "index is a list": (edit_json("model.safetensors.index.json", lambda i: [i]), "no weight_map object"),
    "weight map is a list": (edit_json("model.safetensors.index.json", lambda i: {"weight_map": []}), "no weight_map"),
    "shard name null": (_map_first(None), "to None, which is not a file name"),
    "shard name a number": (_map_first(3), "to 3, which is not a file name"),
    "shard outside the model": (_map_first("../elsewhere/model.safetensors"), "which is not a file name in the model"),
    # config.json
    "config is a list": (edit_json("config.json", lambda c: [c]), "is not a JSON object"),
    "config is not JSON": (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
    "layers a string": (edit_config(num_hidden_layers="4"), "no valid num_hidden_layers"),
    "layers a boolean": (edit_config(num_hidden_layers=True), "no valid num_hidden_layers"),
    "layers zero": (edit_config(num_hidden_layers=0), "no valid num_hidden_layers"),
    "hidden size a string": (edit_config(hidden_size="64"), "hidden_size must be a positive integer"),
    "tie flag a string": (edit_config(tie_word_embeddings="yes"), "tie_word_embeddings must be true or false"),
    "model type a list": (edit_config(model_type=["qwen3"]), "model of unknown type"),
    "more layers than the weights": (edit_config(num_hidden_layers=6), "lacks the tensor model.layers.4."),
    "fewer layers than the weights": (
        edit_config(num_hidden_layers=3),
        "of layer 3, but its config.json says it has 3",
    ),
    "shapes disagree with the config": (edit_config(intermediate_size=97), "but config.json implies [97, 64]"),
    # a stored plan
    "plan unsorted": (edit_config(pruned_attn_layers=[3, 1]), "pruned_attn_layers must be a sorted list"),
    "plan out of range": (edit_config(pruned_mlp_layers=[9]), "pruned_mlp_layers must be a sorted list"),
    "plan a string": (edit_config(pruned_attn_layers="1"), "pruned_attn_layers must be a sorted list"),
    "plan repeats a layer": (edit_config(pruned_mlp_layers=[1, 1]), "distinct layer numbers in 0..3"),
    "plan holds booleans": (edit_config(pruned_mlp_layers=[True]), "pruned_mlp_layers must be a sorted list"),
    "plan null": (edit_config(pruned_attn_layers=None), "pruned_attn_layers must be a sorted list"),
    "plan an object": (edit_config(pruned_mlp_layers={"2": True}), "pruned_mlp_layers must be a sorted list"),
    "plan of floats": (edit_config(pruned_attn_layers=[1.0]), "pruned_attn_layers must be a sorted list"),
    "plan negative": (edit_config(pruned_mlp_layers=[-1]), "pruned_mlp_layers must be a sorted list"),
    "layer types of the wrong length": (
        edit_config(layer_types=["full_attention"] * 3),
        "layer_types must be a list of 4 strings",
    ),
    "norm epsilon a string": (edit_config(rms_norm_eps="1e-6"), "rms_norm_eps must be a positive number"),
    # the weights
    "weights stored as int32": (_set_first("dtype", lambda i: "I32"), "is stored as I32, not a floating-point dtype"),
    "tensors of blocks the plan prunes": (
        edit_config(pruned_attn_layers=[1]),
        "(and 6 more) of blocks its plan prunes (attention of layer 1)",
    ),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_source_is_refused_everywhere(tmp_path, src, case):
    damage, message = DAMAGED[case]
    damage(src)
    before = snapshot(src)
    assert_one_line_error(cli("prune", src, tmp_path / "out", "--attn", "0"), message)
    assert_one_line_error(cli("info", src), message)
    with pytest.raises(QpruneError, match=None) as error:
        qprune.load(src)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert snapshot(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def _drop_kept_tensor(model_dir: Path, name: str) -> None:
    from safetensors.torch import load_file, save_file

    shard = read_checkpoint(model_dir)[name].file
    index_path = model_dir / INDEX
    if index_path.exists():
        index = json.loads(index_path.read_text())
        del index["weight_map"][name]
        index_path.write_text(json.dumps(index))

    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})


def test_pruned_source_that_lost_a_kept_tensor(tmp_path, pruned_src):
    damaged = Path(shutil.copytree(pruned_src, tmp_path / "src"))
    _drop_kept_tensor(damaged, "model.layers.3.mlp.up_proj.weight")
    message = "lacks the tensor model.layers.3.mlp.up_proj.weight that its pruning plan keeps"
    assert_one_line_error(cli("prune", damaged, tmp_path / "out", "--attn", "0"), message)
    assert_one_line_error(cli("info", damaged), message)
    assert_one_line_error(cli("generate", damaged, "--prompt", "hi"), message)
    assert not (tmp_path / "out").exists()


def test_a_pruned_source_keeps_pruning(tmp_path, pruned_src):
    result = cli("prune", pruned_src, tmp_path / "out", "--mlp", "0")
    assert result.exit_code == 0, result.output
    assert json.loads(cli("info", tmp_path / "out", "--json").output)["mlp"] == [0, 2]


# -- output faults ---------------------------------------------------------------------------------


def test_read_only_filesystem(src, mount):
    read_only = mount("size=1m,ro")
    before = snapshot(src)
    assert_one_line_error(cli("prune", src, read_only / "out", "--attn", "1"), "Read-only file system")
    assert_one_line_error(cli("prune", src, read_only, "--attn", "1"), "Read-only file system")
    assert snapshot(src) == before


def test_full_disk_leaves_nothing(src, mount):
    small = mount("size=64k")
    assert_one_line_error(cli("prune", src, small / "out", "--attn", "1"), "No space left on device")
    assert list(small.iterdir()) == []


def test_mount_point_is_written_into_not_renamed(src, mount):
    volume = mount("size=4m")
    assert cli("prune", src, volume, "--attn", "1").exit_code == 0
    assert os.path.ismount(volume) and (volume / "config.json").exists() and not leftovers(volume)
    assert json.loads(cli("info", volume, "--json").output)["attn"] == [1]
    result = cli("prune", src, volume, "--mlp", "2", "--force")  # non-empty: --force replaces the contents
    assert result.exit_code == 0, result.output
    assert os.path.ismount(volume) and json.loads(cli("info", volume, "--json").output)["attn"] == []


def test_output_under_a_file(tmp_path, src):
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(cli("prune", src, tmp_path / "a-file" / "out", "--attn", "1"), "cannot write")


def test_symlinked_output_is_written_through(tmp_path, src):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    result = cli("prune", src, link, "--attn", "1")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads(cli("info", target, "--json").output)["attn"] == [1]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "not-yet")
    result = cli("prune", src, dangling, "--attn", "1")
    assert result.exit_code == 0, result.output
    assert dangling.is_symlink() and json.loads(cli("info", tmp_path / "not-yet", "--json").output)["attn"] == [1]
    assert not leftovers(tmp_path)


# -- signals, kills and concurrent runs --------------------------------------------------------------


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_during_write_cleans_up(tmp_path, src, signame):
    before = snapshot(src)
    done = run_driver(signame, "prune", src, tmp_path / "out", "--attn", "1")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    if signame != "SIGINT":  # click reports Ctrl-C as "Aborted!"
        assert done.returncode == 128 + getattr(signal, signame), done.stderr
        assert done.stderr.strip() == f"error: interrupted by {signame}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert snapshot(src) == before


def test_after_a_kill_the_next_run_cleans_up(tmp_path, src):
    out = tmp_path / "out"
    killed = run_driver("SIGKILL", "prune", src, out, "--attn", "1")
    assert killed.returncode == -signal.SIGKILL
    assert leftovers(out)  # what SIGKILL leaves: the dead run's partial directory inside OUT
    legacy = tmp_path / ".out.abc123.partial"  # and what qprune 0.1 left beside OUT
    legacy.mkdir()
    rerun = subprocess.run(
        [sys.executable, "-m", "qprune.cli", "prune", str(src), str(out), "--attn", "1"],
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 2 partial output(s) left by earlier interrupted runs" in rerun.stderr
    assert not leftovers(tmp_path) and (out / "config.json").exists()


def test_two_runs_to_one_output_do_not_both_succeed(tmp_path, src):
    out, flag = tmp_path / "out", tmp_path / "flag"
    first = run_driver(str(flag), "prune", src, out, "--attn", "1", wait=False)
    try:
        deadline = time.time() + 120
        while not flag.with_suffix(".started").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        assert_one_line_error(cli("prune", src, out, "--mlp", "2"), "another qprune run is writing")
        assert_one_line_error(cli("prune", src, out, "--mlp", "2", "--force"), "another qprune run is writing")
    finally:
        flag.with_suffix(".go").touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert json.loads(cli("info", out, "--json").output)["attn"] == [1]
    assert not leftovers(tmp_path)


def test_a_held_lock_is_reported(tmp_path, src):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert_one_line_error(cli("prune", src, out, "--attn", "1"), "another qprune run is writing")
    finally:
        os.close(fd)
    assert out.exists() and list(out.iterdir()) == []  # not ours: left as it was


# -- what the output holds, and numbers checked before use ---------------------------------------------


def test_only_model_files_are_copied(tmp_path, src):
    for name in ("model.pkl", "model.gguf", "activations.npy", "train.py", "pytorch_model.bin"):
        (src / name).write_bytes(b"not part of a model directory")
    (src / "LICENSE").write_text("licence text")
    result = cli("prune", src, tmp_path / "out", "--attn", "1")
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"LICENSE", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"} <= names
    assert not names & {"model.pkl", "model.gguf", "activations.npy", "train.py", "pytorch_model.bin"}
    left_out = "activations.npy, model.gguf, model.pkl, pytorch_model.bin, train.py"
    assert f"left out (not part of a model directory): {left_out}" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attn", "0-100000000000"], "--attn: layer 100000000000 is out of range"),
        (["--mlp", "99999999999999999999"], "--mlp: layer 99999999999999999999 is out of range"),
        (["--mlp", "2-9"], "--mlp: layer 4 is out of range: the model has 4 layers"),
        (["--mlp", "1", "--max-shard-size", "0"], "--max-shard-size: '0' is not a size"),
    ],
)
def test_numbers_are_checked_before_use(tmp_path, src, args, message):
    assert_one_line_error(cli("prune", src, tmp_path / "out", *args), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("case", ["unknown dtype", "shard name null", "config is a list", "plan unsorted"])
def test_verify_refuses_a_damaged_checkpoint(src, case):
    damage, message = DAMAGED[case]
    damage(src)
    assert_one_line_error(cli("verify", src), message)
