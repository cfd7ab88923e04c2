"""Tenant scale: one worker process serving many tenant queues, idle; then a new tenant."""

from __future__ import annotations

import re
import time

from bench.env import BenchError, Worker
from bench.procstat import amqp_connections, cpu_seconds, rss_mb, threads
from bench.report import Figure
from bench.systems import Taskyard

# The consumer's log line for each batch of queues it subscribes to.
CONSUMING = re.compile(r"Consuming (\d+) more queue")
SCENARIO = "6. Tenant scale (one worker process, 8 threads)"
# How often the worker looks for new tenants here (the default is 30 s, the promise 60 s):
# short, so that the pick-up figure measures the consumer, not the polling period.
REFRESH_SECONDS = "2"


def _serving(worker: Worker) -> int:
    if len(worker.pids()) < 2:
        raise BenchError(f"the worker forked no worker process:\n{worker.log()[-2000:]}")
    return worker.worker_pid()


def _wait_consuming(worker: Worker, queues: int, timeout: float = 180.0) -> None:
    """Wait until the worker's consumer has subscribed to `queues` queues (it logs each batch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(int(n) for n in CONSUMING.findall(worker.log())) >= queues:
            return
        time.sleep(0.2)
    raise BenchError(f"the worker did not consume {queues} queues in {timeout:.0f}s")


def run(taskyard: Taskyard, *, tenants: int, idle_seconds: float, settle: float) -> list[Figure]:
    """Connections, threads, RSS, idle CPU with `tenants` tenants; time to serve a new one."""
    have = len(taskyard.queues()) - 1
    if tenants > have:
        taskyard.add_tenants(tenants - have)
    taskyard.reset()
    worker = taskyard.start("scale", env={"TASKYARD_TENANT_REFRESH_SECONDS": REFRESH_SECONDS})
    try:
        _wait_consuming(worker, 2 * tenants)
        time.sleep(settle)
        pid = _serving(worker)
        connections = sum(amqp_connections(p) for p in worker.pids())
        cpu_before = cpu_seconds(pid)
        time.sleep(idle_seconds)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / idle_seconds * 100
        n_threads, rss = threads(pid), rss_mb(pid)
        (new_tenant,) = taskyard.add_tenants(1)
        sent_at = time.time()
        taskyard.send("probe", 1, tenant=new_tenant, sent_at=sent_at)
        done = worker.wait_done("probe", 1, timeout=60)
        pickup = done["first_start"] - sent_at
    finally:
        worker.stop()
    what = f"{tenants:,} tenants"
    return [
        Figure(
            SCENARIO,
            f"AMQP connections, {what}",
            "taskyard",
            "connections",
            [connections],
            at_most=4,
            higher_is_better=False,
        ),
        Figure(
            SCENARIO,
            f"threads, {what}",
            "taskyard",
            "threads",
            [float(n_threads)],
            higher_is_better=False,
        ),
        Figure(
            SCENARIO, f"RSS, {what}", "taskyard", "MiB", [rss], at_most=150, higher_is_better=False
        ),
        Figure(
            SCENARIO,
            f"idle CPU over {idle_seconds:.0f} s, {what}",
            "taskyard",
            "% of a core",
            [idle_cpu],
            at_most=5,
            higher_is_better=False,
        ),
        Figure(
            SCENARIO,
            "new tenant: send → start",
            "taskyard",
            "s",
            [pickup],
            higher_is_better=False,
            note=f"tenant refresh every {REFRESH_SECONDS} s",
        ),
    ]
