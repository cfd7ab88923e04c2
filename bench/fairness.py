"""Fairness: tenant A's backlog queued, tenant B's jobs one every 100 ms; B's start delay."""

from __future__ import annotations

from bench.latency import paced, percentile
from bench.report import Figure
from bench.systems import BareDramatiq, System, Taskyard

SCENARIO = "5. Fairness (tenant A's backlog, tenant B one job every 100 ms)"


def _p99(system: System, backlog: int, probes: int, tag: str, **kwargs: object) -> float:
    system.reset()
    if isinstance(system, Taskyard):
        system.send("noop", backlog, tenant=system.tenants[0])
    else:
        system.send("noop", backlog)
    worker = system.start(tag)
    try:
        paced(system, probes, 10, **kwargs)
        done = worker.wait_done("probe", probes, timeout=120 + backlog / 50)
    finally:
        worker.stop()
    system.reset()
    return percentile([d * 1000 for d in done["delays"]], 99)


def run(
    taskyard: Taskyard, dramatiq: BareDramatiq, *, backlog: int, probes: int, runs: int
) -> list[Figure]:
    """Tenant B's p99 start delay on Taskyard, and on bare Dramatiq's one shared queue."""
    ty = Figure(
        SCENARIO,
        f"B's p99 start delay, A's {backlog:,} queued",
        "taskyard",
        "ms",
        at_most=1000.0,
        higher_is_better=False,
    )
    dq = Figure(
        SCENARIO,
        f"B's p99 start delay, A's {backlog:,} queued",
        "dramatiq",
        "ms",
        higher_is_better=False,
        note="one shared queue",
    )
    for run_no in range(runs):
        ty.values.append(
            _p99(taskyard, backlog, probes, f"fair-{run_no}", tenant=taskyard.tenants[1])
        )
        dq.values.append(_p99(dramatiq, backlog, probes, f"fair-{run_no}"))
    return [ty, dq]
