"""`python -m cli`: the same as the `taskyard` console script."""

from __future__ import annotations

from cli import main

main(prog_name="taskyard")
