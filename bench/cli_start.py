"""Command line: the wall time of one `taskyard` call, from a cold process to its exit.

An operator runs `taskyard jobs list` again and again; most of a call is the
interpreter importing what the command needs.  Each call is a new process,
its output read and thrown away, on this run's database (the pre-fill, when the
run made one).  The baseline is the interpreter's own start (`python -c pass`)
in the same run; `jobs list` is also timed the usual way, through SQLAlchemy
(its quick read declined), to show what the quick read saves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.env import BenchError
from bench.report import Figure

SCENARIO = "13. Command line (wall time of one call, a new process each)"
INTERPRETER = "python -c pass"
# `jobs list` with its quick read declined, as on a database it cannot read quickly.
THROUGH_SQLALCHEMY = (
    "import cli.quick\n"
    "def declined(*args, **kwargs):\n"
    "    raise cli.quick.QuickUnavailable('declined by the bench')\n"
    "cli.quick.read_quickly = declined\n"
    "from cli import main\n"
    "main(['jobs', 'list'], prog_name='taskyard')\n"
)


def _seconds(command: list[str]) -> float:
    """One call's wall time; a call that fails stops the scenario."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def run(*, calls: int) -> list[Figure]:
    """The median of `calls` cold calls of each command, interleaved so that drift hits all."""
    taskyard = str(Path(sys.executable).with_name("taskyard"))
    commands = {
        INTERPRETER: [sys.executable, "-c", "pass"],
        "help": [taskyard, "--help"],
        "list": [taskyard, "jobs", "list"],
        "list (SQLAlchemy)": [sys.executable, "-c", THROUGH_SQLALCHEMY],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(calls):
        for name, command in commands.items():
            times[name].append(_seconds(command))
    figures: list[Figure] = []
    for what, name, bound in (
        ("taskyard --help", "help", 0.3),
        ("taskyard jobs list (first page)", "list", 0.5),
    ):
        figures.append(
            Figure(
                SCENARIO, what, INTERPRETER, "s", list(times[INTERPRETER]), higher_is_better=False
            )
        )
        figures.append(
            Figure(
                SCENARIO, what, "taskyard", "s", times[name], baseline=INTERPRETER,
                at_most=bound, higher_is_better=False,
            )
        )  # fmt: skip
    figures.append(
        Figure(
            SCENARIO, "taskyard jobs list (first page)", "taskyard, through SQLAlchemy", "s",
            times["list (SQLAlchemy)"], baseline=INTERPRETER, higher_is_better=False,
            note="the quick read declined: the usual path, for comparison",
        )
    )  # fmt: skip
    return figures
