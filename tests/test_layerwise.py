"""Layer-by-layer measurement (`--max-memory`): its results equal the in-memory engine's exactly, with
limits that force states to disk and candidates into several passes; the memory plan and its errors."""

import json
import shutil

import pytest
import torch
from conftest import cli, save_tiny_moe, save_tiny_qwen3, token_batch

from qprune import load
from qprune.errors import QpruneError
from qprune.measure.ablation import BlockRunner
from qprune.measure.data import DataSpec, load_for_measurement
from qprune.measure.layerwise import LayerwiseRunner
from qprune.measure.memory_plan import MemoryPlan
from qprune.measure.scan import scan_blocks
from qprune.measure.search import Target, greedy_search, oneshot_search
from qprune.measure.states import StateStore
from qprune.ops.prune import prune
from qprune.plan import Plan
from qprune.runtime.streamed import StreamedModel
from qprune.shipped import EMBEDDED_MODEL

BATCH = token_batch(batch=10, length=16)  # micro-batches of 8 and 2


def _plan(path, dtype=torch.float32) -> MemoryPlan:
    return MemoryPlan.of(load(path, dtype=dtype).config, dtype, samples=10, seq_len=16, kl=True, limit=None)


def _tight(path) -> int:
    """A limit above the engine's minimum that holds only some of the states: they spill, and candidates
    go in several passes."""
    plan = _plan(path)
    return plan.minimum + 3 * plan.state


