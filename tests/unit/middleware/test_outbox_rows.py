"""`write_sends` on SQLite: the records, then the outbox rows of the queued ones.

PostgreSQL runs one statement instead (tests/integration/test_send_statement.py);
both decide alike: an unknown tenant's job is dead and gets no row, a message
that has a record already gets neither a record nor a row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from db.base import Base
from db.models import Job, OutboxMessage
from middleware.outbox_rows import Written, write_sends
from services.records import JobRecord
from services.tenants import create_tenant


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def send(message_id: str, tenant_id: int | None, wait_ms: int = 10_000) -> JobRecord:
    return JobRecord(
        message_id=message_id,
        tenant_id=tenant_id,
        actor="a",
        queue=f"tenant.{tenant_id}",
        args={"tenant_id": tenant_id},
        enqueued_at=dt.datetime.now(dt.UTC),
        body=f'{{"message_id": "{message_id}"}}'.encode(),
        wait_ms=wait_ms,
    )


def test_queued_records_get_a_row_dead_and_existing_ones_none(session: Session) -> None:
    tenant_id = create_tenant(session, "acme").id
    write_sends(session, [send("old", tenant_id)])
    before = dt.datetime.now(dt.UTC)

    written = write_sends(
        session, [send("new", tenant_id, 5_000), send("lost", 999), send("old", tenant_id)]
    )

    rows = {row.message_id: row for row in session.scalars(select(OutboxMessage))}
    assert written == {"new": Written("queued", rows["new"].id), "lost": Written("dead", None)}
    assert sorted(rows) == ["new", "old"]
    assert (rows["new"].body, rows["new"].queue) == ('{"message_id": "new"}', f"tenant.{tenant_id}")
    due = rows["new"].publish_at.replace(tzinfo=dt.UTC) - before
    assert dt.timedelta(seconds=4) < due <= dt.timedelta(seconds=6)
    dead = session.get(Job, "lost")
    assert dead is not None and dead.status == "dead"
    assert dead.error == "UnknownTenant: tenant 999 does not exist"
