"""send() on PostgreSQL: the record and its outbox row in one statement, durable, in autocommit.

The statement decides as the record alone does: an unknown tenant's job is
recorded dead and gets no outbox row (nothing is published), and a message
that has a record already is neither recorded nor published again.  Each
test runs with prepared statements and without.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dramatiq import Message
from marshmallow import Schema, fields
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors.base import TaskyardActor, taskyard_actor
from db.models import Job, OutboxMessage
from db.session import make_engine
from middleware.outbox import Outbox, find_outbox
from middleware.outbox_rows import job_record
from services.errors import SendFailed, UnknownTenant
from services.job_control import record_queued
from services.records import JobRecord
from services.tenants import create_tenant
from settings import Settings
from tests.support import delete_prefix_queues

pytestmark = pytest.mark.integration


class Args(Schema):
    tenant_id = fields.Integer(required=True, strict=True)
    n = fields.Integer(required=True, strict=True)


@dataclass
class Side:
    """A broker of its own queue prefix (no worker consumes it), its actor and its outbox."""

    broker: Any
    probe: TaskyardActor
    outbox: Outbox
    settings: Settings


@pytest.fixture(scope="module", params=[True, False], ids=["prepared", "unprepared"])
def side(request: pytest.FixtureRequest, settings: Settings, engine: Engine) -> Iterator[Side]:
    prepared: bool = request.param
    tag = "p" if prepared else "u"
    side_settings = dataclasses.replace(
        settings,
        queue_prefix=f"{settings.queue_prefix}sendstmt{tag}.",
        db_prepared_statements=prepared,
    )
    broker = brokers.build_broker(side_settings)

    @taskyard_actor(name=f"send_statement_probe_{tag}", broker=broker, schema=Args)
    def probe(tenant_id: int, n: int) -> None:
        """Never run: nothing consumes this prefix."""

    outbox = find_outbox(broker)
    assert outbox is not None
    yield Side(broker, probe, outbox, side_settings)
    outbox.clearer.flush(10)
    broker.close()
    delete_prefix_queues(side_settings, engine)


@pytest.fixture
def published(side: Side, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the messages handed to the publisher (which publishes them as usual)."""
    seen: list[str] = []
    publish = side.outbox.publish

    def spy(broker: Any, pending: list[JobRecord]) -> None:
        seen.extend(item.message.message_id for item in pending)
        publish(broker, pending)

    monkeypatch.setattr(side.outbox, "publish", spy)
    return seen


@pytest.fixture
def send_statements(side: Side) -> Iterator[list[str]]:
    """The SQL the test's thread sends on the send path's engine while the test runs.

    (The clearer's thread deletes confirmed rows on the same engine.)
    """
    seen: list[str] = []
    thread = threading.get_ident()

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() == thread:
            seen.append(statement)

    # One send first, so that the statement is prepared on the pooled connection.
    tenant = _tenant(side)
    side.probe.send(tenant_id=tenant, n=0)
    assert side.outbox.clearer.flush(10)
    event.listen(side.outbox.sends, "before_cursor_execute", record)
    yield seen
    event.remove(side.outbox.sends, "before_cursor_execute", record)


def _tenant(side: Side) -> int:
    with Session(side.outbox.session_factory.kw["bind"]) as session, session.begin():
        return create_tenant(session, f"send-statement-{uuid.uuid4().hex[:12]}").id


def _record(sessions: sessionmaker[Session], message_id: str) -> Job | None:
    with sessions() as session:
        return session.get(Job, message_id)


def _rows(sessions: sessionmaker[Session], message_id: str) -> list[OutboxMessage]:
    with sessions() as session:
        query = select(OutboxMessage).where(OutboxMessage.message_id == message_id)
        return list(session.scalars(query))


