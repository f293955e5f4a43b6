"""The command line under hostile conditions: every failure that is not a bug in qprune is one line with
its exit status; signals clean up like Ctrl-C; silent nonsense gets a line; errors name flags; the help
reads well.

Classes: OS and library errors reaching a command (one line, exit 2; a bug keeps its traceback);
SIGTERM, SIGHUP and SIGINT during a spilling layer-by-layer run (real signals in a subprocess: nothing
left in $TMPDIR, one line, exit 128 + N); results that mislead without a word (too little text, a
context longer than the model's, a target the constraints cannot reach); CLI polish (usage lines,
help texts, bench's units and ratios).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import assert_one_line_error, cli

from qprune.errors import QpruneWarning
from qprune.shipped import EMBEDDED_MODEL

FAST = ["--samples", "2", "--seq-len", "32", "--dtype", "float32", "--quiet"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A private copy of the small model shipped with qprune (its context: 1024 tokens)."""
    return Path(shutil.copytree(EMBEDDED_MODEL, tmp_path_factory.mktemp("embedded") / "model"))


# -- OS and library errors: one line, exit 2; bugs keep their traceback ---------------------------------


def _safetensor_error():
    from safetensors import SafetensorError

    return SafetensorError("Error while deserializing header: HeaderTooLarge")


FAULTS = {
    "disk full": (
        lambda: OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors"),
        "error: cannot write /data/out/model.safetensors: No space left on device",
    ),
    "permission denied": (
        lambda: PermissionError(errno.EACCES, "Permission denied", "/models/x/config.json"),
        "error: cannot access /models/x/config.json: Permission denied",
    ),
    "read-only, no file named": (
        lambda: OSError(errno.EROFS, "Read-only file system"),
        "error: cannot write: Read-only file system",
    ),
    "damaged safetensors": (_safetensor_error, "error: damaged or unreadable safetensors file: Error while"),
    "out of memory": (MemoryError, "error: out of memory"),
}
# Where each command hands over to the library: the fault is raised there.
COMMANDS = {
    "info": ("qprune.ops.report.describe", ["info", "{model}"]),
    "scan": ("qprune.measure.scan.run_scan", ["scan", "{model}"]),
    "eval": ("qprune.measure.evaluate.run_eval", ["eval", "{model}"]),
    "prune": ("qprune.ops.prune.prune", ["prune", "{model}", "{out}", "--attn", "1"]),
    "bench": ("qprune.measure.bench.run_bench", ["bench", "--shape", "qwen3-0.6b", "--attn", "1"]),
}


def _raising(make):
    def fake(*args, **kwargs):
        raise make()

    return fake


def _args(command: str, model: Path, tmp_path: Path) -> list[str]:
    return [a.format(model=model, out=tmp_path / "out") for a in COMMANDS[command][1]]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault", FAULTS)
def test_os_and_library_errors_are_one_line(monkeypatch, tmp_path, model, command, fault):
    make, line = FAULTS[fault]
    monkeypatch.setattr(COMMANDS[command][0], _raising(make))
    result = cli(*_args(command, model, tmp_path))
    assert_one_line_error(result, line)
    assert result.output.startswith(line)


@pytest.mark.parametrize("command", ["info", "scan"])
def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path, model, command):
    monkeypatch.setattr(COMMANDS[command][0], _raising(lambda: ZeroDivisionError("a bug")))
    result = cli(*_args(command, model, tmp_path))
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
    assert "error:" not in result.output


def test_a_multi_line_error_is_still_one_line(monkeypatch, model):
    from qprune.errors import QpruneError

    monkeypatch.setattr("qprune.ops.report.describe", _raising(lambda: QpruneError("first {seq_len}\n  second\n")))
    assert_one_line_error(cli("info", model), "error: first --seq-len; second")


def test_the_entry_point_prints_one_line(tmp_path):
    """Through `main()`, as installed, not the test runner's invocation."""
    code = "import sys; from qprune.cli.app import main; sys.argv = ['qprune', *sys.argv[1:]]; main()"
    refused = subprocess.run([sys.executable, "-c", code, "info", str(tmp_path / "absent")], capture_output=True)
    assert refused.returncode == 2 and refused.stderr.decode().count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(b"error: ")


# -- signals: cleanup as on Ctrl-C, in every command ------------------------------------------------------

