"""Hostile input and faults for `qprune heal`, through the CLI: memory and time follow --tokens, not the
size of --data; the teacher cache records what made it and is rebuilt when anything differs (or it is
damaged), and is never written inside an input or OUT; the teacher must be the student's base (family,
every shape field, tokenizer); arguments are checked before any loading; OUT is claimed at the start;
SIGTERM leaves nothing behind; a pruned checkpoint finds its base, loads its tokenizer and names the
healed card after OUT. Every model here is tiny (4 layers of width 64, the shipped 4096-token
tokenizer), every budget a few hundred tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, cli, leftovers, run_driver, save_tiny_moe, snapshot, with_embedded_tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

import qprune
from qprune.errors import QpruneError, QpruneWarning
from qprune.healing.kd import CACHE_FILE
from qprune.measure.data import DataSpec, take_tokens, tokenize
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

TEXT_DIR = Path(qprune.__file__).parent / "assets" / "text"
SHAPE = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
# 4 steps of 2 sequences of 32 tokens; 64 held-out tokens
FAST = ["--tokens", "256", "--seq-len", "32", "--batch-size", "2", "--eval-tokens", "64", "--lr", "1e-3"]


def tiny_base(path: Path, *, seed: int = 0, **overrides) -> Path:
    """A random 4-layer Qwen3 with the shipped model's 4096-token tokenizer."""
    torch.manual_seed(seed)
    config = dict(SHAPE, vocab_size=4096, num_hidden_layers=4, max_position_embeddings=256, eos_token_id=0)
    Qwen3ForCausalLM(Qwen3Config(**(config | overrides))).save_pretrained(path)
    return with_embedded_tokenizer(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_base(tmp_path_factory.mktemp("heal-base") / "base")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, base) -> Path:
    out = tmp_path_factory.mktemp("heal-pruned") / "pruned"
    qprune.prune(str(base), out, Plan(attn=(1,), mlp=(2,)))
    return out


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """About 20,000 tokens of training text."""
    path = tmp_path_factory.mktemp("heal-text") / "train.txt"
    path.write_text((TEXT_DIR / "pydocs-calibration.txt").read_text()[:80_000])
    return path


def heal(pruned: Path, out: Path, *args, data: Path | None = None):
    return cli("heal", pruned, out, *(["--data", data] if data else []), *FAST, *args)


def heal_warning_lines(*args, **kwargs) -> tuple:
    """heal's result and its warnings as the CLI words them (with flags): the lines it printed, or, where
    a test runner records warnings instead, those recorded (each must be one line)."""
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        result = heal(*args, **kwargs)
    printed = [line.removeprefix("warning: ") for line in result.output.splitlines() if line.startswith("warning:")]
    caught = [w.message.for_cli() for w in recorded if isinstance(w.message, QpruneWarning)]
    assert all("\n" not in line for line in caught)
    return result, printed or caught


def read_report(out: Path) -> dict:
    return json.loads((out / "qprune_heal.json").read_text())


# -- 1. memory and time follow --tokens, never the size of --data ------------------------------------


@pytest.mark.slow
def test_heal_reads_only_what_the_budget_needs(tmp_path, pruned):
    """Data whose tail is broken (invalid JSON, invalid UTF-8) heals: the tail is never read. The
    teacher cache holds exactly the budget's sequences."""
    lines = [json.dumps({"text": line}) for line in (TEXT_DIR / "pydocs-calibration.txt").read_text().splitlines()]
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("\n".join(lines) + "\n{ this is not json\n")
    result = heal(pruned, tmp_path / "a", "--teacher-cache", tmp_path / "cache", "-q", data=jsonl)
    assert result.exit_code == 0, result.output
    report = read_report(tmp_path / "a")
    assert report["data"]["samples"] == 8 and report["tokens_trained"] == 256
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cache" / CACHE_FILE), "pt") as cache:
        assert cache.get_slice("ids").get_shape()[:2] == [8, 31]
    txt = tmp_path / "big.txt"
    txt.write_bytes((TEXT_DIR / "pydocs-calibration.txt").read_bytes() + b"\n\xff\xfe broken tail\n")
    assert heal(pruned, tmp_path / "b", "-q", data=txt).exit_code == 0
    assert_one_line_error(heal(pruned, tmp_path / "c", "--tokens", "200000", data=txt), "not UTF-8")


