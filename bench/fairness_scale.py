"""Fairness at scale: N noisy tenants' backlogs queued, quiet tenant B one job a second.

For each N, the backlog (split evenly among the N tenants) is queued before the
worker starts; B's probes are sent once the worker is ready.  Measured: B's
send → start delays, the peak of unacknowledged messages held by the worker
process (RabbitMQ's count for its connections, `rabbitmqctl list_channels`,
read about once a second), the no-op throughput over the backlog, and how long
the worker took to say it was ready.  Bare Dramatiq runs the same, with one
shared queue and with a queue per tenant (a connection and a thread per queue
and per delay queue, so only up to `PER_TENANT_MAX` tenants).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from bench.env import BenchError, Worker
from bench.latency import paced, percentile
from bench.peers import dramatiq_app
from bench.report import Figure
from bench.systems import BareDramatiq, System, Taskyard, engine_of
from bench.unacked import unacked_messages

SCENARIO = "5b. Fairness at scale (N noisy tenants' backlogs, tenant B one job a second)"
# Bare Dramatiq with a queue per tenant opens two connections and threads per tenant.
PER_TENANT_MAX = 100
# How often the harness asks RabbitMQ for the worker's unacknowledged messages.
UNACKED_EVERY_SECONDS = 1.0


class UnackedPeak:
    """The most unacknowledged messages RabbitMQ counted at once on a worker's connections."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="unacked-peak", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(UNACKED_EVERY_SECONDS):
            self.peak = max(self.peak, self.read())

    def read(self) -> int:
        """The worker's unacknowledged messages now, summed over its channels."""
        return unacked_messages(self.worker.pids())

    def stop(self) -> int:
        """Stop reading; the peak, including one last reading."""
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.read())


class _Run(dict[str, float]):
    """One run's figures: B's jobs counted, p50, p99, max (ms), unacked, jobs/s, ready (s)."""


def _what(tenants: int, each: int) -> str:
    return f"{tenants:,} noisy tenant{'s' if tenants > 1 else ''}, {each:,} queued each"


def _tenant_ids(taskyard: Taskyard, count: int) -> list[int]:
    """`count` noisy tenants (never B, `taskyard.tenants[1]`), created as needed."""
    quiet = taskyard.tenants[1]
    with engine_of(taskyard.env).connect() as conn:
        ids = [i for i in conn.scalars(text("SELECT id FROM tenants ORDER BY id")) if i != quiet]
    if len(ids) < count:
        ids += taskyard.add_tenants(count - len(ids))
    return ids[:count]


def _measure(
    system: System,
    worker_argv_env: dict[str, str],
    backlog: int,
    probes: int,
    tag: str,
    queue: Any,
    probe_kwargs: dict[str, Any],
    processes: int = 1,
) -> _Run:
    """Queue the backlog, start the worker, send B's probes; the run's figures."""
    queue()
    started = time.monotonic()
    worker = system.launch(tag, processes=processes, env=worker_argv_env)
    peak: UnackedPeak | None = None
    try:
        worker.wait_ready(system.ready, timeout=120)
        ready = time.monotonic() - started
        peak = UnackedPeak(worker)
        paced(system, probes, 1, **probe_kwargs)
        done = worker.wait_done("probe", probes, timeout=120 + backlog / 50)
        noop = worker.wait_done("noop", backlog, timeout=120 + backlog / 50)
        unacked = peak.stop()
    finally:
        if peak is not None:
            peak._stop.set()
        worker.stop()
    # Only B's jobs sent while the backlog still drained: after it, B waits for nothing.
    # (A backlog gone before B's first job, as in a smoke run, leaves all of them.)
    pairs = zip(done["starts"], done["delays"], strict=True)
    during = [delay * 1000 for start, delay in pairs if start - delay < noop["last_end"]]
    delays = during or [delay * 1000 for delay in done["delays"]]
    return _Run(
        counted=float(len(during)),
        p50=percentile(delays, 50),
        p99=percentile(delays, 99),
        max=max(delays),
        unacked=float(unacked),
        rate=backlog / max(noop["last_end"] - noop["first_start"], 1e-6),
        ready=ready,
    )


def _taskyard(taskyard: Taskyard, n: int, backlog: int, probes: int, processes: int = 1) -> _Run:
    noisy = _tenant_ids(taskyard, n)
    per_tenant = backlog // n
    taskyard.reset()

    def queue() -> None:
        for tenant in noisy:
            taskyard.send("noop", per_tenant, tenant=tenant)

    try:
        return _measure(
            taskyard,
            {},
            per_tenant * n,
            probes,
            f"fair-scale-{n}-{processes}",
            queue,
            {"tenant": taskyard.tenants[1]},
            processes,
        )
    finally:
        taskyard.reset()


