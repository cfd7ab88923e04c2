"""Throughput: N jobs queued before the worker starts; jobs per second until all are done.

The clock runs from the first job's start to the last job's end as the worker
itself saw them (bench.bodies), so process start-up is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench.env import BenchError
from bench.report import Figure
from bench.systems import Procrastinate, System, Taskyard

SCENARIO = "1-2. Throughput (one worker process, 8 threads)"


def measure(system: System, kind: str, count: int, *, processes: int = 1, tag: str) -> float:
    """Jobs per second for `count` queued jobs of `kind`."""
    system.reset()
    system.send(kind, count)
    worker = system.start(tag, processes=processes)
    try:
        done = worker.wait_done(kind, count, timeout=30 + count / 20)
        if isinstance(system, Taskyard):
            _wait_recorded(system, count)
    finally:
        worker.stop()
    elapsed = done["last_end"] - done["first_start"]
    return count / max(elapsed, 1e-6)


def _wait_recorded(taskyard: Taskyard, count: int, timeout: float = 30.0) -> None:
    """Wait until every job record says succeeded (each commits just after its body)."""
    deadline = time.monotonic() + timeout
    while (done := taskyard.succeeded()) != count:
        if time.monotonic() > deadline:
            raise BenchError(f"taskyard recorded {done} of {count} jobs as succeeded")
        time.sleep(0.05)


def run(systems: Sequence[System], *, count: int, runs: int, two_processes: bool) -> list[Figure]:
    """Both job bodies on every system, `runs` times each, the systems back to back per run."""
    figures: list[Figure] = []
    # The engine issue's targets: one worker process, and two (None: reported, no target).
    for kind, what, target, target_two in (
        ("write_row", "DB-writing job", 0.9, 1.0),
        ("noop", "no-op job", 0.7, None),
    ):
        by_system: dict[str, Figure] = {}
        for system in systems:
            by_system[system.name] = Figure(
                SCENARIO,
                what,
                system.name,
                "jobs/s",
                baseline="dramatiq" if system.name != "dramatiq" else None,
                ratio_at_least=target if isinstance(system, Taskyard) else None,
            )
        two = {
            name: Figure(
                SCENARIO,
                f"{what}, 2 worker processes",
                name,
                "jobs/s",
                baseline="dramatiq" if name == "taskyard" else None,
                ratio_at_least=target_two if name == "taskyard" else None,
            )
            for name in ("taskyard", "dramatiq")
        }
        for run_no in range(runs):
            for system in systems:
                tag = f"{kind}-{run_no}"
                by_system[system.name].values.append(measure(system, kind, count, tag=tag))
                if two_processes and system.name in two and not isinstance(system, Procrastinate):
                    two[system.name].values.append(
                        measure(system, kind, count, processes=2, tag=f"{tag}-p2")
                    )
        figures += list(by_system.values())
        if two_processes:
            figures += list(two.values())
    return figures
