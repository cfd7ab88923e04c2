"""Long delays wait in the outbox, not in worker memory; cancelled jobs never run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.errors import ConnectionClosed
from sqlalchemy import select

from db.models import Tenant
from middleware.context import current_session
from middleware.db_session import find_middleware
from middleware.outbox import sweep_outbox
from middleware.tenant_routing import TenantRouting
from services.errors import TransientError
from services.job_control import cancel_job, is_cancel_requested
from tests.unit.middleware.outbox_harness import Harness, outbox_harness

LATER = dt.timedelta(hours=1)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with outbox_harness(tmp_path) as harness:
        yield harness


def test_long_delay_waits_in_the_outbox_and_runs_once_when_due(harness: Harness) -> None:
    actor = harness.declare("later", lambda tenant_id: None)
    queue = harness.settings.tenant_queue(1)

    message = actor.send_with_options(kwargs={"tenant_id": 1}, delay=LATER)

    [row] = harness.outbox_rows()
    assert row.message_id == message.message_id
    assert harness.waiting(queue) == harness.waiting(f"{queue}.DQ") == 0
    assert harness.status(message.message_id) == "queued"
    due = row.publish_at.replace(tzinfo=dt.UTC) if row.publish_at.tzinfo is None else row.publish_at
    assert due - dt.datetime.now(dt.UTC) > LATER - dt.timedelta(minutes=1)

    assert sweep_outbox(harness.broker, now=due - dt.timedelta(seconds=1)) == 0
    assert sweep_outbox(harness.broker, now=due) == 1
    harness.drain()

    job = harness.job(message.message_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 1)
    assert harness.outbox_rows() == []


def test_short_delay_stays_in_the_brokers_delay_queue(harness: Harness) -> None:
    actor = harness.declare("soon", lambda tenant_id: None)

    message = actor.send_with_options(kwargs={"tenant_id": 1}, delay=200)
    assert harness.outbox_rows() == []
    harness.drain()

    assert harness.status(message.message_id) == "succeeded"


def test_retry_with_a_long_backoff_waits_in_the_outbox(harness: Harness) -> None:
    calls: list[int] = []

    def flaky(tenant_id: int) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("come back in an hour", retry_after=LATER.total_seconds())

    message = harness.declare("flaky_later", flaky).send(tenant_id=1)
    harness.drain()

    [row] = harness.outbox_rows()
    assert row.message_id == message.message_id
    assert harness.status(message.message_id) == "retrying"
    assert sweep_outbox(harness.broker, now=dt.datetime.now(dt.UTC) + LATER * 2) == 1
    harness.drain()

    job = harness.job(message.message_id)
    assert job is not None and (job.status, job.attempts, len(calls)) == ("succeeded", 2, 2)


def test_cancelled_delayed_job_never_runs(harness: Harness) -> None:
    ran: list[int] = []
    actor = harness.declare("cancel_me", lambda tenant_id: ran.append(1))
    parked = actor.send_with_options(kwargs={"tenant_id": 1}, delay=LATER)
    in_queue = actor.send_with_options(kwargs={"tenant_id": 1}, delay=300)

    with harness.sessions.begin() as session:
        statuses = [cancel_job(session, m.message_id) for m in (parked, in_queue)]
    # The worker's poll (every second) learns of the requests before the delay ends.
    routing = find_middleware(harness.broker, TenantRouting)
    assert routing is not None and routing.state is not None
    routing.state.refresh()
    assert sweep_outbox(harness.broker, now=dt.datetime.now(dt.UTC) + LATER * 2) == 0
    harness.drain()

    assert statuses == ["cancelled", "cancelled"] and ran == []
    assert harness.outbox_rows() == []
    for message in (parked, in_queue):
        job = harness.job(message.message_id)
        assert job is not None and job.status == "cancelled" and job.attempts == 0
        with harness.sessions() as session:
            assert is_cancel_requested(session, message.message_id)


def test_a_cancelled_job_that_runs_before_the_worker_knows_commits_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled after its worker's last poll: the body runs, but the record is final
    # (cancelled), so the job's one statement finds nothing to finish and rolls back.
    ran: list[int] = []

    def writes(tenant_id: int) -> None:
        ran.append(tenant_id)
        current_session().add(Tenant(name=f"made-by-cancelled-{tenant_id}"))

    routing = find_middleware(harness.broker, TenantRouting)
    assert routing is not None and routing.state is not None
    monkeypatch.setattr(routing.state, "cancel_requested", lambda message_id: False)
    actor = harness.declare("cancel_late", writes)
    message = actor.send_with_options(kwargs={"tenant_id": 1}, delay=300)
    with harness.sessions.begin() as session:
        assert cancel_job(session, message.message_id) == "cancelled"
    harness.drain()

    job = harness.job(message.message_id)
    assert ran == [1] and job is not None and (job.status, job.attempts) == ("cancelled", 0)
    with harness.sessions() as session:
        assert session.scalar(select(Tenant).where(Tenant.name.like("made-by-cancelled%"))) is None


def test_a_retry_rabbitmq_refuses_waits_in_the_outbox_instead_of_being_lost(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def flaky(tenant_id: int) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("try again")

    publish = harness.broker.taskyard_publish

    def refuse_retries(retried: Any, *, delay: int | None = None) -> Any:
        if retried.options.get("retries"):
            raise ConnectionClosed(OSError("memory alarm: publishing blocked"))  # type: ignore[no-untyped-call]
        return publish(retried, delay=delay)

    # (Refusing before the send: the worker may fail the first attempt before send() returns.)
    monkeypatch.setattr(harness.broker, "taskyard_publish", refuse_retries)
    message = harness.declare("flaky_refused", flaky).send(tenant_id=1)
    harness.drain()

    # The message was acknowledged, but its retry is kept: parked for the sweeper.
    [row] = harness.outbox_rows()
    assert row.message_id == message.message_id
    assert harness.status(message.message_id) == "retrying"
    monkeypatch.setattr(harness.broker, "taskyard_publish", publish)
    assert sweep_outbox(harness.broker, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) == 1
    harness.drain()

    job = harness.job(message.message_id)
    assert job is not None and (job.status, job.attempts, len(calls)) == ("succeeded", 2, 2)
