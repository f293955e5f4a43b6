"""What the tests share: tiny random Qwen3 and Qwen3-MoE checkpoints, the stock-transformers oracle of each
family, the command line and its one-line errors, damaged checkpoints, faked disks and signals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import Result
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from typer.testing import CliRunner

from qprune.arch import family_of
from qprune.cli.app import app
from qprune.plan import Plan
from qprune.shipped import EMBEDDED_MODEL

VOCAB = 96


def tiny_config(num_layers: int = 4, tied: bool = False, **overrides) -> Qwen3Config:
    sizes = dict(
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
    )
    return Qwen3Config(**sizes | overrides)


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


def logit_delta(model, oracle, ids: torch.Tensor) -> float:
    """The largest difference between two models' logits on `ids`."""
    with torch.no_grad():
        return (model(ids).logits - oracle(ids).logits).abs().max().item()


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


# -- the stock Qwen3-MoE and its oracle --------------------------------------------------------------

MOE_DENSE_LAYER = 2  # in mlp_only_layers: a dense MLP among sparse MoE blocks
# layer 0's attention (the KV-cache trap); a sparse and a dense MLP
MOE_PLAN = Plan(attn=(0, 3), mlp=(1, MOE_DENSE_LAYER))


def tiny_moe_config(tied: bool = False, vocab: int = VOCAB, **overrides) -> Qwen3MoeConfig:
    fields = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        mlp_only_layers=[MOE_DENSE_LAYER],
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        pad_token_id=0,
        eos_token_id=1,
    )
    return Qwen3MoeConfig(**(fields | overrides))


def save_tiny_moe(path: Path, tied: bool = False, seed: int = 0, **overrides) -> Path:
    """A random Qwen3-MoE saved with transformers in several shards."""
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(tiny_moe_config(tied, **overrides))
    with torch.no_grad():  # 5.x initialises the router to zeros: give it a real choice to make
        for name, parameter in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                parameter.normal_(0, 0.5)
    model.save_pretrained(path, max_shard_size="100KB")
    return path


def moe_oracle(base: Path, plan: Plan) -> Qwen3MoeForCausalLM:
    """Stock Qwen3-MoE with the pruned blocks' output projections zeroed (o_proj; every expert's
    down_proj, whatever the transformers version calls it; a dense MLP's down_proj)."""
    family = family_of({"model_type": "qwen3_moe"})
    model = Qwen3MoeForCausalLM.from_pretrained(base, dtype=torch.float32)
    zeroed = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
            for kind, layers in (("attn", plan.attn), ("mlp", plan.mlp)):
                if layer in layers and family.is_output_projection(name, kind):
                    parameter.zero_()
                    zeroed.append(name)
    assert len({n.split(".")[2] + n.split(".")[3] for n in zeroed}) == plan.num_blocks, zeroed
    return model.eval()


# Runs where qprune cannot be imported: only transformers and the code inside the checkpoint.
REMOTE_CODE = """
import json, sys
sys.modules["qprune"] = None  # make `import qprune` fail
try:
    import qprune
    raise SystemExit("qprune is importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging
import re
import shutil
logging.set_verbosity_info()
path, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    print("LOGITS", json.dumps(model(ids).logits.tolist()))
"""


# -- the command line ------------------------------------------------------------------------------

runner = CliRunner()


def cli(*args) -> Result:
    """`qprune ARGS...` in this process (arguments may be paths or numbers)."""
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, message: str, exit_code: int = 2) -> None:
    """The command failed with `exit_code` and said so in one `error: ...` line containing `message`."""
    assert result.exit_code == exit_code, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def snapshot(path: Path) -> dict[str, str]:
    """Every entry under `path` with the hash of its bytes (symlinked directories are not entered):
    what "unchanged" means here."""
    entries = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = Path(root) / name
            key = str(entry.relative_to(path))
            if entry.is_symlink():
                entries[key] = f"link to {os.readlink(entry)}"
            elif entry.is_file():
                entries[key] = hashlib.sha256(entry.read_bytes()).hexdigest()
            else:
                entries[key] = "directory"
    return entries


def leftovers(directory: Path) -> list[str]:
    """The partial outputs an interrupted run left under `directory`."""
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".partial"))


def with_embedded_tokenizer(path: Path) -> Path:
    """Gives the model at `path` the tokenizer of the model shipped with qprune (4096 tokens)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(EMBEDDED_MODEL / name, path / name)
    return path


# -- checkpoints damaged on purpose -------------------------------------------------------------------


def edit_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with `edit(header)`, keeping its data bytes."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header = edit(header) or header
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def edit_json(name: str, edit):
    """A damage: model_dir -> rewrites its JSON file `name` as `edit(data)`."""

    def damage(model_dir: Path) -> None:
        path = model_dir / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return damage


def edit_config(**fields):
    """A damage: model_dir -> its config.json with `fields` set."""
    return edit_json("config.json", lambda config: {**config, **fields})


# -- output faults and signals ---------------------------------------------------------------------


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs directory; needs root (and a kernel that lets us mount)."""
    mounted = []

    def make(options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs to fake a full or read-only disk needs root")
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


# Runs the CLI in a child process in which HOOK first does ACTION: send itself a signal, or wait until a
# file appears (to hold the run in the middle of its work). HOOK: "copy" (the third tensor a checkpoint
# write copies), "train" (a training step's loss) or "cache" (the teacher cache's write).
DRIVER = """
import os, signal, sys, time
from pathlib import Path
from qprune.cli.app import main

action, hook, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
# Ctrl-C as on a terminal: a shell that starts a job in the background (CI) makes it ignore SIGINT
signal.signal(signal.SIGINT, signal.default_int_handler)
calls, at = [0], 3 if hook == "copy" else 1

def pause():
    calls[0] += 1
    if calls[0] != at:
        return
    if action.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, action))
        time.sleep(5)
    else:
        Path(action + ".started").touch()
        while not Path(action + ".go").exists():
            time.sleep(0.05)

def hooked(original):
    def run(*args, **kwargs):
        pause()
        return original(*args, **kwargs)
    return run

if hook == "copy":
    import qprune.io.safetensors as checkpoint
    checkpoint._append_bytes = hooked(checkpoint._append_bytes)
elif hook == "train":
    import qprune.healing.kd as kd
    kd.kd_loss = hooked(kd.kd_loss)
else:
    import safetensors.torch
    safetensors.torch.save_file = hooked(safetensors.torch.save_file)
sys.argv = ["qprune", *argv]
main()
"""


def run_driver(action: str, *args, hook: str = "copy", wait: bool = True, env: dict | None = None):
    """`qprune ARGS...` in a child process through DRIVER: its CompletedProcess, or with wait=False its Popen."""
    command = [sys.executable, "-c", DRIVER, action, hook, *map(str, args)]
    environment = os.environ | (env or {})
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
