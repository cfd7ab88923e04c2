"""Latency: probes sent at a steady rate to a running worker; the delay from send to start."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from bench.report import Figure
from bench.systems import System

SCENARIO = "4. Latency, send → start, at 200 jobs/s"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def paced(system: System, count: int, rate: float, **kwargs: object) -> None:
    """Send `count` probes at `rate` per second, each stamped just before its send."""
    started = time.time()
    for i in range(count):
        pause = started + i / rate - time.time()
        if pause > 0:
            time.sleep(pause)
        system.send("probe", 1, sent_at=time.time(), **kwargs)


def delays(system: System, count: int, rate: float, tag: str) -> list[float]:
    """Send-to-start delays, in ms, of `count` probes sent at `rate`.

    Every system's producer sends one probe first, which is purged before the
    worker starts: the probes time a running producer, not its first connects.
    The purge waits until that probe is in the queue (Taskyard publishes after
    `send()` returns): left in it, it would be timed as the run's first probe,
    from before the worker started.
    """
    system.send("probe", 1, sent_at=time.time())
    system.settle_sends()
    system.reset()
    worker = system.start(tag, settle=True)
    try:
        paced(system, count, rate)
        done = worker.wait_done("probe", count, timeout=60 + count / rate)
    finally:
        worker.stop()
    return [d * 1000 for d in done["delays"]]


def run(systems: Sequence[System], *, count: int, runs: int, rate: float = 200) -> list[Figure]:
    """p50 and p99 send-to-start delay of every system."""
    figures: dict[tuple[str, str], Figure] = {}
    for name in ("p50", "p99"):
        for system in systems:
            is_taskyard = system.name == "taskyard"
            figures[(name, system.name)] = Figure(
                SCENARIO,
                name,
                system.name,
                "ms",
                baseline="dramatiq" if system.name != "dramatiq" else None,
                at_most=(2.0 if name == "p50" else 5.0) if is_taskyard else None,
                higher_is_better=False,
            )
    for run_no in range(runs):
        for system in systems:
            measured = delays(system, count, rate, f"latency-{run_no}")
            figures[("p50", system.name)].values.append(percentile(measured, 50))
            figures[("p99", system.name)].values.append(percentile(measured, 99))
    return list(figures.values())
