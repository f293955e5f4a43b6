"""The one exception type qprune raises for bad input.

The CLI prints a `QpruneError` as a single line, without a traceback, and exits non-zero; anything
else escaping a command is a bug and keeps its traceback.
"""


class QpruneError(Exception):
    """A problem with what the user asked for, stated in one line that names it."""
