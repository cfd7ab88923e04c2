"""The send path on the in-process broker and SQLite: records at send, outbox, crash, rollback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from actors.transaction import taskyard_transaction
from db.models import Job
from middleware import current_session
from middleware.db_session import DbSession, find_middleware
from middleware.outbox import Outbox, sweep_outbox
from services.errors import PermanentError, SendFailed, UnknownTenant
from services.tenants import create_tenant
from tests.unit.middleware.outbox_harness import Harness, outbox_harness, spy_on_publish


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with outbox_harness(tmp_path) as harness:
        yield harness


def test_send_commits_the_job_and_its_outbox_row_before_it_is_published(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = harness.declare("noop", lambda tenant_id: None)
    seen = spy_on_publish(harness, monkeypatch)

    message = actor.send(tenant_id=1)
    harness.drain()

    # Durable before RabbitMQ sees it: the record queued, the outbox row there
    assert seen == [("noop", ("queued", True))]
    assert harness.outbox_rows() == []
    job = harness.job(message.message_id)
    assert job is not None and (job.status, job.attempts, job.tenant_id) == ("succeeded", 1, 1)
    assert job.enqueued_at is not None and job.queue == harness.settings.tenant_queue(1)


def test_send_to_an_unknown_tenant_is_refused_and_recorded_dead(harness: Harness) -> None:
    actor = harness.declare("noop_unknown", lambda tenant_id: None)
    harness.broker.declare_queue(harness.settings.tenant_queue(99))

    with pytest.raises(UnknownTenant, match="tenant 99 does not exist"):
        actor.send(tenant_id=99)

    with harness.sessions() as session:
        job = session.scalars(select(Job).where(Job.tenant_id == 99)).one()
    assert (job.status, job.attempts) == ("dead", 0)
    assert job.error == "UnknownTenant: tenant 99 does not exist"
    assert harness.waiting(harness.settings.tenant_queue(99)) == 0


def test_send_while_the_database_is_away_raises_and_publishes_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = harness.declare("noop_db_away", lambda tenant_id: None)
    away = create_engine("sqlite:////nonexistent-dir/taskyard.sqlite3")
    monkeypatch.setattr(harness.outbox, "session_factory", sessionmaker(away))
    db = find_middleware(harness.broker, DbSession)
    assert db is not None
    monkeypatch.setattr(db, "session_factory", sessionmaker(away))

    with pytest.raises(SendFailed, match="nothing was sent: send it again"):
        actor.send(tenant_id=1)
    with pytest.raises(SendFailed, match=r"\(and 1 more\)"):
        actor.send_many([{"tenant_id": 1}, {"tenant_id": 1}])

    assert harness.waiting(harness.settings.tenant_queue(1)) == 0


def test_actor_sends_are_written_to_the_outbox_in_its_transaction_and_removed_after(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = harness.declare("child", lambda tenant_id, name: create_tenant(current_session(), name))
    parent = harness.declare(
        "parent", lambda tenant_id: child.send(tenant_id=tenant_id, name="from-parent")
    )
    seen = spy_on_publish(harness, monkeypatch)

    parent.send(tenant_id=1)
    harness.drain()

    # When the child was published, its record and outbox row had committed with the parent.
    assert seen == [("parent", ("queued", True)), ("child", ("queued", True))]
    assert harness.outbox_rows() == []
    assert harness.tenant_names() == ["acme", "from-parent"]


def test_rollback_publishes_nothing_and_leaves_no_row_or_record(harness: Harness) -> None:
    sent: list[str] = []
    child = harness.declare("child_rb", lambda tenant_id: None)

    def parent(tenant_id: int) -> None:
        sent.append(child.send(tenant_id=tenant_id).message_id)
        raise PermanentError("parent failed")

    harness.declare("parent_rb", parent).send(tenant_id=1)
    harness.drain()

    assert len(sent) == 1 and harness.job(sent[0]) is None
    assert harness.outbox_rows() == []


def test_rows_left_by_a_crash_after_commit_are_published_once_by_the_sweeper(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a producer transaction that committed, then died before publishing
    actor = harness.declare(
        "after_crash", lambda tenant_id, name: create_tenant(current_session(), name)
    )
    monkeypatch.setattr(Outbox, "publish", lambda self, broker, pending: None)
    with taskyard_transaction(harness.broker):
        message = actor.send(tenant_id=1, name="swept")
    monkeypatch.undo()
    [row] = harness.outbox_rows()
    assert harness.status(message.message_id) == "queued"

    # When the sweeper runs: within the grace period, then after it, then again
    now = dt.datetime.now(dt.UTC)
    counts = [
        sweep_outbox(harness.broker, now=now),
        sweep_outbox(harness.broker, now=now + dt.timedelta(seconds=11)),
        sweep_outbox(harness.broker, now=now + dt.timedelta(seconds=12)),
    ]
    harness.drain()

    # Then it was published exactly once, and ran once
    assert counts == [0, 1, 0]
    assert row.message_id == message.message_id and harness.outbox_rows() == []
    assert harness.tenant_names() == ["acme", "swept"]
    assert harness.status(message.message_id) == "succeeded"


def test_producer_transaction_publishes_on_commit_and_nothing_on_rollback(
    harness: Harness,
) -> None:
    actor = harness.declare("produced", lambda tenant_id: None)

    with taskyard_transaction(harness.broker) as session:
        create_tenant(session, "beta")
        kept = actor.send(tenant_id=1)
    with (
        pytest.raises(RuntimeError, match="changed my mind"),
        taskyard_transaction(harness.broker) as session,
    ):
        create_tenant(session, "gamma")
        dropped = actor.send(tenant_id=1)
        raise RuntimeError("changed my mind")
    harness.drain()

    assert harness.status(kept.message_id) == "succeeded"
    assert harness.job(dropped.message_id) is None
    assert harness.tenant_names() == ["acme", "beta"]
    assert harness.outbox_rows() == []


def test_send_to_an_unknown_tenant_inside_a_transaction_is_refused_at_once(
    harness: Harness,
) -> None:
    actor = harness.declare("in_tx_unknown", lambda tenant_id: None)

    with pytest.raises(UnknownTenant), taskyard_transaction(harness.broker):
        actor.send(tenant_id=42)

    with harness.sessions() as session:
        assert session.scalars(select(Job.status).where(Job.tenant_id == 42)).all() == ["dead"]
    assert harness.outbox_rows() == []


def test_send_rabbitmq_cannot_take_returns_and_runs_once_the_sweeper_publishes_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = harness.declare("unpublishable", lambda tenant_id: None)

    def rabbitmq_away(message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        raise ConnectionError("RabbitMQ is away")

    # When RabbitMQ cannot take the message, send() returns all the same
    monkeypatch.setattr(harness.broker, "taskyard_publish", rabbitmq_away)
    message = actor.send(tenant_id=1)
    monkeypatch.undo()

    # Then the job waits, queued, with its outbox row; the sweeper publishes it, and it runs
    assert harness.status(message.message_id) == "queued"
    assert [row.message_id for row in harness.outbox_rows()] == [message.message_id]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert sweep_outbox(harness.broker, now=later) == 1
    harness.drain()
    assert harness.status(message.message_id) == "succeeded" and harness.outbox_rows() == []