@pytest.fixture(scope="module", params=["untied", "tied", "pruned", "moe", "bf16"])
def checkpoint(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "moe":
        return save_tiny_moe(root / "moe")
    if request.param == "pruned":  # blocks absent from the checkpoint stay out of reach
        base = save_tiny_qwen3(root / "base")
        prune(str(base), root / "pruned", Plan(attn=(0,), mlp=(2,)))
        return root / "pruned"
    dtype = torch.bfloat16 if request.param == "bf16" else torch.float32
    return save_tiny_qwen3(root / "base", tied=request.param == "tied", dtype=dtype)


@pytest.mark.parametrize("limited", [False, True], ids=["in-memory-states", "spilling"])
def test_layerwise_equals_the_in_memory_engine(checkpoint, limited):
    """Dense stats, every candidate (whole layers too) and three greedy removals: equal, not close."""
    model = load(checkpoint, dtype=torch.float32)
    streamed = StreamedModel.open(checkpoint, torch.float32)
    limit = _tight(checkpoint) if limited else None
    with (
        BlockRunner(model, BATCH, kl=True) as memory,
        LayerwiseRunner(streamed, BATCH, kl=True, max_memory=limit) as ours,
    ):
        assert ours.removed == memory.removed
        assert ours.dense_stats == memory.dense_stats
        for _ in range(3):
            candidates = memory.candidates()
            assert ours.candidates() == candidates
            units = candidates + [(layer, "layer") for layer in (1, 3)]
            expected = memory.evaluate(units)
            assert ours.evaluate(units) == expected
            best = min(candidates, key=lambda block: expected[block].kl)
            memory.remove(best)
            ours.remove(best)
        if limited:
            assert ours.spilled_bytes > 0
            assert ours.plan.streams(len(units)) < len(units)  # several passes per evaluation
    assert all(p.device.type == "meta" for p in streamed.skeleton.parameters())  # nothing left resident
    assert {(i, k) for i, k in ours.removed if k != "layer"} >= memory.removed


def test_scan_and_searches_are_the_same_layer_by_layer(tmp_path):
    base = save_tiny_qwen3(tmp_path / "base", num_layers=5)
    model = load(base, dtype=torch.float32)
    streamed = StreamedModel.open(base, torch.float32, max_memory=_tight(base))
    in_memory = scan_blocks(model, BATCH, whole_layers=True)
    layerwise = scan_blocks(streamed, BATCH, whole_layers=True)
    assert layerwise.scores == in_memory.scores and layerwise.dense == in_memory.dense
    for metric in ("nll", "kl"):
        ours, theirs = (
            greedy_search(streamed, BATCH, Target(blocks=3), metric),
            greedy_search(model, BATCH, Target(blocks=3), metric),
        )
        assert ours.plan == theirs.plan and ours.steps == theirs.steps
    ours, theirs = oneshot_search(streamed, BATCH, Target(blocks=2)), oneshot_search(model, BATCH, Target(blocks=2))
    assert ours.plan == theirs.plan and ours.steps == theirs.steps


def test_state_store_spills_beyond_its_budget_and_cleans_up():
    store = StateStore(budget=64 * 4)
    small, large = torch.randn(8, 8), torch.randn(4, 16).to(torch.bfloat16)
    store.put("small", small)  # 256 bytes: fits
    store.put("large", large)  # over the budget: a file
    assert store.resident_bytes == 256 and store.spilled_bytes == 128
    directory = store._dir
    assert torch.equal(store.get("large"), large) and store.get("large").dtype == torch.bfloat16
    assert torch.equal(store.pop("small"), small) and store.resident_bytes == 0
    store.close()
    assert not (directory and __import__("os").path.exists(directory))


def test_a_disk_that_cannot_take_the_states_is_one_error(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "mkdtemp", lambda prefix: str(tmp_path / "missing" / "dir"))
    store = StateStore(budget=0)
    with pytest.raises(QpruneError, match=r"cannot spill states to .*missing/dir .*TMPDIR.*max_memory"):
        store.put("x", torch.ones(4))
    store.close()


def test_a_limit_below_the_minimum_names_it(tmp_path):
    base = save_tiny_qwen3(tmp_path / "base")
    minimum = _plan(base).minimum
    assert 500_000 < minimum < 990_000
    shown = -(-minimum // 10**4) * 10  # KB, rounded up
    with pytest.raises(QpruneError, match=rf"max_memory 500.00 KB is less than the least .*: {shown:.2f} KB"):
        LayerwiseRunner(StreamedModel.open(base, torch.float32), BATCH, max_memory=500_000)


def _embedded_copy(tmp_path):
    path = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODEL, path)
    return path


SMALL = ["--samples", "8", "--seq-len", "256", "--dtype", "float32", "--quiet"]


@pytest.mark.slow
def test_scan_and_auto_prune_cli_with_max_memory(tmp_path):
    """The embedded model's in-memory need is about 96 MB on this data; 60 MB makes it stream and spill."""
    model = _embedded_copy(tmp_path)
    unlimited = cli("scan", str(model), "--json", *SMALL)
    assert unlimited.exit_code == 0, unlimited.output
    limited = cli("scan", str(model), "--json", "--max-memory", "60MB", *SMALL)
    assert limited.exit_code == 0, limited.output
    first, second = json.loads(unlimited.stdout), json.loads(limited.stdout)
    assert second["max_memory"] == 60 * 10**6 and "max_memory" not in first
    assert first["blocks"] == second["blocks"] and first["dense"] == second["dense"]

    plans = []
    for name, extra in (("a", []), ("b", ["--max-memory", "60MB"])):
        args = ["prune", str(model), str(tmp_path / name), "--auto", "--blocks", "2", *SMALL, *extra]
        done = cli(*args)
        assert done.exit_code == 0, done.output
        plans.append(json.loads((tmp_path / name / "qprune_search.json").read_text())["plan"])
    assert plans[0] == plans[1]


@pytest.mark.slow
def test_memory_plan_is_printed_and_a_model_that_fits_stays_in_memory(tmp_path):
    model = _embedded_copy(tmp_path)
    args = ["scan", str(model), "--samples", "4", "--seq-len", "64", "--dtype", "float32"]
    streamed = cli(*args, "--max-memory", "22MB")
    assert streamed.exit_code == 0, streamed.output
    assert "memory plan: 22.00 MB" in streamed.stderr and "on disk" in streamed.stderr
    fits = cli(*args, "--max-memory", "1GB")
    assert fits.exit_code == 0 and "fit in 1.00 GB: measuring in memory" in fits.stderr


def test_too_large_for_available_memory_goes_layer_by_layer(tmp_path, monkeypatch):
    import qprune.runtime.memory as memory

    model = _embedded_copy(tmp_path)
    monkeypatch.setattr(memory, "available_memory", lambda: 60 * 10**6)
    loaded, _ = load_for_measurement(str(model), DataSpec(samples=8, seq_len=256), "float32")
    assert isinstance(loaded, StreamedModel) and loaded.max_memory == 60 * 10**6
    monkeypatch.setattr(memory, "available_memory", lambda: 10**12)
    loaded, _ = load_for_measurement(str(model), DataSpec(samples=8, seq_len=256), "float32")
    assert not isinstance(loaded, StreamedModel)


@pytest.mark.parametrize(
    "args, message",
    [
        (["scan", "{model}", "--max-memory", "lots"], "--max-memory: 'lots' is not a size like 500MB or 5GB"),
        (["scan", "{model}", "--max-memory", "0"], "--max-memory: '0' is not a size"),
        (["scan", "{model}", "--max-memory", "1MB"], "--max-memory 1.00 MB is less than the least"),
        (["prune", "{model}", "{out}", "--attn", "1", "--max-memory", "1GB"], "--max-memory choose what to remove"),
    ],
)
def test_max_memory_bad_input(tmp_path, args, message):
    model = _embedded_copy(tmp_path)
    args = [a.format(model=model, out=tmp_path / "out") for a in args] + ["--quiet"]
    result = cli(*args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1  # one line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_eval_perplexity_layer_by_layer_is_the_same(tmp_path):
    model = _embedded_copy(tmp_path)
    args = ["eval", str(model), "--seq-len", "128", "--stride", "64", "--max-tokens", "700", "--dtype", "float32"]
    whole = cli(*args, "--json", "--quiet")
    layered = cli(*args, "--json", "--max-memory", "40MB")
    assert whole.exit_code == 0 and layered.exit_code == 0, layered.output
    assert "memory plan: 40.00 MB" in layered.stderr
    first, second = json.loads(whole.stdout), json.loads(layered.stdout)
    assert first["model"] == second["model"]  # perplexity and parameter bytes
    refused = cli(*args, "--max-memory", "40MB", "--check-overflow", "--quiet")
    assert refused.exit_code == 2 and "--check-overflow needs the whole model in memory" in refused.stderr
    refused = cli(*args, "--max-memory", "40MB", "--quantize", "int8", "--quiet")
    assert refused.exit_code == 2 and "--quantize loads the whole model" in refused.stderr
