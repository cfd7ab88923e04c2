"""Memory: a worker's RSS after N jobs and after 10 N (a leak grows with the jobs run)."""

from __future__ import annotations

import threading

from bench.env import BenchError
from bench.procstat import rss_mb
from bench.report import Figure
from bench.systems import System

SCENARIO = "8. Memory (worker RSS as jobs accumulate)"


def rss_growth(system: System, small: int, large: int) -> tuple[float, float]:
    """RSS in MiB after `small` and after `large` no-op jobs, one worker throughout."""
    system.reset()
    system.send("noop", small)
    worker = system.start("memory")
    try:
        # The rest is sent while the worker runs, so sending and running overlap.
        sender = threading.Thread(target=system.send, args=("noop", large - small))
        sender.start()
        worker.wait_done("noop", small, timeout=120 + small / 20)
        pid = worker.worker_pid()
        after_small = rss_mb(pid)
        sender.join()
        worker.wait_done("noop", large, timeout=120 + large / 20)
        after_large = rss_mb(pid)
    finally:
        worker.stop()
    system.reset()
    if after_small <= 0:
        raise BenchError("no RSS read")
    return after_small, after_large


def run(systems: list[System], *, small: int, large: int) -> list[Figure]:
    """Growth of RSS from `small` to `large` jobs, per system (one run)."""
    figures = []
    for system in systems:
        before, after = rss_growth(system, small, large)
        figures += [
            Figure(SCENARIO, f"RSS after {small:,} jobs", system.name, "MiB", [before]),
            Figure(SCENARIO, f"RSS after {large:,} jobs", system.name, "MiB", [after]),
            Figure(
                SCENARIO,
                f"growth {small:,} → {large:,} jobs",
                system.name,
                "%",
                [(after - before) / before * 100],
                at_most=10.0 if system.name == "taskyard" else None,
                higher_is_better=False,
            ),
        ]
    return figures
