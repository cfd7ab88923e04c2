"""Cooperative cancellation of a running job, on the real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from dramatiq import Worker
from dramatiq.broker import Broker
from sqlalchemy.orm import Session, sessionmaker

from actors.base import cancel_requested, taskyard_actor
from brokers import build_broker
from db.models import Job
from services.job_control import DEFAULT_STALE_AFTER, cancel_job
from services.workers import running_job
from settings import Settings
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_stub_broker(settings: Settings, migrated_database: str) -> Iterator[tuple[Broker, Worker]]:
    """The production middleware on the real PostgreSQL, with an in-process broker."""
    broker = build_broker(dataclasses.replace(settings, broker_url="stub://"))
    # Dramatiq's default poll (worker_timeout=1000): the in-process broker gives each of
    # the database's tenants a consumer thread, and a shorter poll on each of them kept
    # the machine's CPU busy.
    worker = Worker(broker, worker_timeout=1000, worker_threads=2)
    worker.start()
    yield broker, worker
    worker.stop()
    broker.close()
    # Queues declared after the stop (the tenant refresh) got consumer threads of their
    # own, which the stop did not know of: stop them too, or they poll for ever.
    for consumer in list(worker.consumers.values()):
        consumer.stop()


def shows_running(sessions: sessionmaker[Session], message_id: str) -> bool:
    """Whether a live worker's heartbeat says the job runs."""
    with sessions() as session:
        now = dt.datetime.now(dt.UTC)
        return (
            running_job(session, message_id, now=now, stale_after=DEFAULT_STALE_AFTER) is not None
        )


def test_running_job_sees_a_cancel_request_and_stops(
    pg_stub_broker: tuple[Broker, Worker],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    broker, worker = pg_stub_broker
    started = threading.Event()

    def patient(tenant_id: int) -> dict[str, object]:
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cancel_requested():
                return {"stopped": "on request"}
            time.sleep(0.05)
        return {"stopped": "timed out"}

    # Given a long job that checks for cancellation as it goes
    tenant_id = make_tenant("cancel-running")
    actor = taskyard_actor(name="patient", broker=broker)(patient)
    broker.declare_queue(settings.tenant_queue(tenant_id))
    message = actor.send(tenant_id=tenant_id)
    assert started.wait(10)
    # Running, as its worker's heartbeat says (within a beat of its start)
    wait_for(lambda: shows_running(sessions, message.message_id), what="the heartbeat")

    # When an operator cancels it while it runs
    with sessions.begin() as session:
        outcome = cancel_job(session, message.message_id)

    # Then the request is accepted and the actor sees it and stops early
    assert outcome == "running"
    broker.join(settings.tenant_queue(tenant_id), timeout=20_000)
    worker.join()
    with sessions() as session:
        job = session.get(Job, message.message_id)
        assert job is not None
        assert job.result == {"stopped": "on request"}
