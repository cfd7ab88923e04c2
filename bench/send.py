"""Send throughput: one producer, N sends, each confirmed by RabbitMQ before the next."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench import taskyard_actors
from bench.env import BROKER_URL
from bench.peers import dramatiq_app
from bench.report import Figure
from bench.systems import BareDramatiq, System, Taskyard

SCENARIO = "3. Send (one producer)"
# Messages per `send_many()` call, and calls per figure (one call alone is mostly its set-up).
BULK_BATCH = 500
BULK_CALLS = 4


def _timed(send: object, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        send()  # type: ignore[operator]
    return count / (time.perf_counter() - started)


def run(taskyard: Taskyard, dramatiq: BareDramatiq, *, count: int, runs: int) -> list[Figure]:
    """Taskyard's `actor.send()` (confirms and job record) beside bare Dramatiq's sends."""
    confirm = RabbitmqBroker(url=BROKER_URL, confirm_delivery=True)
    confirm.declare_queue(dramatiq_app.QUEUE)
    ty = Figure(
        SCENARIO,
        "actor.send() with confirms",
        "taskyard",
        "msgs/s",
        baseline="dramatiq-confirms",
        ratio_at_least=2.0,
        note="durable: its job record and outbox entry committed",
    )
    dc = Figure(SCENARIO, "actor.send() with confirms", "dramatiq-confirms", "msgs/s")
    dn = Figure(
        SCENARIO,
        "actor.send() with confirms",
        "dramatiq",
        "msgs/s",
        note="reference: without confirms",
    )
    send_many = getattr(taskyard_actors.bench_noop, "send_many", None)
    bulk = Figure(
        SCENARIO,
        f"bulk send: {BULK_CALLS} `send_many()` calls of {min(count, BULK_BATCH):,}, "
        "confirms and records",
        "taskyard",
        "msgs/s",
        at_least=8_000.0,
        note="" if send_many else "not built: Taskyard has no bulk send API",
    )
    systems: Sequence[System] = (taskyard, dramatiq)
    tenant = taskyard.tenants[0]
    for _ in range(runs):
        for system in systems:
            system.reset()
        ty.values.append(_timed(lambda: taskyard_send(taskyard, tenant), count))
        dc.values.append(_timed(lambda: confirm.enqueue(dramatiq_app.noop.message()), count))
        dn.values.append(_timed(lambda: dramatiq_app.noop.send(), count))
        if send_many is not None:
            batch = [{"tenant_id": tenant}] * min(count, BULK_BATCH)
            bulk.values.append(_timed(lambda: send_many(batch), BULK_CALLS) * len(batch))  # noqa: B023
    for system in systems:
        system.reset()
    confirm.close()
    return [ty, dc, dn, bulk]


def taskyard_send(taskyard: Taskyard, tenant: int) -> None:
    """One Taskyard send of the no-op job."""
    taskyard.send("noop", 1, tenant=tenant)
