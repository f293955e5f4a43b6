"""Each command opens its checkpoints once: config.json and every safetensors header are read by one
`open_checkpoint`, and no file of a checkpoint is opened more than a few times in all (transformers'
own loading and the copy into the output included). Counted by an audit hook on `open` in a child
process running the CLI: before the Checkpoint was passed down, one `prune --auto` opened config.json
6 times and the weights 6 times, and one `verify --base` the weights 9 times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli

from qprune.shipped import EMBEDDED_MODEL

# Opens of one file in one command, at most: qprune's one read, transformers' loading (its tokenizer
# reads tokenizer_config.json three times), the copy into the output, and a file's digest.
MOST_OPENS = 5

COUNTER = """
import collections, json, os, sys

roots = [os.path.realpath(path) for path in os.environ["QPRUNE_WATCH"].split(os.pathsep)]
opens = collections.defaultdict(collections.Counter)

def reader(frame):
    # The first function outside the standard library that asked for the file.
    while frame is not None and frame.f_code.co_filename.startswith(sys.base_prefix):
        frame = frame.f_back
    return "?" if frame is None else f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"

def hook(event, args):
    if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    mode, flags = args[1], args[2]
    if (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & 3):
        return  # written, not read
    path = os.path.realpath(os.fsdecode(args[0]))
    for root in roots:
        if path.startswith(root + os.sep):
            opens[path.removeprefix(os.path.dirname(root) + os.sep)][reader(sys._getframe(1))] += 1

def report():
    with open(os.environ["QPRUNE_OPENS"], "w") as file:
        json.dump(opens, file)

sys.addaudithook(hook)
import atexit
atexit.register(report)
from qprune.cli.app import main
sys.argv = ["qprune", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reads") / "pruned"
    result = cli("prune", str(EMBEDDED_MODEL), str(out), "--attn", "1", "--mlp", "2", "-q")
    assert result.exit_code == 0, result.output
    return out


def _opens(tmp_path: Path, args: list[str], checkpoints: list[Path]) -> dict[str, dict[str, int]]:
    report = tmp_path / "opens.json"
    env = os.environ | {"QPRUNE_WATCH": os.pathsep.join(map(str, checkpoints)), "QPRUNE_OPENS": str(report)}
    result = subprocess.run(
        [sys.executable, "-c", COUNTER, *args, "-q"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(report.read_text())


CALIBRATION = "--samples 2 --seq-len 64"
COMMANDS = {  # name: (arguments, the checkpoints it reads)
    "prune --auto": (f"prune {{base}} out --auto --blocks 1 {CALIBRATION}", ["base"]),
    "prune": ("prune {pruned} out --mlp 0", ["pruned"]),
    "verify --base": ("verify {pruned} --base {base}", ["pruned", "base"]),
    "eval --base": ("eval {pruned} --base {base} --max-tokens 200", ["pruned", "base"]),
    "export": ("export {pruned} out", ["pruned"]),
    "scan": (f"scan {{base}} {CALIBRATION}", ["base"]),
    "bench": ("bench {pruned} --base {base} --batch 1 --prompt-len 8 --new-tokens 2 --repeats 1", ["pruned", "base"]),
    "generate": ("generate {pruned} --prompt def --max-new-tokens 2", ["pruned"]),
    "info": ("info {pruned}", ["pruned"]),
    "heal": (
        "heal {pruned} out --base {base} --tokens 64 --seq-len 32 --batch-size 2 --eval-tokens 64",
        ["pruned", "base"],
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_checkpoint_file_is_read_a_bounded_number_of_times(command, pruned, tmp_path):
    template, watched = COMMANDS[command]
    paths = {"base": EMBEDDED_MODEL, "pruned": pruned}
    args = [part.format(**{name: str(path) for name, path in paths.items()}) for part in template.split()]
    opens = _opens(tmp_path, args, [paths[name] for name in watched])
    table = json.dumps(opens, indent=1)
    for name in watched:
        directory = paths[name].name
        config = opens.get(f"{directory}/config.json", {})
        assert config.get("source.py:read_config") == 1, f"{command}: config.json of {name} not read once:\n{table}"
        for shard in sorted(paths[name].glob("*.safetensors")):
            header = opens.get(f"{directory}/{shard.name}", {}).get("safetensors.py:read_header")
            assert header == 1, f"{command}: the header of {shard.name} of {name} not read once:\n{table}"
    for path, readers in opens.items():
        assert sum(readers.values()) <= MOST_OPENS, f"{command}: {path} opened more than {MOST_OPENS} times:\n{table}"