@pytest.mark.slow
def test_the_stream_is_what_tokenize_reads(tmp_path, pruned):
    from qprune.runtime.load import load_tokenizer

    tokenizer = load_tokenizer(pruned)
    spec = DataSpec(str(TEXT_DIR / "pydocs-heldout.txt"))
    whole = tokenize(spec, tokenizer)
    assert take_tokens(spec, tokenizer, 5000) == whole[:5000]
    assert take_tokens(spec, tokenizer, 10**9) == whole  # all of it, when it holds fewer
    one_line = tmp_path / "one-line.txt"  # 4 MB without a line break, then bytes that are not UTF-8
    one_line.write_bytes(b"word " * 800_000 + b"\xff\xfe")
    spec = DataSpec(str(one_line))
    assert take_tokens(spec, tokenizer, 100) == tokenizer("word " * 100, add_special_tokens=False)["input_ids"][:100]
    with pytest.raises(QpruneError, match="not UTF-8"):  # read to the end: the broken tail is met
        tokenize(spec, tokenizer)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    documents = ["first document\nof two lines\n", "   \n", "second"]
    pq.write_table(pa.table({"body": documents}), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in documents))
    for name in ("d.parquet", "d.jsonl"):
        spec = DataSpec(str(tmp_path / name), text_field="body")
        assert take_tokens(spec, tokenizer, 10**6) == tokenize(spec, tokenizer), name