def _dramatiq(dramatiq: BareDramatiq, n: int | None, backlog: int, probes: int) -> _Run:
    """Bare Dramatiq: one shared queue (`n` None) or a queue for each of `n` tenants and B."""
    dramatiq.reset()
    if n is None:
        system: System = dramatiq
        queues: list[str] = []
        probe_kwargs: dict[str, Any] = {}
        count = backlog

        def queue() -> None:
            dramatiq.send("noop", backlog)

    else:
        system = PerTenantDramatiq(dramatiq.env, n)
        queues = system.queues()
        per_tenant = backlog // n
        count = per_tenant * n
        probe_kwargs = {"queue": queues[-1]}

        def queue() -> None:
            for name in queues[:-1]:
                system.send("noop", per_tenant, queue=name)

    try:
        return _measure(
            system,
            {"BENCH_DRAMATIQ_TENANT_QUEUES": str(n or 0)},
            count,
            probes,
            f"fair-scale-dq-{n or 'shared'}",
            queue,
            probe_kwargs,
        )
    finally:
        dramatiq.reset()
        if queues:
            dramatiq.env.delete_queues(queues)


class PerTenantDramatiq(BareDramatiq):
    """Bare Dramatiq consuming a queue per tenant (`bench.peers.dramatiq_tenants_app`)."""

    def __init__(self, env: Any, tenants: int) -> None:
        super().__init__(env)
        self.tenants = tenants

    def argv(self, processes: int) -> list[str]:
        argv = super().argv(processes)
        argv[1] = "bench.peers.dramatiq_tenants_app:broker"
        return argv

    def send(self, kind: str, count: int, queue: str = "", **kwargs: Any) -> None:
        actor = getattr(dramatiq_app, kind)
        for _ in range(count):
            dramatiq_app.broker.enqueue(actor.message(**kwargs).copy(queue_name=queue))

    def queues(self) -> list[str]:
        from bench.peers.dramatiq_tenants_app import tenant_queues

        return tenant_queues(self.tenants)


def run(
    taskyard: Taskyard,
    dramatiq: BareDramatiq,
    *,
    tenants: Sequence[int],
    backlog: int,
    probes: int,
) -> list[Figure]:
    """Each N's figures for Taskyard; bare Dramatiq's shared queue and queue per tenant."""
    figures: list[Figure] = []
    rates: dict[int, float] = {}

    def add(system: str, what: str, result: _Run, note: str, *, targets: bool) -> None:
        figures.extend(
            [
                Figure(
                    SCENARIO,
                    f"B's p99 send → start, {what}",
                    system,
                    "ms",
                    [result["p99"]],
                    at_most=1000.0 if targets else None,
                    higher_is_better=False,
                    note=f"p50 {result['p50']:.0f}, max {result['max']:.0f} ms, "
                    f"{result['counted']:.0f} of B's jobs sent while the backlog drained{note}",
                ),
                Figure(
                    SCENARIO,
                    f"peak unacknowledged in the worker process, {what}",
                    system,
                    "messages",
                    [result["unacked"]],
                    higher_is_better=False,
                    note="bound: TASKYARD_PREFETCH default, 64 for 8 threads"
                    if targets
                    else note[2:],
                ),
                Figure(
                    SCENARIO,
                    f"no-op throughput, {what}",
                    system,
                    "jobs/s",
                    [result["rate"]],
                    note=note[2:],
                ),
                Figure(
                    SCENARIO,
                    f"worker ready after start, {what}",
                    system,
                    "s",
                    [result["ready"]],
                    at_most=5.0 if targets and what.startswith("1,000 ") else None,
                    higher_is_better=False,
                    note=note[2:],
                ),
            ]
        )

    for n in tenants:
        per = backlog // n
        result = _taskyard(taskyard, n, backlog, probes)
        rates[n] = result["rate"]
        add("taskyard", _what(n, per), result, "", targets=True)
    if len(rates) > 1:
        most, one = max(rates), min(rates)
        figures.append(
            Figure(
                SCENARIO,
                f"no-op throughput with {most:,} backlogged tenants ÷ with {one:,}",
                "taskyard",
                "x",
                [rates[most] / rates[one]],
                at_least=0.9,
            )
        )
    # Several processes, each with its own bound and fair queue: the largest N up to 100.
    several = [n for n in tenants if n <= PER_TENANT_MAX]
    if several:
        n = max(several)
        result = _taskyard(taskyard, n, backlog, probes, processes=2)
        what = f"{_what(n, backlog // n)}, 2 worker processes"
        add("taskyard", what, result, ", unacknowledged summed over both", targets=False)
    shared = _dramatiq(dramatiq, None, backlog, probes)
    add("dramatiq", f"{backlog:,} queued", shared, ", one shared queue", targets=False)
    for n in tenants:
        if 1 < n <= PER_TENANT_MAX:
            per = backlog // n
            result = _dramatiq(dramatiq, n, backlog, probes)
            what = _what(n, per)
            add("dramatiq", what, result, ", a queue per tenant", targets=False)
    if not figures:
        raise BenchError("no tenant count to measure")
    return figures
