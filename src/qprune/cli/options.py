"""What the `qprune` commands share: option groups (Typer options used by several commands), parsers
of option values, and `user_errors`, which prints a library error as one line naming the flag.

    @app.command()
    def scan(model: str, samples: int = SAMPLES, seq_len: int = SEQ_LEN, quiet: bool = QUIET): ...
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from qprune.errors import QpruneError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except QpruneError as error:
        typer.echo(f"error: {error.for_cli()}", err=True)
        raise typer.Exit(getattr(error, "exit_code", 2)) from None


def parse_size(text: str, option: str = "--max-shard-size") -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    known = match is not None and match.group(2).upper() in _UNITS
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()]) if known else 0
    if size <= 0:
        raise QpruneError(f"{option}: {text!r} is not a size like 500MB or 5GB")
    return size


def parse_memory(text: Optional[str]) -> Optional[int]:
    return None if text is None else parse_size(text, "--max-memory")


def read_plan(attn: Optional[str], mlp: Optional[str], plan_file: Optional[Path]):
    from qprune.plan import Plan

    if plan_file is not None:
        if attn or mlp:
            raise QpruneError("give either --plan or --attn/--mlp, not both")
        return Plan.from_json(plan_file)
    return Plan.parse(attn, mlp)


ATTN = typer.Option(None, "--attn", help="Layers whose attention block to prune, e.g. 0,5.")
MLP = typer.Option(None, "--mlp", help="Layers whose MLP block to prune, e.g. 3,7.")
PLAN = typer.Option(None, "--plan", help='JSON plan file: {"attn": [0, 5], "mlp": [3, 7]}.')
FORCE = typer.Option(False, "--force", help="Replace OUT if it exists and is not empty.")


# Calibration / evaluation data, shared by scan, prune --auto (and eval).
DATA = typer.Option(None, "--data", help="Text: .txt, .jsonl, .parquet or a datasets id (default: shipped sample).")
TEXT_FIELD = typer.Option("text", "--text-field", help="Field (jsonl) or column (parquet, datasets) holding text.")
SAMPLES = typer.Option(32, "--samples", help="Number of sequences drawn from the data.")
SEQ_LEN = typer.Option(512, "--seq-len", help="Tokens per sequence.")
SEED = typer.Option(0, "--seed", help="Seed for drawing the sequences.")
DTYPE = typer.Option(
    "auto",
    "--dtype",
    help="Weights' dtype while measuring: auto (bfloat16 where the hardware computes it natively, else float32), "
    "bfloat16 or float32.",
)
MAX_MEMORY = typer.Option(
    None,
    "--max-memory",
    help="Memory to measure within, e.g. 600MB or 16GB: weights are read a layer at a time and states beyond "
    "it go to disk ($TMPDIR). Default: the whole model in memory, or layer by layer when it does not fit.",
)
QUIET = typer.Option(
    False, "--quiet", "-q", "--no-progress", help="No progress or status lines on stderr (results still print)."
)
# Loading for inference: generate, eval, bench, verify.
QUANTIZE = typer.Option(
    None,
    "--quantize",
    help="Quantize the kept weights while loading: int8 or nf4 (bitsandbytes), torchao-int8, torchao-int4 (CUDA). "
    "Pruned blocks are never quantized. Needs: pip install 'qprune[quant]'.",
)
LOAD_DTYPE = typer.Option(
    "auto",
    "--dtype",
    help="auto (bfloat16 where the hardware computes it natively, else float32), bfloat16, float32 or float16 "
    "(Qwen3 overflows in float16).",
)
CHECK_OVERFLOW = typer.Option(
    False, "--check-overflow", help="Trace the hidden states and name the first layer where they overflow."
)


def reporter(quiet: bool):
    """The progress of a command that loads models: on stderr unless --quiet, and without
    transformers' own loading bars except on a terminal."""
    from qprune.progress import Progress, quiet_library_bars

    progress = Progress(enabled=not quiet)
    quiet_library_bars(progress)
    return progress


def data_spec(data: Optional[str], text_field: str, samples: int, seq_len: int, seed: int):
    from qprune.measure.data import DataSpec

    return DataSpec(data, text_field=text_field, samples=samples, seq_len=seq_len, seed=seed)


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise QpruneError(f"--batch: {text!r} is not a list of batch sizes like 1,8") from None
