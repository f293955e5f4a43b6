"""The exception qprune raises for bad input, the warnings it gives, and the one for a stopping signal.

The CLI prints a `QpruneError` as a single line, without a traceback, and exits non-zero; anything
else escaping a command is a bug and keeps its traceback (see `qprune.cli.options.user_errors` for the
OS and library errors it also reports in one line).

A message names the argument at fault in braces, by its Python name: `QpruneError("{seq_len} must be
at least 2")`. Python users read "seq_len must be at least 2"; the CLI shows the flag instead,
"--seq-len must be at least 2" (`for_cli`), so neither audience reads the other's vocabulary.
`warn("...")` does the same for a `QpruneWarning`: results were produced, but read them with care.

`Interrupted` is what SIGTERM and SIGHUP raise while a command runs (the CLI installs the handlers):
a `BaseException`, like the `KeyboardInterrupt` of SIGINT, so no `except Exception` swallows it and
every `finally` on the way out runs (temporary files are removed).
"""

from __future__ import annotations

import re
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_ARGUMENT = re.compile(r"\{([a-z][a-z0-9_]*)\}")
# Python parameters whose flag is not simply `--` + the name with dashes.
_FLAGS = {"batches": "--batch", "as_json": "--json", "plan_file": "--plan", "experts": "--plan's experts"}


def flag(name: str) -> str:
    """The command-line flag of a Python parameter: seq_len -> --seq-len."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _for_python(template: str) -> str:
    return _ARGUMENT.sub(lambda m: m.group(1), template)


def _for_cli(template: str) -> str:
    return _ARGUMENT.sub(lambda m: flag(m.group(1)), template)


class QpruneError(Exception):
    """A problem with what the user asked for, stated in one line that names it."""

    def __init__(self, message: str) -> None:
        self.template = message
        super().__init__(_for_python(message))

    def for_cli(self) -> str:
        """The message with command-line flags where the library names parameters."""
        return _for_cli(self.template)


class QpruneWarning(UserWarning):
    """A result that is computed but may mislead (too little text, a target not met); names arguments
    in braces like `QpruneError`."""

    def __init__(self, message: str) -> None:
        self.template = message
        super().__init__(_for_python(message))

    def for_cli(self) -> str:
        return _for_cli(self.template)


def warn(message: str, stacklevel: int = 2) -> None:
    """Warn with a `QpruneWarning`; the CLI prints it as one line, `warning: ...`, with flags."""
    warnings.warn(QpruneWarning(message), stacklevel=stacklevel + 1)


class Interrupted(BaseException):
    """A signal (SIGTERM, SIGHUP) stopped the run; cleanup ran on the way out. Exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise `Interrupted` (as SIGINT raises KeyboardInterrupt),
    so every `finally` and context manager on the way out cleans up. Only the first signal raises:
    further ones are ignored while that cleanup runs (SIGKILL still stops the process). Signal
    handlers can only be set from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]

    def interrupt(signum, _frame):
        for other in signals:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
