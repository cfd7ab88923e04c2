"""RabbitMQ stopped for 20 s under load: every send returns and runs once, workers reconnect.

A private node (`start_rabbit_node`) is halted and started again on the same
port with its data, so its durable queues and persistent messages come back.
A producer thread sends `process_resource` jobs (one per pending item of one
ingest) 20 times a second throughout; a real worker and a real scheduler
(`periodiq schedules`) run against the node and are never restarted.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

import brokers
from actors import process_resource, scheduler_tick
from actors.base import taskyard_actor
from db.models import IngestItem, Job, OutboxMessage, Resource
from middleware.db_session import find_middleware
from middleware.outbox import find_outbox
from middleware.tenant_routing import TenantRouting
from services.ingest import get_ingest
from settings import Settings
from tests.reliability.outage_support import new_ingest, resource_message
from tests.reliability.rabbit_node import RabbitNode
from tests.support import REPO, WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration]

OUTAGE_SECONDS = 20.0
SEND_INTERVAL_SECONDS = 0.05  # 20 jobs a second
ITEMS = 2_000
# What the scheduler logs for a tick it could not send during the outage (and goes on).
TICK_DROPPED = "Could not send the scheduler_tick tick"
# The promise: consuming again within 30 s of the restart.
RECONNECT_LIMIT_SECONDS = 30.0


@pytest.fixture
def node(start_rabbit_node: Callable[..., RabbitNode]) -> RabbitNode:
    """A private node of this test."""
    return start_rabbit_node()


@pytest.fixture
def database(reliability_database: str) -> Iterator[Engine]:
    """An engine on the reliability database."""
    engine = create_engine(reliability_database)
    yield engine
    engine.dispose()


@dataclasses.dataclass
class ProducerLog:
    """What the producer saw: sends that returned (with when), and those that raised (and why)."""

    returned: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    raised: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    slowest: float = 0.0


class Scheduler:
    """A `periodiq schedules` process of this test, stopped by its own pid."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        periodiq = Path(sys.executable).with_name("periodiq")
        self.proc = subprocess.Popen(
            [str(periodiq), "schedules"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """Everything the scheduler printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def test_rabbitmq_outage_loses_nothing_and_the_worker_reconnects_by_itself(
    node: RabbitNode,
    database: Engine,
    reliability_database: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    # Given a worker and a scheduler on the node, and a producer sending 20 jobs a second
    tenant_id, ingest_id = new_ingest(database, items=ITEMS, name="mq-outage")
    prefix = f"q{uuid.uuid4().hex[:8]}."
    env = worker_env(
        BROKER_URL=node.url,
        DATABASE_URL=reliability_database,
        # Not pinned to the tenant: a pinned worker serves no system queue (the tick's).
        TASKYARD_QUEUE_PREFIX=prefix,
    )
    worker = WorkerProcess(tmp_path / "worker.log", env)
    scheduler = Scheduler(tmp_path / "scheduler.log", env)
    producer = brokers.build_broker(
        dataclasses.replace(
            settings, broker_url=node.url, database_url=reliability_database, queue_prefix=prefix
        )
    )
    outbox, routing = find_outbox(producer), find_middleware(producer, TenantRouting)
    assert outbox is not None and routing is not None
    producer.declare_actor(process_resource)
    producer.declare_actor(scheduler_tick)
    queue = routing.queue_for(tenant_id)
    log = ProducerLog()
    stop = threading.Event()
    numbers = iter(range(ITEMS))

    def send_one() -> str:
        n = next(numbers)
        message = resource_message(tenant_id, ingest_id, n, queue)
        started = time.monotonic()
        try:
            outbox.send(producer, message, None)
        except Exception as exc:  # the producer's view: whatever it raises is counted
            log.raised.append((message.message_id, f"{type(exc).__name__}: {exc}"))
        else:
            log.returned.append((message.message_id, time.monotonic()))
        log.slowest = max(log.slowest, time.monotonic() - started)
        return message.message_id

    def produce() -> None:
        while not stop.wait(SEND_INTERVAL_SECONDS):
            send_one()

    def statuses(actor: str = "process_resource") -> dict[str, str]:
        with Session(database) as session:
            query = select(Job.message_id, Job.status).where(
                Job.actor == actor, Job.queue.startswith(prefix)
            )
            return {message_id: status for message_id, status in session.execute(query)}

    producer_thread = threading.Thread(target=produce, name="producer", daemon=True)
    try:
        worker.wait_ready()
        producer_thread.start()
        wait_for(lambda: "succeeded" in statuses().values(), timeout=20, what="jobs flowing")
        wait_for(lambda: len(log.returned) >= 100, timeout=20, what="100 sends")

        # When the node is stopped for 20 s under load and started again
        node.halt()
        time.sleep(OUTAGE_SECONDS)
        node.start()
        restarted = time.monotonic()

        # Then a job sent after the restart is consumed within 30 s, by the same worker
        def first_sent_after_restart() -> str | None:
            return next((m for m, at in log.returned if at >= restarted), None)

        fresh = wait_for(first_sent_after_restart, timeout=15, what="a send after the restart")
        wait_for(
            lambda: statuses().get(fresh) == "succeeded",
            timeout=RECONNECT_LIMIT_SECONDS,
            what="a job sent after the restart to succeed",
        )
        consumed_after = time.monotonic() - restarted
        # (Sending on for a while after the restart, as a producer would.)
        wait_for(lambda: time.monotonic() - restarted >= 5, timeout=10, what="5 s of sending")
        stop.set()
        producer_thread.join(40)
        assert not producer_thread.is_alive(), "the producer hung"

        # And every send that returned ends up succeeded
        def all_succeeded() -> bool:
            found = statuses()
            return all(found.get(m) == "succeeded" for m, _ in log.returned)

        wait_for(all_succeeded, timeout=40, what="every returned send to succeed")
        # And the scheduler's tick messages still flow: one sent now runs
        tick = scheduler_tick.message_with_options(kwargs={})
        tick = tick.copy(queue_name=routing.system_queue)
        outbox.send(producer, tick, None)
        try:
            wait_for(
                lambda: statuses("scheduler_tick").get(tick.message_id) == "succeeded",
                timeout=15,
                what="a scheduler tick to run",
            )
        except pytest.fail.Exception:
            status = statuses("scheduler_tick").get(tick.message_id)
            pytest.fail(f"tick {status}; worker log:\n{worker.log()[-4000:]}")
        assert worker.proc.poll() is None, "the worker exited"
        assert scheduler.proc.poll() is None, f"the scheduler exited:\n{scheduler.log()[-3000:]}"
    finally:
        stop.set()
        scheduler.stop()
        worker.stop()
        producer.close()
        for engine in (outbox.session_factory.kw["bind"], outbox.sends):
            engine.dispose()

    found = statuses()
    with Session(database) as session:
        items = dict(
            session.execute(
                select(IngestItem.resource_id, IngestItem.status).where(
                    IngestItem.ingest_id == ingest_id
                )
            ).all()
        )
        resources = set(
            session.scalars(select(Resource.resource_id).where(Resource.tenant_id == tenant_id))
        )
        # Counted from its items while it runs (services.ingest.get_ingest)
        ingest = get_ingest(session, ingest_id)
        args = {
            job.message_id: job.args["resource"]["id"]
            for job in session.scalars(select(Job).where(Job.queue == queue))
        }
    assert ingest is not None
    returned = [m for m, _ in log.returned]
    raised_outcomes = [found.get(m, "no record") for m, _ in log.raised]
    print(
        f"\nsends {len(returned) + len(log.raised)}: returned {len(returned)}, "
        f"raised {len(log.raised)} ({sorted(set(e.split(':')[0] for _, e in log.raised))}), "
        f"raised but delivered {raised_outcomes.count('succeeded')}; slowest send "
        f"{log.slowest:.1f}s; consuming again {consumed_after:.1f}s after the restart; "
        f"ticks the scheduler could not send {scheduler.log().count(TICK_DROPPED)}"
    )
    # Every send returned, promptly (durable in PostgreSQL, not waiting for RabbitMQ),
    # and succeeded
    assert not log.raised, log.raised[:5]
    assert log.slowest < 5.0
    assert all(found.get(m) == "succeeded" for m in returned)
    # None lost, and each effect once: the succeeded jobs are exactly the processed items
    done = {args[m] for m, status in found.items() if status == "succeeded"}
    assert len(done) == len([s for s in found.values() if s == "succeeded"])
    assert resources == done
    assert {r for r, s in items.items() if s == "processed"} == done
    assert ingest["processed"] == len(done)
    # The worker saw the outage, and settled what it finished meanwhile without an error
    assert "Consumer encountered a connection error" in worker.log()
    assert "Unhandled error during post_process_message" not in worker.log()


# The sizes: sends while the node is down, and the bound on what they may log.
SENDS_DURING_OUTAGE = 5_000
BULK_DURING_OUTAGE = 200
PRODUCER_LOG_LIMIT_BYTES = 100 * 1024


def test_sends_during_an_outage_return_log_little_and_run_once_when_rabbitmq_is_back(
    node: RabbitNode,
    database: Engine,
    reliability_database: str,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker on the node, serving a tenant with an ingest of pending items
    total = SENDS_DURING_OUTAGE + BULK_DURING_OUTAGE
    tenant_id, ingest_id = new_ingest(database, items=total, name="mq-durable")
    prefix = f"q{uuid.uuid4().hex[:8]}."
    env = worker_env(
        BROKER_URL=node.url,
        DATABASE_URL=reliability_database,
        TASKYARD_QUEUE_PREFIX=prefix,
        TASKYARD_TENANTS=str(tenant_id),
    )
    worker = WorkerProcess(tmp_path / "worker.log", env, threads=8)
    producer = brokers.build_broker(
        dataclasses.replace(
            settings, broker_url=node.url, database_url=reliability_database, queue_prefix=prefix
        )
    )
    outbox, routing = find_outbox(producer), find_middleware(producer, TenantRouting)
    assert outbox is not None and routing is not None
    # process_resource itself, declared on the producer's broker (its routing, its database)
    options = dict(process_resource.options)
    actor = taskyard_actor(
        name=process_resource.actor_name,
        broker=producer,
        tenant_scoped=options.pop("tenant_scoped"),
        **options,
    )(process_resource.fn)
    queue = routing.queue_for(tenant_id)
    sent: list[str] = []

    def processed() -> int:
        with Session(database) as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(IngestItem)
                    .where(IngestItem.ingest_id == ingest_id, IngestItem.status == "processed")
                )
                or 0
            )

    try:
        worker.wait_ready()
        # When the node is down, and the producer sends 5,000 jobs one by one and 200 in bulk
        node.halt()
        halted = time.monotonic()
        with caplog.at_level(logging.INFO):
            for n in range(SENDS_DURING_OUTAGE):
                message = resource_message(tenant_id, ingest_id, n, queue)
                outbox.send(producer, message, None)
                sent.append(message.message_id)
            bulk = [
                resource_message(tenant_id, ingest_id, n, queue).kwargs
                for n in range(SENDS_DURING_OUTAGE, total)
            ]
            sent += [m.message_id for m in actor.send_many(bulk)]
            sending = time.monotonic() - halted
            # (the producer's publisher gives up on them meanwhile, and says so)
            time.sleep(max(0.0, OUTAGE_SECONDS - sending))
            logged = len(caplog.text.encode())
        node.start()
        # Then every send returned, and the producer logged little about the outage
        assert len(sent) == total
        print(
            f"\n{total} sends during the outage took {sending:.1f}s; the producer logged "
            f"{logged} bytes"
        )
        assert logged < PRODUCER_LOG_LIMIT_BYTES, caplog.text[-3000:]
        # And once RabbitMQ is back, every job runs: the sweeper publishes what waited
        wait_for(lambda: processed() == total, timeout=120, what="every job to run")
    finally:
        worker.stop()
        producer.close()
        for engine in (outbox.session_factory.kw["bind"], outbox.sends):
            engine.dispose()
    # Exactly once: every job succeeded, each item processed once, no row left in the outbox
    with Session(database) as session:
        statuses = collections.Counter(
            session.scalars(select(Job.status).where(Job.message_id.in_(sent)))
        )
        resources = session.scalar(
            select(func.count()).select_from(Resource).where(Resource.tenant_id == tenant_id)
        )
        # Counted from its items while it runs (services.ingest.get_ingest)
        ingest = get_ingest(session, ingest_id)
        left = session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.queue == queue)
        )
    assert statuses == {"succeeded": total}
    assert resources == total and ingest is not None and ingest["processed"] == total
    assert left == 0