def test_a_send_is_one_statement_committed_before_it_is_published(
    side: Side,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    send_statements: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant_id = make_tenant("one-statement")
    seen: list[tuple[str, str | None, int]] = []

    def publish(broker: Any, pending: list[JobRecord]) -> None:
        # What another connection sees when the message reaches the publisher
        [item] = pending
        record = _record(sessions, item.message.message_id)
        [row] = _rows(sessions, item.message.message_id)
        assert row.id == item.row_id and row.body.encode() == item.body
        seen.append((item.message.message_id, record.status if record else None, row.id))

    monkeypatch.setattr(side.outbox, "publish", publish)

    message = side.probe.send(tenant_id=tenant_id, n=1)

    # One statement, no BEGIN and COMMIT of its own: autocommit
    assert len(send_statements) == 1
    assert [(m, s) for m, s, _ in seen] == [(message.message_id, "queued")]
    # ... and its commit waits for the disk, whatever the server's default
    with side.outbox.sends.connect() as connection:
        assert connection.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    # The row stays until a confirm deletes it (here nothing was published)
    assert [row.queue for row in _rows(sessions, message.message_id)] == [
        side.settings.tenant_queue(tenant_id)
    ]


def test_a_send_for_an_unknown_tenant_records_it_dead_and_publishes_nothing(
    side: Side,
    sessions: sessionmaker[Session],
    send_statements: list[str],
    published: list[str],
) -> None:
    missing = 8_000_000_000 + uuid.uuid4().int % 1_000_000

    with pytest.raises(UnknownTenant, match=f"tenant {missing} does not exist"):
        side.probe.send(tenant_id=missing, n=1)

    with sessions() as session:
        [record] = session.scalars(select(Job).where(Job.tenant_id == missing))
        rows = session.scalar(select(func.count()).where(OutboxMessage.tenant_id == missing))
    assert (record.status, record.attempts, record.finished_at is not None) == ("dead", 0, True)
    assert record.error == f"UnknownTenant: tenant {missing} does not exist"
    assert rows == 0 and published == []
    assert len(send_statements) == 1


def test_a_message_sent_again_is_neither_recorded_nor_published_again(
    side: Side,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    published: list[str],
) -> None:
    tenant_id = make_tenant("sent-again")
    message: Message[Any] = side.probe.message_with_options(kwargs={"tenant_id": tenant_id, "n": 1})
    side.outbox.send(side.broker, message, None)
    assert side.outbox.clearer.flush(10)
    assert _rows(sessions, message.message_id) == []
    # Its job ran meanwhile
    with sessions.begin() as session:
        session.execute(
            update(Job).where(Job.message_id == message.message_id).values(status="succeeded")
        )

    side.outbox.send(side.broker, message, None)

    record = _record(sessions, message.message_id)
    assert record is not None and record.status == "succeeded"
    assert _rows(sessions, message.message_id) == []
    assert published == [message.message_id]


def test_held_sends_are_written_in_one_statement_of_the_callers_transaction(
    side: Side,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("held")
    missing = 8_000_000_000 + uuid.uuid4().int % 1_000_000
    fresh, again, dead, later = (
        side.probe.message_with_options(kwargs={"tenant_id": t, "n": n})
        for n, t in enumerate([tenant_id, tenant_id, missing, tenant_id])
    )
    side.outbox.send(side.broker, again, None)
    assert side.outbox.clearer.flush(10)
    held = [job_record(side.broker, message) for message in (fresh, again, dead)]
    long_delay = int(side.outbox.delay_max_seconds * 1000) + 60_000
    held.append(job_record(side.broker, later, delay=long_delay))
    engine = side.outbox.session_factory.kw["bind"]
    statements: list[str] = []
    thread = threading.get_ident()

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() == thread:
            statements.append(statement)

    with side.outbox.session_factory() as session, session.begin():
        session.execute(text("SELECT 1"))  # the transaction is open, warm and prepared
        event.listen(engine, "before_cursor_execute", record)
        try:
            pending = side.outbox.write_held(session, held)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        # Not committed yet: nothing to see from another connection
        assert _record(sessions, fresh.message_id) is None

    # One statement (after a PREPARE on a new connection) for four sends
    assert len([s for s in statements if not s.startswith("PREPARE")]) == 1
    # The fresh one is to publish now; the long delay waits in the outbox
    assert [item.message.message_id for item in pending] == [fresh.message_id]
    statuses = {m.message_id: _record(sessions, m.message_id) for m in (fresh, dead, later)}
    assert {m: (r.status if r else None) for m, r in statuses.items()} == {
        fresh.message_id: "queued",
        dead.message_id: "dead",
        later.message_id: "queued",
    }
    assert [len(_rows(sessions, m.message_id)) for m in (fresh, again, dead, later)] == [1, 0, 0, 1]
    [row] = _rows(sessions, fresh.message_id)
    assert pending[0].row_id == row.id and pending[0].body == row.body.encode()


def test_send_and_send_many_raise_send_failed_without_postgresql(
    settings: Settings, make_tenant: Callable[[str], int]
) -> None:
    # Nothing listens on port 1
    away = dataclasses.replace(
        settings,
        database_url=settings.database_url.replace("127.0.0.1:5432", "127.0.0.1:1"),
        queue_prefix=f"{settings.queue_prefix}sendaway.",
    )
    assert away.database_url != settings.database_url
    broker = brokers.build_broker(away)
    tenant_id = make_tenant("away")

    @taskyard_actor(name="send_statement_away", broker=broker, schema=Args)
    def probe(tenant_id: int, n: int) -> None:
        """Never run."""

    outbox = find_outbox(broker)
    assert outbox is not None
    handed: list[JobRecord] = []
    outbox.publish = lambda broker, pending: handed.extend(pending)  # type: ignore[method-assign]
    try:
        with pytest.raises(SendFailed, match="nothing was sent"):
            probe.send(tenant_id=tenant_id, n=1)
        with pytest.raises(SendFailed, match=r"\(and 1 more\)"):
            probe.send_many([{"tenant_id": tenant_id, "n": 1}, {"tenant_id": tenant_id, "n": 2}])
    finally:
        broker.close()
    assert handed == []


def _queued(tenant_id: int | None, **extra: Any) -> JobRecord:
    return JobRecord(
        message_id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        actor="send_statement_records",
        queue="q",
        args={"tenant_id": tenant_id, "s": "50% done", "nested": [1, {"a": None}]},
        enqueued_at=dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC),
        schedule_id=extra.get("schedule_id"),
        slot_at=extra.get("slot_at"),
    )


def _stored(engine: Engine, message_id: str) -> tuple[Any, ...]:
    with Session(engine) as session:
        job = session.get(Job, message_id)
        assert job is not None
        return (
            job.tenant_id,
            job.actor,
            job.queue,
            job.args,
            job.status,
            job.attempts,
            job.enqueued_at,
            job.finished_at is None,
            job.error,
            job.schedule_id,
            job.slot_at,
        )


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
def test_many_records_in_one_statement_say_what_one_record_says(
    settings: Settings, migrated_database: str, make_tenant: Callable[[str], int], prepared: bool
) -> None:
    engine = make_engine(dataclasses.replace(settings, db_prepared_statements=prepared))
    tenant_id = make_tenant("records")
    missing = 8_000_000_000 + uuid.uuid4().int % 1_000_000
    # No schedule has this id: a small one would be a real schedule's in this run's
    # database, and its jobs (queued for ever) would be counted as that schedule's.
    no_schedule = 9_000_000_000 + uuid.uuid4().int % 1_000_000
    slot = dt.datetime(2024, 5, 6, 7, 0, tzinfo=dt.UTC)
    kinds = [
        {"tenant_id": tenant_id},
        {"tenant_id": missing},
        {"tenant_id": None, "schedule_id": no_schedule, "slot_at": slot},
    ]
    try:
        existing = _queued(tenant_id)
        with engine.begin() as connection:
            record_queued(connection, [existing])
            connection.execute(
                update(Job).where(Job.message_id == existing.message_id).values(status="succeeded")
            )
        # Each kind of record written alone, then all of them (and the existing one) at once
        alone = [_queued(**kind) for kind in kinds]
        together = [_queued(**kind) for kind in kinds]
        with engine.begin() as connection:
            single = [record_queued(connection, [row]) for row in alone]
            many = record_queued(connection, [*together, existing])
        stored = {row.message_id: _stored(engine, row.message_id) for row in alone}
        stored |= {row.message_id: _stored(engine, row.message_id) for row in together}
        stored[existing.message_id] = _stored(engine, existing.message_id)
    finally:
        engine.dispose()

    assert single == [
        {alone[0].message_id: "queued"},
        {alone[1].message_id: "dead"},
        {alone[2].message_id: "queued"},
    ]
    assert many == {
        together[0].message_id: "queued",
        together[1].message_id: "dead",
        together[2].message_id: "queued",
    }
    for one, other in zip(alone, together, strict=True):
        assert stored[one.message_id] == stored[other.message_id]
    assert stored[together[1].message_id][7:9] == (
        False,
        f"UnknownTenant: tenant {missing} does not exist",
    )
    assert stored[together[2].message_id][9:] == (no_schedule, slot)
    assert stored[existing.message_id][4] == "succeeded"
