"""What the `qprune` commands share: option groups (Typer options used by several commands), parsers
of option values, and `user_errors`, which prints a library or OS error as one line (the CLI runs every
command inside `errors.signals_interrupt`, so SIGTERM and SIGHUP stop it the way Ctrl-C does).

    @app.command()
    def scan(model: str, samples: int = option(DataSpec, "samples"), quiet: bool = QUIET):
        show(run_scan(model, settings_from(DataSpec, locals())), as_json)

Options of a settings dataclass's fields are made by `option`, from the field's `setting(...)`: each
default and help text is written once, in the dataclass.

Exit statuses (the whole CLI, one rule): 0 done; 1 a check failed (verify, demo: FAIL) or a bug in
qprune (its traceback is printed); 2 one line `error: ...`: the run was refused or could not be done
for a reason on the user's side: bad input (`QpruneError`), a damaged safetensors file, the OS
(no space left, permission denied, read-only filesystem) or memory running out; 128 + N stopped by
signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), after the cleanup ran, with one line
`error: interrupted by SIGTERM`.
"""

from __future__ import annotations

import copy
import errno
import json
import re
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import typer

from qprune.errors import Interrupted, QpruneError, QpruneWarning

MAX_SIZE = 10**15  # 1 PB: no shard or memory limit comes near it
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _fail(message: str, code: int = 2):
    lines = [line.strip() for line in message.splitlines() if line.strip()]  # one line, whatever the message
    typer.echo(f"error: {'; '.join(lines) or 'failed'}", err=True)
    raise typer.Exit(code)


def _one_line(error: BaseException) -> str | None:
    """The line for an exception that is not a bug in qprune, or None for one that is."""
    if isinstance(error, BrokenPipeError):  # stdout closed early (`qprune ... | head`): click exits quietly
        return None
    if isinstance(error, OSError):
        reason = error.strerror or str(error) or type(error).__name__
        target = error.filename
        if target is None:
            return f"cannot write: {reason}" if error.errno in _WRITE_ERRORS else reason
        verb = "write" if error.errno in _WRITE_ERRORS else "access"
        return f"cannot {verb} {target}: {reason}"
    if isinstance(error, MemoryError):
        return (
            "out of memory: lower --samples, --seq-len or --batch-size, or give --max-memory (where the command has it)"
        )
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"out of GPU memory ({first}): lower --samples, --seq-len or --batch-size"
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(error, getattr(safetensors, "SafetensorError", ())):
        return f"damaged or unreadable safetensors file: {error}"
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Print what is not a bug as one line `error: ...` and exit with its status (see the module
    docstring); anything else keeps its traceback."""
    try:
        yield
    except QpruneError as error:
        _fail(error.for_cli(), getattr(error, "exit_code", 2))
    except Interrupted as error:
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted by SIGINT", 128 + signal.SIGINT)
    except Exception as error:  # re-raised below unless it is the user's or the OS's doing
        line = _one_line(error)
        if line is None:
            raise
        _fail(line)


def _warning_line(message, category, filename, lineno, line=None) -> str:
    text = message.for_cli() if isinstance(message, QpruneWarning) else str(message)
    return f"warning: {' '.join(text.split())}\n"


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """While the block runs, a warning that is shown (float16 on Qwen3, too little text, a target not met)
    reads as one line, `warning: ...`, naming flags. Only the format changes: which warnings show, and
    where they go (stderr; a test runner's record), is as the filters and handlers in force say."""
    previous = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


def parse_size(text: str, option: str = "--max-shard-size") -> int:
    """Bytes of a size like 500MB, 1.5GiB or 2000000: a finite positive number, at least one byte and
    at most `MAX_SIZE`. Exact arithmetic, no float: '9' * 400 is out of range, not an OverflowError."""
    shown = repr(text) if len(text) <= 40 else repr(text[:24] + "...")  # the message stays one short line
    match = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(3).upper() not in _UNITS:
        raise QpruneError(f"{option}: {shown} is not a size like 500MB or 5GB")
    whole, fraction, unit = match.group(1).lstrip("0"), (match.group(2) or "")[:30], match.group(3).upper()
    if len(whole) > len(str(MAX_SIZE)):  # too long to be in range whatever the unit (and to parse quickly)
        raise QpruneError(f"{option}: {shown} is out of range (more than 1 PB)")
    size = Fraction(int(whole or "0")) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)
    size *= _UNITS[unit]
    if size > MAX_SIZE:
        raise QpruneError(f"{option}: {shown} is out of range (more than 1 PB)")
    if size < 1:
        raise QpruneError(f"{option}: {shown} is not a size like 500MB or 5GB")
    return int(size)


