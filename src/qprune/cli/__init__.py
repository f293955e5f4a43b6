"""The `qprune` command line: `app.py` holds the commands (each parses its options and calls one
library function), `demo.py` the guided demo. Only typer is imported here, so `qprune --help` is instant."""

from qprune.cli.app import app, main

__all__ = ["app", "main"]
