"""A settings field that also says how the command line shows it: each setting's default and help text
live once, in its dataclass (`DataSpec`, `HealSettings`, `BenchSettings`, `Target`, `Constraints`), and
`cli/options.option` makes the flag from it.

    @dataclass(frozen=True)
    class BenchSettings:
        prompt_len: int = setting(512, "Prompt tokens per sequence (prefill).", metavar="N")

This module imports nothing heavy: the CLI reads these fields to build `--help` without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any


def setting(
    default: Any,
    help: str,
    *,
    metavar: str | None = None,
    flag: str | None = None,
    text: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with its CLI help. `flag`: the option's name when it is not `--field-name`;
    `text` and `parse`: for a value typed as text on the command line (`"1,8"`) and parsed into the
    field's type, the default as typed and the parser."""
    return field(
        default=default, metadata={"help": help, "metavar": metavar, "flag": flag, "text": text, "parse": parse}
    )