def parse_memory(text: Optional[str]) -> Optional[int]:
    return None if text is None else parse_size(text, "--max-memory")


def read_plan(attn: Optional[str], mlp: Optional[str], plan_file: Optional[Path]):
    from qprune.plan import Plan

    if plan_file is not None:
        if attn or mlp:
            raise QpruneError("give either --plan or --attn/--mlp, not both")
        return Plan.from_json(plan_file)
    return Plan.parse(attn, mlp)


ATTN = typer.Option(None, "--attn", metavar="LAYERS", help="Layers whose attention block to prune, e.g. 0,5.")
MLP = typer.Option(None, "--mlp", metavar="LAYERS", help="Layers whose MLP block to prune, e.g. 3,7.")
PLAN = typer.Option(None, "--plan", metavar="FILE", help='JSON plan file: {"attn": [0, 5], "mlp": [3, 7]}.')
AS_JSON = typer.Option(False, "--json", help="Print a JSON object instead of the table or text.")
FORCE = typer.Option(False, "--force", help="Replace the output directory if it exists and is not empty.")


# Calibration / evaluation data, shared by scan and prune --auto: the flags of `DataSpec`'s fields.
DATA_PANEL = "Calibration data"


def option(settings: type, name: str, *, panel: str | None = None, help: str | None = None) -> Any:
    """The option of one field of a settings dataclass (`DataSpec`, `HealSettings`, `BenchSettings`,
    `Target`, `Constraints`): flag, default, help and metavar come from the field's `setting(...)`, so
    they live in one place. `panel`: the heading it is listed under in `--help`."""
    field = {field.name: field for field in fields(settings)}[name]
    meta = field.metadata
    default = meta["text"] if meta["text"] is not None else field.default
    return typer.Option(
        default,
        meta["flag"] or "--" + name.replace("_", "-"),
        metavar=meta["metavar"],
        help=help or meta["help"],
        rich_help_panel=panel,
    )


def in_panel(shared: Any, panel: str) -> Any:
    """A shared option (`DTYPE`, `MAX_MEMORY`) listed under `panel` in one command's `--help`."""
    listed = copy.copy(shared)
    listed.rich_help_panel = panel
    return listed


def show(result: Any, as_json: bool = False) -> None:
    """Print a command's result: its `text()`, or with --json its `to_dict()` as a JSON object. Every
    result type has both (PruneResult, SearchResult, ExportResult, ScanReport, EvalReport, BenchReport,
    HealResult, Description)."""
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.text())


def settings_from(settings: type, values: dict[str, Any]):
    """`settings` built from a command's parameters named as its fields (`locals()`), each parsed by
    its field's `parse` where the command line gives it as text; fields with no such parameter keep
    their defaults."""
    given = {}
    for field in fields(settings):
        if field.name in values:
            parse = field.metadata.get("parse")
            given[field.name] = parse(values[field.name]) if parse else values[field.name]
    return settings(**given)


DTYPE = typer.Option(
    "auto",
    "--dtype",
    metavar="DTYPE",
    help="Weights' dtype while measuring: auto (bfloat16 where the hardware computes it natively, else float32), "
    "bfloat16 or float32.",
)
MAX_MEMORY = typer.Option(
    None,
    "--max-memory",
    metavar="SIZE",
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
    metavar="MODE",
    help="Quantize the kept weights while loading: int8 or nf4 (bitsandbytes), torchao-int8, torchao-int4 (CUDA). "
    "Pruned blocks are never quantized. Needs bitsandbytes or torchao (the quant extra).",
)
LOAD_DTYPE = typer.Option(
    "auto",
    "--dtype",
    metavar="DTYPE",
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
