"""`qprune demo`: the whole job on one model, by default the small Qwen3 shipped with qprune.

Chooses blocks with the greedy search (or takes the plan given), prunes them, verifies the result
against the stock-transformers oracle, and prints dense and pruned generations side by side with the
sizes. The pruned checkpoint is kept (`./qprune-demo` unless `--out`), so `qprune info` and friends
can be tried on it. Used as the README's first command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qprune.errors import QpruneError
from qprune.io.source import open_checkpoint
from qprune.measure.data import DataSpec
from qprune.plan import Plan
from qprune.progress import Progress, as_progress
from qprune.shipped import EMBEDDED_MODEL

DEMO_DATA = DataSpec(samples=16, seq_len=256)  # small: the whole demo takes about 30 s on 2 CPU cores
PROMPTS = ("The list type", "To open a file", "The :mod:`os` module")
DEFAULT_OUT = "qprune-demo"
DURATION = "About 30 seconds on a 2-core CPU."


def default_block_count(num_layers: int) -> int:
    """How many blocks the demo removes when no plan is given: a sixth of them."""
    return max(1, (2 * num_layers) // 6)


def free_output_dir(stem: str = DEFAULT_OUT) -> Path:
    """`stem`, or `stem-2`, `stem-3`... : the first that does not exist yet or is an empty directory."""
    for n in range(1, 1000):
        path = Path(stem if n == 1 else f"{stem}-{n}")
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return path
    raise QpruneError(f"{stem}-2 ... {stem}-999 all exist; pass --out")


def run_demo(
    model: str | None,
    out: Path | None,
    attn: str | None = None,
    mlp: str | None = None,
    *,
    force: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool | Progress = True,
) -> bool:
    """Run the demo, keeping the pruned checkpoint in `out` (default: `free_output_dir()`); True when
    every verification check passed."""
    import torch

    from qprune.measure.search import Target
    from qprune.measure.verify import verify
    from qprune.ops.auto import auto_prune
    from qprune.ops.prune import prune
    from qprune.runtime.generate import complete, load_with_tokenizer

    progress = as_progress(progress)
    source = model or str(EMBEDDED_MODEL)
    name = "the embedded Qwen3" if model is None else model
    source = open_checkpoint(source)  # opened once: prune, verify and the generations take it
    num_layers = source.config["num_hidden_layers"]
    target = Path(out) if out is not None else free_output_dir()
    if attn or mlp:
        echo(f"qprune demo: prune the given blocks of {name}, verify the result, compare generations.\n")
        echo(f"== prune {source}\n")
        echo(prune(source, target, Plan.parse(attn, mlp), force=force).summary())
    else:
        count = default_block_count(num_layers)
        echo(
            f"qprune demo: choose {count} of {2 * num_layers} blocks of {name} to remove by greedy search on "
            f"{DEMO_DATA.samples} x {DEMO_DATA.seq_len} calibration tokens, prune them, verify the result against "
            f"stock transformers, and compare generations. {DURATION}\n"
        )
        echo(f"== prune {source} --auto --blocks {count}: greedy search on the shipped calibration text\n")
        result, found = auto_prune(source, target, DEMO_DATA, Target(blocks=count), force=force, progress=progress)
        echo(found.table() + "\n")
        echo(result.summary())
    echo("\n== verify against the stock-transformers oracle\n")
    checks = verify(str(target), source)
    for check in checks:
        echo(str(check))
    echo("\n== greedy generations, dense vs pruned (float32)\n")
    dense, tokenizer = load_with_tokenizer(source, dtype=torch.float32)
    pruned, _ = load_with_tokenizer(target, dtype=torch.float32)
    for prompt in PROMPTS:
        echo(f"prompt: {prompt!r}")
        echo(f"  dense:  {complete(dense, tokenizer, prompt, 32)!r}")
        echo(f"  pruned: {complete(pruned, tokenizer, prompt, 32)!r}\n")
    passed = all(check.passed for check in checks)
    echo("verification: " + ("PASS" if passed else "FAIL"))
    echo(f"pruned checkpoint kept in {target} (qprune info {target}; delete it when done)")
    return passed
