"""`python -m qprune.cli ...`, as the `qprune` command."""

from qprune.cli.app import main

main()
