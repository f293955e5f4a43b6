"""The one exception type qprune raises for bad input.

The CLI prints a `QpruneError` as a single line, without a traceback, and exits non-zero; anything
else escaping a command is a bug and keeps its traceback.

A message names the argument at fault in braces, by its Python name: `QpruneError("{seq_len} must be
at least 2")`. Python users read "seq_len must be at least 2"; the CLI shows the flag instead,
"--seq-len must be at least 2" (`for_cli`), so neither audience reads the other's vocabulary.
"""

from __future__ import annotations

import re

_ARGUMENT = re.compile(r"\{([a-z][a-z0-9_]*)\}")
# Python parameters whose flag is not simply `--` + the name with dashes.
_FLAGS = {"batches": "--batch"}


def flag(name: str) -> str:
    """The command-line flag of a Python parameter: seq_len -> --seq-len."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


class QpruneError(Exception):
    """A problem with what the user asked for, stated in one line that names it."""

    def __init__(self, message: str) -> None:
        self.template = message
        super().__init__(_ARGUMENT.sub(lambda m: m.group(1), message))

    def for_cli(self) -> str:
        """The message with command-line flags where the library names parameters."""
        return _ARGUMENT.sub(lambda m: flag(m.group(1)), self.template)