# Runs the CLI in a child process. When the first hidden state has been spilled to disk, ACTION happens:
# the child sends itself the signal, or (a file name) touches that file and waits for the test to send one.
SPILL_DRIVER = """
import os, signal, sys, time
from pathlib import Path
import qprune.measure.states as states
from qprune.cli.app import main

action, argv = sys.argv[1], sys.argv[2:]
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as on a terminal (CI starts jobs ignoring it)
put, fired = states.StateStore.put, []

def hooked(self, key, tensor):
    put(self, key, tensor)
    if self.spilled_bytes and not fired:
        fired.append(True)
        assert os.listdir(self._dir)  # the state is on disk now
        Path("spilled").touch()
        if action.startswith("SIG"):
            os.kill(os.getpid(), getattr(signal, action))
            time.sleep(30)
        else:
            while True:  # held here until the test's signal arrives
                time.sleep(0.05)

states.StateStore.put = hooked
sys.argv = ["qprune", *argv]
main()
"""


def _spill_env(tmp_path: Path) -> dict[str, str]:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    # torch's compile cache would otherwise land in $TMPDIR: keep $TMPDIR for what qprune writes.
    return {**os.environ, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}


def _run_spilling(tmp_path: Path, action: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SPILL_DRIVER, action, *map(str, args)],
        cwd=tmp_path,
        env=_spill_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_when_spilled(child: subprocess.Popen, tmp_path: Path, signum: int) -> None:
    deadline = time.time() + 240
    while not (tmp_path / "spilled").exists():
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signum)


# Spilling: the embedded model needs ~22 MB beyond its states at this size (test_layerwise's figures).
SPILLING = ["--max-memory", "22MB", "--samples", "4", "--seq-len", "64", "--dtype", "float32", "--quiet"]


@pytest.mark.parametrize(
    ("signame", "sender"), [("SIGTERM", "external"), ("SIGTERM", "self"), ("SIGHUP", "self"), ("SIGINT", "self")]
)
@pytest.mark.slow
def test_signal_during_a_spilling_scan_leaves_nothing(tmp_path, model, signame, sender):
    child = _run_spilling(tmp_path, "wait" if sender == "external" else signame, "scan", model, *SPILLING)
    if sender == "external":
        _signal_when_spilled(child, tmp_path, getattr(signal, signame))
    _, stderr = child.communicate(timeout=300)
    assert (tmp_path / "spilled").exists()  # the run had states on disk when the signal came
    assert child.returncode == 128 + getattr(signal, signame), stderr
    assert stderr == f"error: interrupted by {signame}\n"
    assert os.listdir(tmp_path / "tmpdir") == []


@pytest.mark.slow
def test_sigterm_during_a_spilling_auto_prune_leaves_nothing(tmp_path, model):
    out = tmp_path / "out"
    child = _run_spilling(tmp_path, "wait", "prune", model, out, "--auto", "--blocks", "2", *SPILLING)
    _signal_when_spilled(child, tmp_path, signal.SIGTERM)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 128 + signal.SIGTERM and stderr == "error: interrupted by SIGTERM\n"
    assert os.listdir(tmp_path / "tmpdir") == [] and not out.exists()


def test_signal_handlers_are_restored_after_a_command(model):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert cli("info", model).exit_code == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_an_exception_handler_cannot_swallow_the_interrupt():
    from qprune.errors import Interrupted

    assert not issubclass(Interrupted, Exception) and issubclass(Interrupted, BaseException)
    assert Interrupted(signal.SIGTERM).exit_code == 143 and str(Interrupted(signal.SIGHUP)) == "interrupted by SIGHUP"


# -- silent nonsense gets a line ---------------------------------------------------------------------------


def _warnings_for_cli(record) -> list[str]:
    """What the CLI prints for the `QpruneWarning`s a command gave (pytest records warnings instead of
    printing them; `test_a_warning_is_one_line_on_stderr` checks the printing)."""
    return [w.message.for_cli() for w in record if isinstance(w.message, QpruneWarning)]


def test_eval_on_text_shorter_than_a_window_says_so(tmp_path, model):
    text = tmp_path / "short.txt"
    text.write_text("def add(a, b):\n    return a + b\n")
    with pytest.warns(QpruneWarning) as record:
        result = cli("eval", model, "--data", text, "--seq-len", "64", "--stride", "32", "--json", "-q")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)["tokens"]
    assert 0 < scored < 63
    assert _warnings_for_cli(record) == [
        f"the text is only {scored + 1} tokens, less than one --seq-len window (64): "
        f"the perplexity is over {scored} tokens, too few to compare models"
    ]


