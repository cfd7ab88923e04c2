"""A stub broker and SQLite wired like production, for the send-path tests (sweeper idle)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message, Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.base import TaskyardActor, taskyard_actor
from db.models import Job, OutboxMessage, Tenant
from middleware.db_session import find_middleware
from middleware.outbox import Outbox
from settings import Settings
from tests.unit.middleware.stub_world import drain, stub_world


@dataclass
class Harness:
    """The broker, its worker, its Outbox middleware, and a way to read the database."""

    broker: StubBroker
    worker: Worker
    outbox: Outbox
    sessions: sessionmaker[Session]
    settings: Settings

    def drain(self) -> None:
        """Run every queued message, retries included, to completion."""
        drain(self.broker, self.worker)

    def job(self, message_id: str) -> Job | None:
        """The job record of one message, if any."""
        with self.sessions() as session:
            return session.get(Job, message_id)

    def status(self, message_id: str) -> str | None:
        """The status of one message's job record, if any."""
        job = self.job(message_id)
        return job.status if job is not None else None

    def outbox_rows(self) -> list[OutboxMessage]:
        """Every row of the outbox."""
        with self.sessions() as session:
            return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))

    def waiting(self, queue: str) -> int:
        """Messages waiting in a queue of the stub broker."""
        return self.broker.queues[queue].qsize() if queue in self.broker.queues else 0

    def tenant_names(self) -> list[str]:
        """Names of every tenant, the effect the test actors write."""
        with self.sessions() as session:
            return sorted(session.scalars(select(Tenant.name)))

    def declare(self, name: str, fn: Callable[..., Any], **options: Any) -> TaskyardActor:
        """Declare a test actor on this broker, and serve tenant 1's queue."""
        actor = taskyard_actor(name=name, broker=self.broker, **options)(fn)
        self.broker.declare_queue(self.settings.tenant_queue(1))
        return actor


@contextmanager
def outbox_harness(tmp_path: Path) -> Iterator[Harness]:
    """A fresh database with tenant 1, a broker whose long-delay threshold is 1 s."""

    def sweep_by_hand(broker: StubBroker) -> None:
        outbox = find_middleware(broker, Outbox)
        assert outbox is not None
        # The tests sweep by hand, with a clock of their own.
        outbox.poll_seconds = 3600
        outbox.delay_max_seconds = 1

    with stub_world(tmp_path, prepare=sweep_by_hand) as (broker, worker, sessions, settings):
        outbox = find_middleware(broker, Outbox)
        assert outbox is not None
        yield Harness(broker, worker, outbox, sessions, settings)


def spy_on_publish(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Record, for each published message, its job status and whether it is in the outbox."""
    seen: list[tuple[str, Any]] = []
    enqueue = harness.broker.taskyard_publish

    def spying(message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        in_outbox = message.message_id in [r.message_id for r in harness.outbox_rows()]
        seen.append((message.actor_name, (harness.status(message.message_id), in_outbox)))
        return enqueue(message, delay=delay)

    monkeypatch.setattr(harness.broker, "taskyard_publish", spying)
    return seen
