"""A refused queue on the send path: what send() does, and what the outbox keeps.

A send is durable before it is published, so a refusal that comes after
send() returned leaves the job queued and its row in the outbox; the sweeper
tries the row again now and then, out of the way of the rows behind it, and
the job goes once the queue is put right.  Priorities are refused at send.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest
from dramatiq import Message
from sqlalchemy import Engine, create_engine, delete, func, pool, select, update
from sqlalchemy.orm import Session

import brokers
from actors.base import TaskyardActor, taskyard_actor
from db.models import Job, OutboxMessage
from middleware import outbox_sweeper
from middleware.outbox import Outbox, find_outbox
from services.errors import BrokerRefused, PriorityRefused
from services.tenants import create_tenant
from settings import Settings
from tests.integration.test_publisher_refusals import (
    AT_ONCE_SECONDS,
    count,
    declare_as_dramatiq,
)
from tests.support import delete_queues, private_database, queue_family, wait_for
from transport.rabbitmq import TaskyardRabbitmqBroker

pytestmark = pytest.mark.integration


@dataclass
class Side:
    """A broker of its own queue prefix (no worker consumes it), its actor and its outbox."""

    broker: Any
    probe: TaskyardActor
    outbox: Outbox
    settings: Settings
    engine: Engine

    def tenant(self) -> int:
        """A new committed tenant."""
        with Session(self.engine) as session, session.begin():
            return create_tenant(session, f"refusals-{uuid.uuid4().hex[:12]}").id

    def jobs(self, tenant_id: int) -> int:
        """How many job records the tenant has."""
        with Session(self.engine) as session:
            query = select(func.count()).where(Job.tenant_id == tenant_id)
            return int(session.scalar(query) or 0)

    def rows(self, queue: str) -> list[OutboxMessage]:
        """The outbox rows of a queue, oldest first."""
        with Session(self.engine) as session:
            query = select(OutboxMessage).where(OutboxMessage.queue == queue)
            return list(session.scalars(query.order_by(OutboxMessage.id)))


@pytest.fixture(scope="module")
def side_database() -> Iterator[str]:
    """A database of these tests' own: the shared worker sweeps the run database's outbox,
    and would take (and publish or postpone) the rows these tests sweep themselves."""
    with private_database() as url:
        yield url


@pytest.fixture
def side(settings: Settings, side_database: str) -> Iterator[Side]:
    side_settings = dataclasses.replace(
        settings,
        queue_prefix=f"{settings.queue_prefix}refusals{uuid.uuid4().hex[:6]}.",
        database_url=side_database,
    )
    engine = create_engine(side_database, poolclass=pool.NullPool)
    broker = brokers.build_broker(side_settings)

    @taskyard_actor(name=f"refusals_probe_{uuid.uuid4().hex[:6]}", broker=broker)
    def probe(tenant_id: int, n: int = 0) -> None:
        """Never run: nothing consumes this prefix."""

    outbox = find_outbox(broker)
    assert outbox is not None
    side = Side(broker, probe, outbox, side_settings, engine)
    tenants: list[int] = []
    monkey = pytest.MonkeyPatch()
    original = side.tenant

    def tenant() -> int:
        tenants.append(original())
        return tenants[-1]

    monkey.setattr(side, "tenant", tenant)
    yield side
    monkey.undo()
    outbox.clearer.flush(10)
    broker.close()
    queues = [side_settings.tenant_queue(t) for t in tenants]
    with Session(engine) as session, session.begin():
        session.execute(delete(OutboxMessage).where(OutboxMessage.queue.in_(queues)))
    delete_queues(settings.broker_url, queue_family(queues))
    engine.dispose()


def test_a_refused_queue_keeps_its_job_queued_and_refuses_the_next_send_at_once(
    side: Side,
) -> None:
    # Given a tenant whose queue another deployment declared with x-max-priority
    tenant = side.tenant()
    queue = side.settings.tenant_queue(tenant)
    declare_as_dramatiq(side.settings, queue, max_priority=10)
    # When a job is sent: durable first, so send() returns; RabbitMQ's refusal comes after
    first = side.probe.send(tenant_id=tenant, n=1)
    assert side.outbox.clearer.flush(10)
    # Then the job stays queued and its row waits in the outbox
    assert side.jobs(tenant) == 1
    assert [row.message_id for row in side.rows(queue)] == [first.message_id]
    # And the next send is refused at once with RabbitMQ's reason, and records nothing
    started = time.monotonic()
    with pytest.raises(BrokerRefused, match="406 PRECONDITION_FAILED") as refused:
        side.probe.send(tenant_id=tenant, n=2)
    assert time.monotonic() - started < AT_ONCE_SECONDS
    assert refused.value.queue_name == queue
    assert side.jobs(tenant) == 1
    assert side.broker.publisher.connections_made == 1


def test_the_sweeper_puts_refused_rows_aside_and_publishes_them_once_the_queue_is_fixed(
    side: Side, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given three due rows for a refused queue, ahead of one for a queue RabbitMQ takes
    refused_tenant, good_tenant = side.tenant(), side.tenant()
    refused_queue = side.settings.tenant_queue(refused_tenant)
    good_queue = side.settings.tenant_queue(good_tenant)
    declare_as_dramatiq(side.settings, refused_queue, max_priority=10)
    for n in range(3):
        assert side.outbox.park(side.broker, side.probe.message(tenant_id=refused_tenant, n=n), 0)
    assert side.outbox.park(side.broker, side.probe.message(tenant_id=good_tenant), 0)
    monkeypatch.setattr(side.outbox, "batch_size", 2)
    monkeypatch.setattr(outbox_sweeper, "REFUSED_ROWS", outbox_sweeper.RefusedRows())
    now = dt.datetime.now(dt.UTC)
    # When the outbox is swept, two rows a batch (what else is due goes too, as it would)
    with caplog.at_level(logging.WARNING, logger="Outbox"):
        side.outbox.sweep(side.broker, now=now)
    # Then the row behind the refused ones went out, and the refused ones wait for later
    assert side.rows(good_queue) == []
    assert count(side.settings, good_queue) == 1
    rows = side.rows(refused_queue)
    assert len(rows) == 3
    later = now + dt.timedelta(seconds=outbox_sweeper.REFUSED_RETRY_SECONDS)
    assert all(abs((row.publish_at - later).total_seconds()) < 5 for row in rows)
    # And one line says so, with RabbitMQ's reason
    lines = [r.getMessage() for r in caplog.records if r.name == "Outbox"]
    assert len(lines) == 1
    assert lines[0].startswith(f"RabbitMQ refused 3 outbox message(s) for queue(s) {refused_queue}")
    assert "x-max-priority" in lines[0]
    # When the queue is put right and the rows come due again
    delete_queues(side.settings.broker_url, queue_family([refused_queue]))
    monkeypatch.setattr(side.broker.publisher, "refused_hold_seconds", 0.0)
    with Session(side.engine) as session, session.begin():
        session.execute(
            update(OutboxMessage).where(OutboxMessage.queue == refused_queue).values(publish_at=now)
        )
    side.outbox.sweep(side.broker, now=dt.datetime.now(dt.UTC))
    # Then they are published, and their rows gone
    assert side.rows(refused_queue) == []
    wait_for(lambda: count(side.settings, refused_queue) == 3, timeout=10, what="3 messages")


def test_broker_priority_is_refused_at_send_and_nothing_is_recorded(side: Side) -> None:
    tenant = side.tenant()
    with pytest.raises(PriorityRefused, match="without x-max-priority"):
        side.probe.send_with_options(kwargs={"tenant_id": tenant}, broker_priority=5)
    assert side.jobs(tenant) == 0
    assert side.rows(side.settings.tenant_queue(tenant)) == []


def test_priorities_order_a_queue_declared_with_x_max_priority(settings: Settings) -> None:
    # Given Taskyard's broker built with Dramatiq's max_priority (its queues then have one)
    queue = f"{settings.queue_prefix}refusals.priority.{uuid.uuid4().hex[:8]}"
    broker = TaskyardRabbitmqBroker(url=settings.broker_url, max_priority=10)
    try:
        # When low-priority messages are sent, then a high-priority one
        low: list[Message[Any]] = [
            Message(queue, "noop", (), {"n": n}, {"broker_priority": 1}, message_id=f"low-{n}")
            for n in range(3)
        ]
        high: Message[Any] = Message(
            queue, "noop", (), {}, {"broker_priority": 9}, message_id="high"
        )
        broker.enqueue_many([(message, None) for message in [*low, high]])
    finally:
        broker.close()
    # Then RabbitMQ hands out the high-priority one first
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        _method, properties, _body = connection.channel().basic_get(queue, auto_ack=True)
        assert properties.message_id == "high"
    finally:
        connection.close()
        delete_queues(settings.broker_url, queue_family([queue]))