@pytest.mark.slow
def test_a_warning_is_one_line_on_stderr(tmp_path, model):
    """Through the real entry point: the line a user reads, with the flag's name."""
    text = tmp_path / "short.txt"
    text.write_text("def add(a, b):\n    return a + b\n")
    args = ["eval", model, "--data", text, "--seq-len", "64", "--stride", "32", "--dtype", "float32", "-q"]
    done = subprocess.run([sys.executable, "-m", "qprune.cli", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"warning: the text is only \d+ tokens, less than one --seq-len window \(64\): "
        r"the perplexity is over \d+ tokens, too few to compare models\n",
        done.stderr,
    ), done.stderr


def test_eval_refuses_fewer_than_two_tokens(tmp_path, model):
    text = tmp_path / "one.txt"
    text.write_text("def")
    assert_one_line_error(cli("eval", model, "--data", text, "--seq-len", "64", "--stride", "32", "-q"), "at least 2")


@pytest.mark.parametrize(
    "args",
    [
        ["scan", "{model}", "--seq-len", "1025"],
        ["prune", "{model}", "{out}", "--auto", "--blocks", "1", "--seq-len", "4096"],
        ["eval", "{model}", "--seq-len", "2048", "--stride", "512"],
        ["eval", "{model}", "--base", "{model}", "--seq-len", "1500", "--stride", "512"],
    ],
)
def test_seq_len_beyond_the_context_is_refused_before_loading(monkeypatch, tmp_path, model, args):
    import qprune.runtime.load as load

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(load, "load", never)
    monkeypatch.setattr("qprune.runtime.streamed.StreamedModel.open", never)
    result = cli(*[a.format(model=model, out=tmp_path / "out") for a in args], "--quiet")
    seq_len = args[args.index("--seq-len") + 1]
    assert_one_line_error(result, f"--seq-len {seq_len} is longer than the context of")
    assert "1024 tokens (max_position_embeddings" in result.output and "use at most 1024" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_of_a_short_text_is_not_refused_for_the_context(tmp_path, model):
    """The window is the text when the text is shorter: a long --seq-len over it uses no far position."""
    short_context = Path(shutil.copytree(model, tmp_path / "model"))
    config = json.loads((short_context / "config.json").read_text())
    (short_context / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 32}))
    text = tmp_path / "t.txt"
    text.write_text("x = [1, 2, 3]\nprint(len(x))\n")  # 18 tokens
    with pytest.warns(QpruneWarning):  # shorter than one window: said, not refused
        result = cli("eval", short_context, "--data", text, "--seq-len", "64", "--stride", "32", "-q", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tokens"] == 17, report  # every token after the first, in one window within the 32 positions
    assert 1 < report["model"]["perplexity"] < float("inf"), report
    text.write_text("x = [1, 2, 3]\nprint(len(x))\n" * 3)
    result = cli("eval", short_context, "--data", text, "--seq-len", "64", "--stride", "32", "-q")
    assert_one_line_error(result, "--seq-len 64 is longer than the context of")


@pytest.mark.parametrize("method", ["greedy", "oneshot"])
def test_param_ratio_the_constraints_cannot_reach_says_so(tmp_path, model, method):
    args = ["prune", model, tmp_path / "out", "--auto", "--param-ratio", "0.5", "--only", "mlp", "--keep-first", "4"]
    with pytest.warns(QpruneWarning) as record:
        result = cli(*args, "--method", method, *FAST)
    assert result.exit_code == 0, result.output
    share = re.search(r"decoder parameters removed: ([\d.]+%)", result.stdout).group(1)
    assert _warnings_for_cli(record) == [
        f"--param-ratio 0.5: removed {share} of the decoder parameters; the target could not be met: "
        "no more blocks may be removed under --only mlp, --keep-first 4"
    ]


def test_param_ratio_within_reach_gives_no_warning(tmp_path, model):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = cli("prune", model, tmp_path / "out", "--auto", "--param-ratio", "0.1", *FAST)
    assert result.exit_code == 0, result.output
    assert _warnings_for_cli(record) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--blocks", "9", "--only", "mlp"], "--blocks 9: only 6 blocks may be removed under --only mlp;"),
        (["--blocks", "5", "--whole-layers", "--keep-last", "2"], "--blocks 5: only 4 layers may be removed under"),
        (["--blocks", "13"], "--blocks 13: only 12 blocks may be removed in this model"),
    ],
)
def test_more_blocks_than_candidates_names_the_constraints(tmp_path, model, extra, message):
    assert_one_line_error(cli("prune", model, tmp_path / "out", "--auto", *extra, *FAST), message)
    assert not (tmp_path / "out").exists()


