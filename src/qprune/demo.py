"""`qprune demo`: the whole job on one model, by default the small Qwen3 shipped with qprune.

Chooses blocks with the greedy search (or takes the plan given), prunes them, verifies the result
against the stock-transformers oracle, and prints dense and pruned generations side by side with the
sizes. Used as the README's first command.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .data import DataSpec
from .plan import Plan
from .source import read_qwen3_config, resolve_model_dir

EMBEDDED_MODEL = Path(__file__).parent / "assets" / "qwen3-pydocs"
DEMO_DATA = DataSpec(samples=16, seq_len=256)  # small: the search takes seconds on a CPU
PROMPTS = ("The list type", "To open a file", "The :mod:`os` module")


def default_block_count(num_layers: int) -> int:
    """How many blocks the demo removes when no plan is given: a sixth of them."""
    return max(1, (2 * num_layers) // 6)


def run_demo(
    model: str | None,
    out: Path | None,
    attn: str | None = None,
    mlp: str | None = None,
    *,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> bool:
    """Run the demo; True when every verification check passed."""
    import torch
    from transformers.utils import logging

    from .generate import complete, load_with_tokenizer
    from .pruning import prune
    from .search import Target, auto_prune
    from .verification import verify

    logging.disable_progress_bar()  # loading bars would bury the side-by-side output
    source = model or str(EMBEDDED_MODEL)
    num_layers = read_qwen3_config(resolve_model_dir(source))["num_hidden_layers"]
    with tempfile.TemporaryDirectory(prefix="qprune-demo-") as scratch:
        target = out or Path(scratch) / "pruned"
        if attn or mlp:
            echo(f"== prune {source}\n")
            echo(prune(source, target, Plan.parse(attn, mlp), force=force).summary())
        else:
            count = default_block_count(num_layers)
            echo(f"== prune {source} --auto --blocks {count}: greedy search on the shipped calibration text\n")
            result, found = auto_prune(source, target, DEMO_DATA, Target(blocks=count), force=force, progress=False)
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
    return passed
