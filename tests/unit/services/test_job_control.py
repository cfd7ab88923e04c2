"""The job record outside its attempts: queued at send, cancelled on request."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Job, OutboxMessage, Tenant
from services.errors import NotFound, PermanentError
from services.job_control import cancel_job, is_cancel_requested, record_queued
from services.outbox import add_messages
from services.records import JobRecord


def queued(message_id: str, tenant_id: int | None) -> JobRecord:
    """A record as `send()` writes it."""
    return JobRecord(
        message_id=message_id,
        tenant_id=tenant_id,
        actor="a",
        queue="q",
        args={"k": 1},
        enqueued_at=dt.datetime.now(dt.UTC),
        body=b"{}",
    )


def set_status(session: Session, message_id: str, status: str) -> None:
    """Move a record to `status`, as a worker would."""
    session.execute(update(Job).where(Job.message_id == message_id).values(status=status))


def test_record_queued_writes_many_rows_and_keeps_existing_records(
    sqlite_session: Session, tenant: Tenant
) -> None:
    first = record_queued(
        sqlite_session, [queued("a", tenant.id), queued("b", 999), queued("c", None)]
    )
    again = record_queued(sqlite_session, [queued("a", tenant.id), queued("d", tenant.id)])

    assert first == {"a": "queued", "b": "dead", "c": "queued"}
    assert again == {"d": "queued"}
    dead = sqlite_session.get(Job, "b")
    assert dead is not None and dead.error == "UnknownTenant: tenant 999 does not exist"
    assert dead.finished_at is not None and dead.attempts == 0


@pytest.mark.parametrize("status", ["queued", "retrying"])
def test_cancelling_a_job_that_has_not_run_makes_it_final_and_empties_its_outbox_row(
    sqlite_session: Session, tenant: Tenant, status: str
) -> None:
    record_queued(sqlite_session, [queued("m", tenant.id)])
    set_status(sqlite_session, "m", status)
    add_messages(sqlite_session, [queued("m", tenant.id)])

    assert cancel_job(sqlite_session, "m") == "cancelled"
    assert sqlite_session.scalars(select(OutboxMessage)).all() == []
    assert is_cancel_requested(sqlite_session, "m")


def test_a_running_job_asked_to_stop_stays_running(sqlite_session: Session, tenant: Tenant) -> None:
    record_queued(sqlite_session, [queued("m", tenant.id)])
    set_status(sqlite_session, "m", "running")

    assert not is_cancel_requested(sqlite_session, "m")
    assert cancel_job(sqlite_session, "m") == "running"
    assert is_cancel_requested(sqlite_session, "m")


@pytest.mark.parametrize("status", ["succeeded", "dead", "cancelled", "skipped"])
def test_cancelling_a_finished_job_is_refused(
    sqlite_session: Session, tenant: Tenant, status: str
) -> None:
    record_queued(sqlite_session, [queued("m", tenant.id)])
    set_status(sqlite_session, "m", status)

    with pytest.raises(PermanentError, match=f"already {status}"):
        cancel_job(sqlite_session, "m")


def test_cancelling_an_unknown_job_is_not_found(sqlite_session: Session) -> None:
    with pytest.raises(NotFound):
        cancel_job(sqlite_session, "no-such-message")
    assert not is_cancel_requested(sqlite_session, "no-such-message")
