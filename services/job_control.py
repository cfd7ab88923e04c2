"""The job record before and between attempts: queued at send, cancelled on request.

Kept apart from `services.jobs` (the record during an attempt) to keep both short.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy.exc
from sqlalchemy import (
    JSON,
    BigInteger,
    CursorResult,
    DateTime,
    String,
    Table,
    Text,
    bindparam,
    case,
    column,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sa_cast
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
from services.job_views import stale_window
from services.records import JobRecord
from services.workers import running_job
from settings import Settings

# Heartbeats older than this are a dead worker's (the default beat: see settings).
DEFAULT_STALE_AFTER = stale_window(Settings().heartbeat_seconds)
# PostgreSQL's lock_not_available: FOR UPDATE NOWAIT met a row another transaction holds.
LOCK_NOT_AVAILABLE = "55P03"


def queued_insert(dialect: str) -> Any:
    """The INSERT of one sent message's record: every column a parameter, so it compiles once.

    A message for a tenant that does not exist is recorded `dead`; a message
    that has a record already is left alone (and not returned).  The send's
    one statement (`middleware.outbox_rows`) wraps this one.
    """
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


def text_array(name: str, element: Any) -> Any:
    """Parameter `name`, a list, as an array of `element` (PostgreSQL).

    Declared an array of text, which psycopg2's arrays of anything (numbers,
    timestamps, only NULLs) are coerced to when a prepared statement runs,
    then cast explicitly to the array type the statement needs.  Give strings
    no length: a cast to VARCHAR(36) would cut a longer one where the column
    refuses it.
    """
    return sa_cast(bindparam(name, type_=postgresql.ARRAY(Text())), postgresql.ARRAY(element))


_SENT_COLUMNS = (
    column("message_id", String()),
    column("tenant_id", BigInteger()),
    column("actor", String()),
    column("queue", String()),
    column("args", postgresql.JSONB()),
    column("enqueued_at", DateTime(timezone=True)),
    column("schedule_id", BigInteger()),
    column("slot_at", DateTime(timezone=True)),
    column("error", Text()),
)


def queued_insert_many(dialect: str) -> Any:
    """PostgreSQL: the INSERT of many sent messages' records, from one array per column.

    As `queued_insert`, row by row: unknown tenants recorded `dead`, existing
    records left alone.  One statement and one plan however many rows: the
    tenants are joined, not looked up in a subquery per row (in a multi-row
    VALUES, PostgreSQL plans a subquery once per row, which grows with the batch).
    """
    jobs, tenants = cast(Table, Job.__table__), cast(Table, Tenant.__table__)
    sent = (
        func.unnest(
            text_array("message_ids", String()),
            text_array("tenant_ids", BigInteger()),
            text_array("actors", String()),
            text_array("queues", String()),
            text_array("args", postgresql.JSONB()),
            text_array("enqueued_ats", DateTime(timezone=True)),
            text_array("schedule_ids", BigInteger()),
            text_array("slot_ats", DateTime(timezone=True)),
            text_array("errors", Text()),
        )
        .table_valued(*_SENT_COLUMNS)
        .render_derived(name="sent")
    )
    known = or_(sent.c.tenant_id.is_(None), tenants.c.id.is_not(None))
    now = bindparam("now", type_=Job.finished_at.type)
    records = select(
        sent.c.message_id,
        sent.c.tenant_id,
        sent.c.actor,
        sent.c.queue,
        sent.c.args,
        case((known, literal_column(f"'{JOB_QUEUED}'")), else_=literal_column(f"'{JOB_DEAD}'")),
        literal_column("0"),
        sent.c.enqueued_at,
        case((known, null()), else_=now),
        case((known, null()), else_=sent.c.error),
        sent.c.schedule_id,
        sent.c.slot_at,
    ).select_from(sent.outerjoin(tenants, tenants.c.id == sent.c.tenant_id))
    columns = [
        "message_id",
        "tenant_id",
        "actor",
        "queue",
        "args",
        "status",
        "attempts",
        "enqueued_at",
        "finished_at",
        "error",
        "schedule_id",
        "slot_at",
    ]
    return (
        postgresql.insert(jobs)
        .from_select(columns, records)
        .on_conflict_do_nothing(index_elements=[jobs.c.message_id])
        .returning(jobs.c.message_id, jobs.c.status)
    )


# Run for every single send, and every batch of sends: see db.hot.
_QUEUED = HotStatement(queued_insert, json_params=["args"])
_QUEUED_MANY = HotStatement(queued_insert_many)


def record_queued(session: Executor, rows: Sequence[JobRecord]) -> dict[str, str]:
    """Create the records of sent messages in one statement; returns each new record's status.

    A message for a tenant that does not exist is recorded `dead` (it must not
    be published); a record that already exists is left alone and not returned.
    """
    if not rows:
        return {}
    now = dt.datetime.now(dt.UTC)
    if len(rows) == 1:
        row = rows[0]
        error = f"UnknownTenant: {UnknownTenant(row.tenant_id or 0)}"
        result = _QUEUED.execute(session, {**row.queued(), "now": now, "error": error})
        return _statuses(result)
    if connection_of(session).dialect.name == "postgresql":
        result = _QUEUED_MANY.execute(session, queued_arrays(rows, now))
        return _statuses(result)
    # Elsewhere (SQLite): the tenants in one query, then a plain multi-row INSERT.
    wanted = {row.tenant_id for row in rows if row.tenant_id is not None}
    known = (
        set(session.scalars(select(Tenant.id).where(Tenant.id.in_(wanted)))) if wanted else set()
    )
    values = [_queued_values(row, known, now) for row in rows]
    batch = _batch_insert(connection_of(session).dialect.name)
    return {message_id: status for message_id, status in session.execute(batch, values).all()}


def _statuses(result: CursorResult[Any]) -> dict[str, str]:
    statuses: dict[str, str] = {}
    for found in result:
        message_id, status = tuple(found)
        statuses[message_id] = status
    return statuses


def queued_arrays(rows: Sequence[JobRecord], now: dt.datetime) -> dict[str, Any]:
    """The parameters of `queued_insert_many` for `rows`: one list per column."""
    errors: dict[int | None, str | None] = {None: None}
    for row in rows:
        if row.tenant_id not in errors:
            errors[row.tenant_id] = f"UnknownTenant: {UnknownTenant(row.tenant_id or 0)}"
    dumps = json.dumps
    return {
        "message_ids": [row.message_id for row in rows],
        "tenant_ids": [row.tenant_id for row in rows],
        "actors": [row.actor for row in rows],
        "queues": [row.queue for row in rows],
        "args": [dumps(row.args) for row in rows],
        "enqueued_ats": [row.enqueued_at for row in rows],
        "schedule_ids": [row.schedule_id for row in rows],
        "slot_ats": [row.slot_at for row in rows],
        "errors": [errors[row.tenant_id] for row in rows],
        "now": now,
    }


def _queued_values(row: JobRecord, known: set[int], now: dt.datetime) -> dict[str, Any]:
    tenant_id = row.tenant_id
    values = row.queued()
    if tenant_id is None or tenant_id in known:
        return {**values, "status": JOB_QUEUED, "attempts": 0, "finished_at": None, "error": None}
    error = f"UnknownTenant: {UnknownTenant(tenant_id)}"
    return {**values, "status": JOB_DEAD, "attempts": 0, "finished_at": now, "error": error}


@functools.cache
def _batch_insert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(cast(Table, Job.__table__))
        .on_conflict_do_nothing(index_elements=[Job.message_id])
        .returning(Job.message_id, Job.status)
    )


def cancel_job(
    session: Session, message_id: str, *, stale_after: dt.timedelta = DEFAULT_STALE_AFTER
) -> str:
    """Cancel a job that has not run yet, or ask a running one to stop; returns its status.

    A queued or retrying job becomes `cancelled` (final: a worker that
    receives it skips it, once its poll has seen the request, within a
    second) and leaves the outbox if it waits there.  A job that a live
    worker's heartbeat says is running (heartbeats older than `stale_after`
    are a dead worker's) only gets the request: its actor may check
    `cancel_requested()` and stop.  A job that started after its worker's
    last beat is cancelled: its final statement finds the record final, so
    its database writes never commit.
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
    if running_job(session, message_id, now=now, stale_after=stale_after) is not None:
        return JOB_RUNNING
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


def cancel_requests_since(
    session: Session, since: dt.datetime | None, *, limit: int = 10_000
) -> list[tuple[str, dt.datetime]]:
    """Cancel requests made after `since` (the last hour when None), oldest first."""
    query = select(CancelRequest.message_id, CancelRequest.requested_at)
    if since is None:
        query = query.where(CancelRequest.requested_at > func.now() - dt.timedelta(hours=1))
    else:
        query = query.where(CancelRequest.requested_at > since)
    rows = session.execute(query.order_by(CancelRequest.requested_at).limit(limit)).all()
    return [(message_id, requested_at) for message_id, requested_at in rows]
