"""Tenant scale: one worker process serving many tenant queues, idle; then a new tenant."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from urllib.parse import urlsplit

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


def _sizes(listed: str, prefix: str) -> tuple[int, float]:
    sizes = [
        int(parts[1])
        for parts in (line.split() for line in listed.splitlines())
        if len(parts) == 2 and parts[0].startswith(prefix) and parts[1].isdigit()
    ]
    if not sizes:
        raise BenchError(f"no queue of RabbitMQ starts with {prefix!r}")
    return len(sizes), sum(sizes) / len(sizes)


def queue_memory(prefix: str) -> tuple[int, float]:
    """How many of the shared RabbitMQ's queues start with `prefix`, and their mean memory
    in bytes (`rabbitmqctl list_queues memory`: the queue process's, and for a quorum
    queue its Raft member's)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        raise BenchError("rabbitmqctl is not on PATH: the queues' memory cannot be read")
    listed = subprocess.run(
        [rabbitmqctl, "list_queues", "name", "memory", "-q", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return _sizes(listed, prefix)


def run(taskyard: Taskyard, *, tenants: int, idle_seconds: float, settle: float) -> list[Figure]:
    """The scenario on the shared RabbitMQ's classic queues, then on quorum queues on a
    RabbitMQ node of the scenario's own (thousands of quorum queues are a load the shared
    node's other users should not carry: one such run left the shared 3.10 node refusing
    AMQP handshakes), with RabbitMQ's memory per queue of each."""
    from tests.reliability.rabbit_node import RabbitNode

    have = len(taskyard.queues()) - 1
    if tenants > have:
        taskyard.add_tenants(tenants - have)
    figures = serve(taskyard, tenants=tenants, idle_seconds=idle_seconds, settle=settle)
    classic_queues, classic_bytes = queue_memory(taskyard.env.queue_prefix)
    node = RabbitNode()
    node.start()
    try:
        figures += serve(
            taskyard, tenants=tenants, idle_seconds=idle_seconds, settle=settle, quorum=node.url
        )
        listed = node.ctl("list_queues", "name", "memory", "--no-table-headers", timeout=300)
        quorum_queues, quorum_bytes = _sizes(listed, taskyard.env.queue_prefix)
    finally:
        node.stop()
    what = f"{tenants:,} tenants, three queues each"
    figures += [
        Figure(SCENARIO, f"RabbitMQ memory per queue, {what}", "taskyard classic", "KiB",
               [classic_bytes / 1024], higher_is_better=False,
               note=f"{classic_queues:,} queues on the shared node"),
        Figure(SCENARIO, f"RabbitMQ memory per queue, {what}", "taskyard quorum", "KiB",
               [quorum_bytes / 1024], higher_is_better=False, baseline="taskyard classic",
               note=f"{quorum_queues:,} queues on a node of their own (one member each)"),
    ]  # fmt: skip
    return figures


def serve(
    taskyard: Taskyard,
    *,
    tenants: int,
    idle_seconds: float,
    settle: float,
    quorum: str | None = None,
) -> list[Figure]:
    """Connections, threads, RSS, idle CPU with `tenants` tenants; time to serve a new one
    (classic queues only: the harness sends on classic queues)."""
    env = {"TASKYARD_TENANT_REFRESH_SECONDS": REFRESH_SECONDS}
    if quorum is not None:  # the URL of a node of its own
        env |= {"TASKYARD_QUEUE_TYPE": "quorum", "BROKER_URL": quorum}
    taskyard.reset()
    pickup: float | None = None
    worker = taskyard.start("scale-quorum" if quorum else "scale", env=env)
    try:
        _wait_consuming(worker, 2 * tenants)
        time.sleep(settle)
        pid = _serving(worker)
        port = urlsplit(quorum).port if quorum is not None else None
        connections = sum(
            amqp_connections(p) if port is None else amqp_connections(p, port)
            for p in worker.pids()
        )
        cpu_before = cpu_seconds(pid)
        time.sleep(idle_seconds)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / idle_seconds * 100
        n_threads, rss = threads(pid), rss_mb(pid)
        if quorum is None:
            (new_tenant,) = taskyard.add_tenants(1)
            sent_at = time.time()
            taskyard.send("probe", 1, tenant=new_tenant, sent_at=sent_at)
            done = worker.wait_done("probe", 1, timeout=60)
            pickup = done["first_start"] - sent_at
    finally:
        worker.stop()
    what = f"{tenants:,} tenants" + (", quorum queues" if quorum else "")
    figures = [
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
    ]
    if pickup is not None:
        figures.append(
            Figure(
                SCENARIO,
                "new tenant: send → start",
                "taskyard",
                "s",
                [pickup],
                higher_is_better=False,
                note=f"tenant refresh every {REFRESH_SECONDS} s",
            )
        )
    return figures
