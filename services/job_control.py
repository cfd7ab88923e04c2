"""The job record before and between attempts: queued at send, cancelled on request.

Kept apart from `services.jobs` (the record during an attempt) to keep both short.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any, TypedDict, cast

import sqlalchemy.exc
from sqlalchemy import (
    JSON,
    Table,
    bindparam,
    case,
    exists,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.hot import Executor, HotStatement, connection_of
from db.models import (
    JOB_CANCELLED,
    JOB_DEAD,
    JOB_FINAL_STATES,
    JOB_QUEUED,
    JOB_RETRYING,
    JOB_RUNNING,
    CancelRequest,
    Job,
    Tenant,
)
from services import outbox
from services.errors import NotFound, PermanentError, UnknownTenant

# PostgreSQL's lock_not_available: FOR UPDATE NOWAIT met a row another transaction holds.
LOCK_NOT_AVAILABLE = "55P03"


class QueuedJob(TypedDict):
    """What the record of a message says from the moment it is sent."""

    message_id: str
    tenant_id: int | None
    actor: str
    queue: str
    args: dict[str, Any]
    enqueued_at: dt.datetime
    # The schedule that sent the message and the slot it ran for; None for other sends.
    schedule_id: int | None
    slot_at: dt.datetime | None


def _build_queued(dialect: str) -> Any:
    """The INSERT of one sent message's record: every column a parameter, so it compiles once."""
    jobs = cast(Table, Job.__table__)
    tenant_id = bindparam("tenant_id", type_=Job.tenant_id.type)
    # The tenant is looked up in the INSERT itself: no extra round trip per send.
    known = or_(tenant_id.is_(None), exists().where(Tenant.id == tenant_id))
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    json_type = postgresql.JSONB() if dialect == "postgresql" else JSON()
    return (
        insert(jobs)
        .values(
            message_id=bindparam("message_id"),
            tenant_id=tenant_id,
            actor=bindparam("actor"),
            queue=bindparam("queue"),
            args=bindparam("args", type_=json_type),
            enqueued_at=bindparam("enqueued_at", type_=Job.enqueued_at.type),
            schedule_id=bindparam("schedule_id", type_=Job.schedule_id.type),
            slot_at=bindparam("slot_at", type_=Job.slot_at.type),
            status=case(
                (known, literal_column(f"'{JOB_QUEUED}'")), else_=literal_column(f"'{JOB_DEAD}'")
            ),
            attempts=literal_column("0"),
            finished_at=case((known, null()), else_=bindparam("now", type_=Job.finished_at.type)),
            error=case((known, null()), else_=bindparam("error", type_=Job.error.type)),
        )
        .on_conflict_do_nothing(index_elements=[jobs.c.message_id])
        .returning(jobs.c.message_id, jobs.c.status)
    )


# Run for every single send: see db.hot.
_QUEUED = HotStatement(_build_queued, json_params=["args"])


def record_queued(session: Executor, rows: Sequence[QueuedJob]) -> dict[str, str]:
    """Create the records of sent messages in one statement; returns each new record's status.

    A message for a tenant that does not exist is recorded `dead` (it must not
    be published); a record that already exists is left alone and not returned.
    """
    if not rows:
        return {}
    now = dt.datetime.now(dt.UTC)
    if len(rows) == 1:
        row = rows[0]
        error = f"UnknownTenant: {UnknownTenant(row['tenant_id'] or 0)}"
        result = _QUEUED.execute(session, {**row, "now": now, "error": error})
        statuses: dict[str, str] = {}
        for found in result.all():
            message_id, status = tuple(found)
            statuses[message_id] = status
        return statuses
    # A batch: the tenants in one query, then a plain multi-row INSERT.  (A lookup
    # inside each row's VALUES would make PostgreSQL plan a subquery per row:
    # 0.6 s for 1,000 rows, against 20 ms for this.)
    wanted = {row["tenant_id"] for row in rows if row["tenant_id"] is not None}
    known = (
        set(session.scalars(select(Tenant.id).where(Tenant.id.in_(wanted)))) if wanted else set()
    )
    values = [_queued_values(row, known, now) for row in rows]
    batch = _batch_insert(connection_of(session).dialect.name)
    return {message_id: status for message_id, status in session.execute(batch, values).all()}


def _queued_values(row: QueuedJob, known: set[int], now: dt.datetime) -> dict[str, Any]:
    tenant_id = row["tenant_id"]
    if tenant_id is None or tenant_id in known:
        return {**row, "status": JOB_QUEUED, "attempts": 0, "finished_at": None, "error": None}
    error = f"UnknownTenant: {UnknownTenant(tenant_id)}"
    return {**row, "status": JOB_DEAD, "attempts": 0, "finished_at": now, "error": error}


@functools.cache
def _batch_insert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(cast(Table, Job.__table__))
        .on_conflict_do_nothing(index_elements=[Job.message_id])
        .returning(Job.message_id, Job.status)
    )


def cancel_job(session: Session, message_id: str) -> str:
    """Cancel a job that has not run yet, or ask a running one to stop; returns its status.

    A queued or retrying job becomes `cancelled` (final: a worker that
    receives it skips it) and leaves the outbox if it waits there.
    """
    query = (
        select(Job)
        .where(Job.message_id == message_id)
        .with_for_update(nowait=True)
        .execution_options(populate_existing=True)
    )
    try:
        # A savepoint: a lock that is not available aborts only it, not the caller's transaction.
        with session.begin_nested():
            job = session.scalars(query).first()
    except sqlalchemy.exc.OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
            raise
        # The attempt's transaction holds the record until it ends: the job
        # is running. Ask it to stop, where the running actor can read it.
        _request_cancel(session, message_id)
        return JOB_RUNNING
    if job is None:
        raise NotFound(f"no job record for message {message_id!r}")
    now = dt.datetime.now(dt.UTC)
    if job.status in JOB_FINAL_STATES:
        raise PermanentError(f"job {message_id} already {job.status}", reason="already_finished")
    _request_cancel(session, message_id)
    if job.status not in (JOB_QUEUED, JOB_RETRYING):
        return job.status
    outbox.discard_message(session, message_id)
    session.execute(
        update(Job)
        .where(Job.message_id == message_id)
        .values(status=JOB_CANCELLED, finished_at=now)
    )
    return JOB_CANCELLED


def _request_cancel(session: Session, message_id: str) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(CancelRequest).values(message_id=message_id).on_conflict_do_nothing())


def is_cancel_requested(session: Session, message_id: str) -> bool:
    """Whether someone asked for this job to be cancelled."""
    query = select(CancelRequest.message_id).where(CancelRequest.message_id == message_id)
    return session.execute(query).first() is not None
