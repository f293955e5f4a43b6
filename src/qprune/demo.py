"""`qprune demo`: the whole job on one model, by default the small Qwen3 shipped with qprune.

Prunes a plan, verifies the result against the stock-transformers oracle, and prints dense and pruned
generations side by side with the sizes. Used as the README's first command.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .plan import Plan
from .source import read_qwen3_config, resolve_model_dir

EMBEDDED_MODEL = Path(__file__).parent / "assets" / "qwen3-pydocs"
PROMPTS = ("The list type", "To open a file", "The :mod:`os` module")


def default_plan(num_layers: int) -> Plan:
    """A third of the attention blocks, taken from the deep layers (where attention matters least,
    as LLM-Drop found on Qwen models), never the first or the last layer."""
    count = max(1, num_layers // 3)
    return Plan(attn=tuple(range(max(1, num_layers - 1 - count), num_layers - 1)))


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
    from .verification import verify

    logging.disable_progress_bar()  # loading bars would bury the side-by-side output
    source = model or str(EMBEDDED_MODEL)
    num_layers = read_qwen3_config(resolve_model_dir(source))["num_hidden_layers"]
    plan = Plan.parse(attn, mlp) if attn or mlp else default_plan(num_layers)
    with tempfile.TemporaryDirectory(prefix="qprune-demo-") as scratch:
        target = out or Path(scratch) / "pruned"
        echo(f"== prune {source}\n")
        echo(prune(source, target, plan, force=force).summary())
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