# -- flags, not Python names --------------------------------------------------------------------------------


def test_library_names_become_flags(tmp_path, model):
    from qprune.errors import flag

    warning = QpruneWarning("{seq_len} 64: only {batches} 1")
    assert str(warning) == "seq_len 64: only batches 1" and warning.for_cli() == "--seq-len 64: only --batch 1"

    assert [flag(n) for n in ("batches", "as_json", "plan_file", "seq_len")] == [
        "--batch",
        "--json",
        "--plan",
        "--seq-len",
    ]
    result = cli("bench", "--shape", "qwen3-0.6b", "--attn", "1", "--prompt-len", "0")
    assert_one_line_error(result, "--prompt-len must be at least 1, not 0")
    result = cli("prune", model, tmp_path / "out", "--auto", "--param-ratio", "1.5", *FAST)
    assert_one_line_error(result, "--param-ratio must be between 0 and 1")
    assert "param_ratio" not in result.output


# -- polish -------------------------------------------------------------------------------------------------

USAGES = {
    "prune": "prune [OPTIONS] SRC OUT",
    "export": "export [OPTIONS] PRUNED DEST",
    "scan": "scan [OPTIONS] MODEL",
    "eval": "eval [OPTIONS] MODEL",
    "bench": "bench [OPTIONS] [MODEL]",
    "heal": "heal [OPTIONS] PRUNED OUT",
    "info": "info [OPTIONS] PATH",
    "verify": "verify [OPTIONS] PATH",
    "generate": "generate [OPTIONS] PATH",
    "demo": "demo [OPTIONS]",
}


@pytest.mark.parametrize("command", USAGES)
def test_help_reads_well(command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: qprune {USAGES[command]}\n" in result.output or f"{USAGES[command]}\n" in result.output
    assert "{" not in result.output.splitlines()[0]
    assert "<int range>" not in result.output
    lines = result.output[result.output.index("Options:") :].splitlines()[1:]
    for k, line in enumerate(lines):  # every option says what it does: its help is not just "[default: ...]"
        if line.startswith("  -"):
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            described = parts[1] if len(parts) > 1 else lines[k + 1].strip()
            assert not described.startswith("["), line


def test_top_level_help_lists_every_command_on_one_line():
    result = cli("--help")
    commands = result.output[result.output.index("Commands:") :].split("\n\n")[0].splitlines()[1:]
    assert [line.split()[0] for line in commands] == list(USAGES), result.output  # no summary wraps


def test_generate_max_new_tokens_has_help():
    assert "--max-new-tokens N" in cli("generate", "--help").output
    assert "Tokens to generate." in cli("generate", "--help").output


def test_bench_table_ratios_match_its_figures_and_units(tmp_path, untied_base):
    from qprune import prune
    from qprune.plan import Plan

    prune(str(untied_base), tmp_path / "p", Plan(attn=(1,), mlp=(2, 3)))
    args = ["bench", tmp_path / "p", "--base", untied_base, "--prompt-len", "8", "--new-tokens", "3"]
    result = cli(*args, "--repeats", "1", "--warmup", "0", "--dtype", "float32", "-q")
    assert result.exit_code == 0, result.output
    assert "MiB" not in result.stdout and "GiB" not in result.stdout and " KB" in result.stdout
    assert "pruned/dense" in result.stdout and "of ideal" in result.stdout
    for label in ("prefill tok/s", "decode tok/s"):
        row = next(line for line in result.stdout.splitlines() if line.startswith(label))
        dense, pruned, ratio, ideal, share = row[len(label) :].split()
        d, p, r = float(dense), float(pruned), float(ratio.rstrip("x"))  # tok/s shown to 0.1, ratios to 0.001
        assert (p - 0.05) / (d + 0.05) - 5e-4 <= r <= (p + 0.05) / (d - 0.05) + 5e-4, row
        shown = 100 * float(ratio.rstrip("x")) / float(ideal.rstrip("x"))
        # The share comes from unrounded figures: the ratio's and the ideal's rounding (0.0005 each) grow
        # with it, so a noisy run's large share may differ from the shown figures' by more than 1 point.
        assert float(share.rstrip("%")) == pytest.approx(shown, abs=1 + 0.002 * shown)