def test_a_hub_dataset_is_streamed(pruned, monkeypatch):
    """A `datasets` id is opened with streaming=True and read only as far as needed."""
    datasets = pytest.importorskip("datasets")
    from qprune.runtime.load import load_tokenizer

    calls, read = [], []

    def records():
        for i in range(10**6):
            read.append(i)
            yield {"text": f"document {i}: def f(x): return x + {i}\n", "id": i}

    def load_dataset(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return records()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    tokens = take_tokens(DataSpec("someone/corpus:clean", split="train"), load_tokenizer(pruned), 100)
    assert len(tokens) == 100 and calls == [("someone/corpus", "clean", "train", True)]
    assert len(read) < 20  # a handful of documents, not the million


def test_same_seed_same_result(tmp_path, pruned, text):
    for out in ("one", "two"):
        assert heal(pruned, tmp_path / out, "--seed", "3", "-q", data=text).exit_code == 0
    weights = [(tmp_path / out / "model.safetensors").read_bytes() for out in ("one", "two")]
    assert weights[0] == weights[1]


def test_data_shorter_than_the_budget_is_one_line(tmp_path, pruned):
    """Shorter than one step: refused. Shorter than the budget: trained on several times over, with
    one warning line that says how many tokens there are against how many are needed."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("def f(x):\n    return x\n")
    result = heal(pruned, tmp_path / "out", data=tiny)
    assert_one_line_error(result, "fewer than one optimizer step of 64 (2 sequences of 32)")
    assert "holds " in result.output and "--data" in result.output and "--samples" not in result.output
    assert not (tmp_path / "out").exists()
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n" * 20)
    result, lines = heal_warning_lines(pruned, tmp_path / "out", "-q", data=short)
    assert result.exit_code == 0, result.output
    assert len(lines) == 1 and "fewer than the 256 that --tokens 256 needs" in lines[0], lines
    assert "--samples" not in lines[0] and "training on it" in lines[0]
    report = read_report(tmp_path / "out")
    assert report["data"]["samples"] < 8 and report["tokens_trained"] == 256


@pytest.mark.slow
def test_a_budget_below_one_step_rounds_up_with_a_warning(tmp_path, pruned, text):
    result, lines = heal_warning_lines(pruned, tmp_path / "out", "--tokens", "10", "-q", data=text)
    assert result.exit_code == 0, result.output
    assert len(lines) == 1 and "--tokens 10 is less than one optimizer step" in lines[0], lines
    assert "rounding up to one step of 64 tokens" in lines[0]
    command = ["heal", pruned, tmp_path / "again", "--data", text, *FAST, "--tokens", "10", "-q"]
    done = subprocess.run(  # as a user sees it: one line on stderr
        [sys.executable, "-m", "qprune.cli", *map(str, command)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "warning" in line.lower()] == ["warning: " + lines[0]]
    assert read_report(tmp_path / "out")["tokens_trained"] == 64


# -- 2. the teacher cache ----------------------------------------------------------------------------


@pytest.mark.slow
def test_teacher_cache_is_reused_only_for_what_made_it(tmp_path, pruned, base, text):
    cache = tmp_path / "cache"

    def run(out: str, *args, teacher: Path = base):
        result = heal(pruned, tmp_path / out, "--teacher-cache", cache, "--base", teacher, *args, data=text)
        assert result.exit_code == 0, result.output
        return result.output

    assert "teacher cache: computing" in run("first")
    assert "teacher cache: reusing" in run("again")
    assert "made for another top_k: rebuilding" in run("top-k", "--top-k", "8")
    assert "made for another seq_len: rebuilding" in run("seq-len", "--top-k", "8", "--seq-len", "16")
    assert "made for another seed: rebuilding" in run("seed", "--top-k", "8", "--seq-len", "16", "--seed", "1")
    other = tmp_path / "retrained"  # the same shapes and files, other weights
    shutil.copytree(base, other)
    tiny_base(tmp_path / "random", seed=1)
    shutil.copyfile(tmp_path / "random" / "model.safetensors", other / "model.safetensors")
    output = run("teacher", "--top-k", "8", "--seq-len", "16", "--seed", "1", teacher=other)
    assert "made for another teacher (config or weights): rebuilding" in output
    data = tmp_path / "other.txt"
    data.write_text(text.read_text()[1000:])
    output = heal(pruned, tmp_path / "data", "--teacher-cache", cache, "--base", other, "--top-k", "8",
                  "--seq-len", "16", "--seed", "1", data=data).output  # fmt: skip
    assert "made for another data: rebuilding" in output
    assert not leftovers(tmp_path) and sorted(p.name for p in cache.iterdir()) == [CACHE_FILE]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.slow
def test_a_damaged_cache_is_rebuilt(tmp_path, pruned, text, damage):
    cache = tmp_path / "cache"
    assert heal(pruned, tmp_path / "first", "--teacher-cache", cache, "-q", data=text).exit_code == 0
    path = cache / CACHE_FILE
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[: len(whole) // 2], "garbage": b"\x10\x00" * 50, "empty": b""}[damage])
    result = heal(pruned, tmp_path / "second", "--teacher-cache", cache, data=text)
    assert result.exit_code == 0, result.output
    assert "is damaged" in result.output and "rebuilding it" in result.output
    from safetensors import safe_open
    from safetensors.torch import load_file

    rebuilt = load_file(path)
    (tmp_path / "first.safetensors").write_bytes(whole)
    original = load_file(tmp_path / "first.safetensors")
    assert set(rebuilt) == set(original) and all(torch.equal(rebuilt[n], original[n]) for n in original)
    with safe_open(str(path), "pt") as new, safe_open(str(tmp_path / "first.safetensors"), "pt") as old:
        assert new.metadata() == old.metadata()  # rebuilt, the same as the first time


def _cache_paths(tmp_path: Path, pruned: Path, base: Path) -> dict:
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "out"
    return {
        "a regular file": (tmp_path / "a-file", "is a file"),
        "inside PRUNED": (pruned / "cache", "inside " + str(pruned)),
        "PRUNED itself": (pruned, "inside " + str(pruned)),
        "equal to OUT": (out, "inside the output directory"),
        "inside OUT": (out / "cache", "inside the output directory"),
        "inside the teacher": (base / "cache", "inside " + str(base)),
    }


def test_teacher_cache_paths_are_checked_before_any_loading(tmp_path, pruned, base, text, monkeypatch):
    import qprune.io.source

    def no_loading(*args, **kwargs):
        raise AssertionError("a checkpoint was opened before the paths were checked")

    before = snapshot(pruned), snapshot(base)
    monkeypatch.setattr(qprune.io.source, "open_checkpoint", no_loading)
    for case, (path, message) in _cache_paths(tmp_path, pruned, base).items():
        result = heal(pruned, tmp_path / "out", "--teacher-cache", path, "--base", base, data=text)
        assert_one_line_error(result, "--teacher-cache")
        assert message in result.output, (case, result.output)
        assert not (tmp_path / "out").exists(), case
    assert (snapshot(pruned), snapshot(base)) == before


def test_full_disk_for_the_cache_or_the_output_is_one_line(tmp_path, pruned, text, mount):
    small = mount("size=64k")
    result = heal(pruned, tmp_path / "out", "--teacher-cache", small, "-q", data=text)
    assert_one_line_error(result, "No space left on device")
    assert "--teacher-cache" in result.output
    assert list(small.iterdir()) == [] and not (tmp_path / "out").exists()
    full = mount("size=256k")
    result = heal(pruned, full / "out", "-q", data=text)
    assert_one_line_error(result, "No space left on device")
    assert list(full.iterdir()) == []


# -- 3. the teacher must be the student's base --------------------------------------------------------


def _other_tokenizer(path: Path, base: Path) -> Path:
    shutil.copytree(base, path)
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = list(vocab)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two tokens swap ids
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    return path


def test_a_teacher_of_another_model_is_refused(tmp_path, pruned, base, text):
    teachers = {
        "Qwen3-MoE": (
            with_embedded_tokenizer(save_tiny_moe(tmp_path / "moe", vocab=4096)),
            "is a Qwen3-MoE model, the pruned model a Qwen3",
        ),
        "kv heads": (tiny_base(tmp_path / "kv", num_key_value_heads=4), "num_key_value_heads 4, the pruned model 2"),
        "head_dim": (tiny_base(tmp_path / "hd", head_dim=32), "head_dim 32, the pruned model 16"),
        "tied": (tiny_base(tmp_path / "tied", tie_word_embeddings=True), "tie_word_embeddings True"),
        "tokenizer": (_other_tokenizer(tmp_path / "tok", base), "another tokenizer"),
    }
    for case, (teacher, message) in teachers.items():
        result = heal(pruned, tmp_path / "out", "--base", teacher, data=text)
        assert_one_line_error(result, message)
        assert "--base" in result.output, (case, result.output)
        assert not (tmp_path / "out").exists()


# -- 4. arguments before any expensive work -----------------------------------------------------------


def test_arguments_are_checked_before_loading(tmp_path, pruned, text, monkeypatch):
    import qprune.runtime.load

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(qprune.runtime.load, "load", no_loading)
    cases = {
        ("--last-layers", "9"): "--last-layers 9: the model has only 4 layers",
        ("--lm-weight", "0", "--loss", "mix"): "--lm-weight must be positive and finite, not 0.0",
        ("--lm-weight", "-1"): "--lm-weight must be positive and finite",
        ("--lm-weight", "nan"): "--lm-weight must be positive and finite, not nan",
        ("--lm-weight", "inf"): "--lm-weight must be positive and finite, not inf",
        ("--lr", "inf"): "--lr must be positive and finite",
        ("--lora", "2", "--last-layers", "1"): "give --lora or --last-layers, not both",
        ("--tokens", "0"): "--tokens must be positive",
        ("--seq-len", "1"): "--seq-len must be at least 2",
        ("--top-k", "0"): "--top-k must be positive",
        ("--loss", "mse"): "--loss 'mse': choose kd, lm, mix",
    }
    for args, message in cases.items():
        assert_one_line_error(heal(pruned, tmp_path / "out", *args, data=text), message)
        assert not (tmp_path / "out").exists(), args


# -- 5. one run per OUT, and SIGTERM leaves nothing ----------------------------------------------------


def heal_driver(action: str, hook: str, *args, wait: bool = True, env: dict | None = None):
    """`qprune heal ARGS... FAST` in a child process whose HOOK ("train" or "cache") first does ACTION."""
    environment = (env or {}) | {"PYTHONPATH": str(Path(__file__).parent)}
    return run_driver(action, "heal", *args, *FAST, hook=hook, wait=wait, env=environment)


@pytest.mark.slow
def test_a_second_heal_to_the_same_out_fails_at_once(tmp_path, pruned, text):
    out, flag = tmp_path / "out", tmp_path / "flag"
    first = heal_driver(str(flag), "train", pruned, out, "--data", text, "-q", wait=False)
    try:
        deadline = time.time() + 120
        while not flag.with_suffix(".started").exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        start = time.monotonic()
        assert_one_line_error(heal(pruned, out, data=text), "another qprune run is writing")
        assert_one_line_error(heal(pruned, out, "--force", data=text), "another qprune run is writing")
        assert time.monotonic() - start < 20  # refused before reading or loading anything
    finally:
        flag.with_suffix(".go").touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert (out / "qprune_heal.json").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("hook", ["train", "cache"])
@pytest.mark.slow
def test_sigterm_during_heal_leaves_nothing(tmp_path, pruned, text, hook):
    scratch = tmp_path / "tmpdir"  # the process's TMPDIR: the Trainer's scratch must not stay there
    scratch.mkdir()
    before = snapshot(pruned)
    done = heal_driver(
        "SIGTERM", hook, pruned, tmp_path / "out", "--data", text, "--teacher-cache", tmp_path / "cache", "-q",
        env={"TMPDIR": str(scratch)},
    )  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "error: interrupted by SIGTERM", done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    assert list(scratch.iterdir()) == []
    cache = sorted(p.name for p in (tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []
    assert cache == ([CACHE_FILE] if hook == "train" else [])  # a whole cache, or none: never a temp file
    assert snapshot(pruned) == before


# -- 6. newcomers --------------------------------------------------------------------------------------


def test_heal_finds_a_local_base_from_anywhere(tmp_path, pruned, text, monkeypatch):
    config = json.loads((pruned / "config.json").read_text())
    assert os.path.isabs(config["qprune_base_path"]) and config["qprune_base_model"] == "base"
    monkeypatch.chdir(tmp_path)  # "base" means nothing here: the recorded location is used
    result = heal(pruned, tmp_path / "healed", data=text)
    assert result.exit_code == 0, result.output
    assert read_report(tmp_path / "healed")["teacher"] == "base"


def test_healed_card_progress_and_names(tmp_path, pruned, text):
    result = heal(pruned, tmp_path / "my-healed", "--teacher-cache", tmp_path / "cache", data=text)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "my-healed" / "README.md").read_text()
    assert card.splitlines()[card.splitlines().index("# my-healed") - 1] == ""  # the title
    assert 'from_pretrained("my-healed"' in card and '"pruned"' not in card and "# pruned" not in card
    for phase in (
        "training data: 8 sequences of 32 tokens", "held-out text: 64 tokens", "loading the teacher",
        "held-out perplexity before healing", "teacher cache: computing", "training all kept weights: 4 steps",
        "held-out perplexity after healing", "saving the healed checkpoint",
    ):  # fmt: skip
        assert phase in result.output, (phase, result.output)


def _load_tokenizers(tmp_path: Path) -> list[subprocess.CompletedProcess]:
    """AutoTokenizer, in a child with stdin closed, on a source whose tokenizer_config.json names no
    class and on its pruned output."""
    source = Path(shutil.copytree(EMBEDDED_MODEL, tmp_path / "src"))
    settings = json.loads((source / "tokenizer_config.json").read_text())
    del settings["tokenizer_class"]  # as many checkpoints on the hub write it
    (source / "tokenizer_config.json").write_text(json.dumps(settings))
    qprune.prune(str(source), tmp_path / "pruned", Plan(attn=(1,)))
    written = json.loads((tmp_path / "pruned" / "tokenizer_config.json").read_text())
    assert written["tokenizer_class"] == "Qwen2Tokenizer" and written["eos_token"] == settings["eos_token"]
    probe = (
        "import sys; from transformers import AutoTokenizer; "
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); print(type(t).__name__, t('def f(x):')['input_ids'])"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", probe, str(path)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60,
        )
        for path in (source, tmp_path / "pruned")
    ]  # fmt: skip
    return runs


@pytest.mark.slow
def test_pruned_tokenizer_loads_without_remote_code(tmp_path):
    runs = _load_tokenizers(tmp_path)
    assert runs[0].returncode == runs[1].returncode == 0, runs[1].stderr
    # the same class and ids (after transformers 5's question, which stdin closed answers at once)
    assert runs[0].stdout.splitlines()[-1] == runs[1].stdout.splitlines()[-1].rpartition("[y/N] ")[2]


@pytest.mark.slow
def test_the_cards_tokenizer_line_asks_no_question(tmp_path):
    """transformers 5 reads config.json before tokenizer_config.json, and the auto_map that lets it load
    the model alone makes a bare AutoTokenizer ask about remote code (15 s on a terminal): the card's
    line passes trust_remote_code=True, and runs without a question in both versions."""
    qprune.prune(str(EMBEDDED_MODEL), tmp_path / "pruned", Plan(attn=(1,)))
    card = (tmp_path / "pruned" / "README.md").read_text()
    line = next(line for line in card.splitlines() if line.startswith("tokenizer = AutoTokenizer"))
    probe = (
        f"from transformers import AutoTokenizer\n{line}\n"
        f"source = AutoTokenizer.from_pretrained({str(EMBEDDED_MODEL)!r})\ntext = 'def f(x):'\n"
        "print(type(tokenizer) is type(source), tokenizer(text)['input_ids'] == source(text)['input_ids'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "trust_remote_code" not in run.stdout + run.stderr and "[y/N]" not in run.stdout + run.stderr
    assert run.stdout.split()[-2:] == ["True", "True"]  # the source's tokenizer class and ids
