"""The job record: one row per message, written in the message's own transaction."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    Connection,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from db.hot import Executor, HotStatement
from db.models import (
    JOB_DEAD,
    JOB_FINAL_STATES,
    JOB_RETRYING,
    JOB_SUCCEEDED,
    Job,
    Tenant,
)
from db.session import fetch
from services.errors import MessageIdTaken, NotFound
from services.job_views import AttemptInfo, RunningJob, StoredJob, iso
from services.listing_sql import jobs_page, jobs_with_ids
from services.pagination import Position
from services.records import JobRecord
from services.workers import running_jobs

# Errors are kept for reading, not for storing whole payloads.
MAX_ERROR_LENGTH = 4_000
# A job's failed attempts kept on its record: the first (often the cause: what later
# attempts fail on may be what the first one left half done) and the latest ones
# (what it fails on now).  Capped so that a job retried for days keeps a record of
# bounded width, which each failure rewrites whole (JSONB is not appended in place).
ATTEMPTS_KEPT_FIRST = 1
ATTEMPTS_KEPT_LAST = 9
ATTEMPTS_KEPT = ATTEMPTS_KEPT_FIRST + ATTEMPTS_KEPT_LAST
# An attempt's error message is shorter than the record's last error.
MAX_ATTEMPT_ERROR_LENGTH = 1_000
# An attempt's traceback: its end, where the error was raised (the dead letter keeps the
# last attempt's whole).
MAX_ATTEMPT_TRACEBACK_LENGTH = 2_000


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Job)


def _same_job(jobs: Any, new: Any) -> Any:
    """The record found by a message's id belongs to the same job: tenant, actor and queue.

    Message ids travel in logs and webhook headers; a message that reuses one
    on another queue, for another actor or tenant, must never take that
    job's record over.
    """
    return and_(
        jobs.c.actor == new.actor,
        jobs.c.queue == new.queue,
        jobs.c.tenant_id.is_not_distinct_from(new.tenant_id),
    )


def check_owner(session: Executor, record: JobRecord) -> None:
    """Raise `MessageIdTaken` when the record of `record`'s message id belongs to another job."""
    if taken_ids(session, [record]):
        raise MessageIdTaken(record.message_id)


def taken_ids(session: Executor, records: list[JobRecord]) -> list[JobRecord]:
    """Those of `records` whose message id is another job's record (as `check_owner` decides)."""
    if not records:
        return []
    held = {
        message_id: (actor, queue, tenant_id)
        for message_id, actor, queue, tenant_id in session.execute(
            select(Job.message_id, Job.actor, Job.queue, Job.tenant_id).where(
                Job.message_id.in_([record.message_id for record in records])
            )
        ).all()
    }
    return [
        record
        for record in records
        if record.message_id in held
        and held[record.message_id] != (record.actor, record.queue, record.tenant_id)
    ]


class Finish(NamedTuple):
    """What a job's final statement found."""

    # False: the record was final already (a duplicate, or cancelled) or is another job's.
    written: bool
    # The status of the record's tenant, read in the same statement (None: no tenant, or gone).
    tenant_status: str | None


def _final_states() -> list[Any]:
    # Literals, not an expanding IN parameter: a hot statement compiles to fixed SQL.
    return [literal_column(f"'{status}'") for status in sorted(JOB_FINAL_STATES)]


def _json(dialect: str) -> Any:
    # none_as_null: a missing result is SQL NULL (as the driver-SQL path on PostgreSQL sends it).
    return JSONB(none_as_null=True) if dialect == "postgresql" else JSON(none_as_null=True)


def _build_finish(dialect: str) -> Any:
    """The one statement of a succeeded job: its record, final, unless it was final already.

    An upsert: the record written at send is updated (queued or retrying to
    succeeded); a message with no record (sent around Taskyard's `send()`)
    gets one.  The WHERE is the duplicate check: a record already final, or
    another job's, is left alone and no row comes back.  The row lock it takes
    makes a second copy running at the same moment wait here, then find the
    record final once the first commits.
    """
    jobs = cast(Table, Job.__table__)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(jobs).values(
        message_id=bindparam("message_id"),
        tenant_id=bindparam("tenant_id"),
        actor=bindparam("actor"),
        queue=bindparam("queue"),
        args=bindparam("args", type_=_json(dialect)),
        enqueued_at=bindparam("enqueued_at"),
        status=literal_column(f"'{JOB_SUCCEEDED}'"),
        attempts=bindparam("attempts"),
        started_at=bindparam("started_at"),
        finished_at=bindparam("finished_at"),
        result=bindparam("result", type_=_json(dialect)),
        result_dropped=bindparam("result_dropped", type_=Text()),
    )
    tenant_status = (
        select(Tenant.status).where(Tenant.id == bindparam("tenant_id")).scalar_subquery()
    )
    return stmt.on_conflict_do_update(
        index_elements=[jobs.c.message_id],
        set_={
            "status": literal_column(f"'{JOB_SUCCEEDED}'"),
            "attempts": stmt.excluded.attempts,
            "started_at": stmt.excluded.started_at,
            "finished_at": stmt.excluded.finished_at,
            "result": stmt.excluded.result,
            "result_dropped": stmt.excluded.result_dropped,
            "error": null(),
            "updated_at": func.now(),
        },
        where=and_(jobs.c.status.not_in(_final_states()), _same_job(jobs, stmt.excluded)),
    ).returning(jobs.c.message_id, tenant_status)


_FINISH = HotStatement(_build_finish, json_params=["args", "result"])


def finish(session: Executor, job: JobRecord) -> Finish:
    """Write a succeeded job's final record: one statement, in the job's own transaction.

    Nothing is written before the job runs: this statement at the end of the
    actor's transaction is the record's only one, and it is the duplicate
    check too.  When the record is final already (a copy that finished
    first, a cancelled job) or is another job's, nothing is written and
    `written` is False: the caller rolls its transaction back, so the
    copy's database writes never commit.
    """
    row = _FINISH.execute(session, job.finished()).first()
    if row is None:
        return Finish(written=False, tenant_status=None)
    _message_id, tenant_status = tuple(row)
    return Finish(written=True, tenant_status=tenant_status)


# The group commit's statement: the same upsert over a batch sent as one JSON parameter
# (one string for the driver to quote, not an array per column to adapt element by element).
_FINISH_MANY_SQL = f"""
INSERT INTO jobs AS j (message_id, tenant_id, actor, queue, args, enqueued_at, status,
                       attempts, started_at, finished_at, result, result_dropped)
SELECT u.message_id, u.tenant_id, u.actor, u.queue, u.args, u.enqueued_at,
       '{JOB_SUCCEEDED}', u.attempts, u.started_at, u.finished_at, u.result, u.result_dropped
FROM json_to_recordset(%(batch)s::json)
     AS u(message_id varchar, tenant_id bigint, actor varchar, queue varchar, args jsonb,
          enqueued_at timestamptz, attempts integer, started_at timestamptz,
          finished_at timestamptz, result jsonb, result_dropped text)
ON CONFLICT (message_id) DO UPDATE SET
    status = '{JOB_SUCCEEDED}', attempts = excluded.attempts, started_at = excluded.started_at,
    finished_at = excluded.finished_at, result = excluded.result,
    result_dropped = excluded.result_dropped, error = NULL, updated_at = now()
WHERE j.status NOT IN ({", ".join(f"'{s}'" for s in sorted(JOB_FINAL_STATES))})
  AND j.actor = excluded.actor AND j.queue = excluded.queue
  AND j.tenant_id IS NOT DISTINCT FROM excluded.tenant_id
RETURNING j.message_id
"""


def _iso_or_none(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def finish_many(connection: Connection, finished: list[JobRecord]) -> set[str]:
    """Write many succeeded jobs' final records in one statement; the ids written.

    The group commit of jobs that never opened a transaction of their own.
    An id not returned was final already (a duplicate) or is another job's.
    Two copies of one message in the same batch: the first is written, the
    other counts as a duplicate (one upsert may not touch a row twice).
    """
    unique: dict[str, JobRecord] = {}
    for job in finished:
        unique.setdefault(job.message_id, job)
    if not unique:
        return set()
    rows = list(unique.values())
    if connection.dialect.name != "postgresql":
        return {job.message_id for job in rows if finish(connection, job).written}
    batch = json.dumps(
        [
            {
                **job.finished(),
                "enqueued_at": _iso_or_none(job.enqueued_at),
                "started_at": _iso_or_none(job.started_at),
                "finished_at": _iso_or_none(job.finished_at),
            }
            for job in rows
        ],
        default=str,
    )
    result = connection.exec_driver_sql(_FINISH_MANY_SQL, {"batch": batch})
    return {message_id for (message_id,) in result.all()}


def record_status(connection: Executor, message_id: str) -> str | None:
    """The status of one job's record (None: no record)."""
    status: str | None = connection.execute(
        select(Job.status).where(Job.message_id == message_id)
    ).scalar_one_or_none()
    return status


# What `rehearse`'s records (never committed) say they are.
REHEARSAL = "taskyard-rehearsal"


def rehearse(session: Session) -> None:
    """Run a job's record statement in the session's transaction, for the caller to roll back.

    Leaves the connection, the hot statement and the server's caches warm.  Each
    rehearsal has a message id of its own: open rehearsals never wait for each other.
    """
    now = dt.datetime.now(dt.UTC)
    finish(
        session,
        JobRecord(
            message_id=str(uuid.uuid4()),
            tenant_id=None,
            actor=REHEARSAL,
            queue=REHEARSAL,
            args={},
            enqueued_at=None,
            attempts=1,
            started_at=now,
            finished_at=now,
        ),
    )


def count_redelivery(
    connection: Connection,
    message_id: str,
    *,
    actor: str,
    queue: str,
    tenant_id: int | None,
) -> int | None:
    """Count one start of a redelivered copy of the job, committed at once; the count so far.

    Its own statement on its own connection, committed before the actor runs:
    if the copy kills its worker too, the count survives the crash (an attempt
    recorded in the job's transaction would be rolled back with it).  None
    when the job has no record of its own, or a final one.
    """
    result = connection.execute(
        update(Job)
        .where(
            Job.message_id == message_id,
            Job.actor == actor,
            Job.queue == queue,
            Job.tenant_id.is_not_distinct_from(tenant_id),
            Job.status.not_in(JOB_FINAL_STATES),
        )
        .values(deliveries=Job.deliveries + 1)
        .returning(Job.deliveries)
    )
    found = result.scalar_one_or_none()
    connection.commit()
    return found


def mark_not_run(
    session: Session, message_id: str, *, actor: str, queue: str, status: str, error: str
) -> bool:
    """Record that a message was dropped before it ran: final, `status` (skipped, expired).

    Only the record of the same actor on the same queue, and only while it is
    not final: an id reused elsewhere changes nothing.  True when a record changed.
    """
    result = session.execute(
        update(Job)
        .where(
            Job.message_id == message_id,
            Job.status.not_in(JOB_FINAL_STATES),
            Job.actor == actor,
            Job.queue == queue,
        )
        .values(status=status, finished_at=dt.datetime.now(dt.UTC), error=error[:MAX_ERROR_LENGTH])
    )
    return bool(getattr(result, "rowcount", 0))


def mark_undeliverable(
    session: Session, message_id: str, *, queue: str, tenant_id: int | None, error: str
) -> str | None:
    """Record that a message can never be published (its stored body is unreadable): `dead`.

    Only the record of the same queue and tenant is changed, and only while it
    is not final.  Returns that record's actor (whatever its status), None when
    the message has no record there: the body that would name it is unreadable.
    """
    same = (
        Job.message_id == message_id,
        Job.queue == queue,
        Job.tenant_id.is_not_distinct_from(tenant_id),
    )
    actor: str | None = session.scalar(select(Job.actor).where(*same))
    session.execute(
        update(Job)
        .where(*same, Job.status.not_in(JOB_FINAL_STATES))
        .values(
            status=JOB_DEAD, finished_at=dt.datetime.now(dt.UTC), error=error[:MAX_ERROR_LENGTH]
        )
    )
    return actor


def failed_attempt(
    record: JobRecord,
    *,
    error_class: str,
    message: str,
    dead: bool,
    finished_at: dt.datetime,
    traceback: str | None = None,
) -> dict[str, Any]:
    """The entry `record_failure` appends to the record's `attempt_history` (JSON)."""
    entry: dict[str, Any] = {
        "attempt": record.attempts,
        "started_at": iso(record.started_at),
        "finished_at": finished_at.isoformat(),
        "outcome": JOB_DEAD if dead else JOB_RETRYING,
        "error_class": error_class[:200],
        "error": message[:MAX_ATTEMPT_ERROR_LENGTH],
    }
    if traceback:
        entry["traceback"] = traceback[-MAX_ATTEMPT_TRACEBACK_LENGTH:]
    return entry


def _appended(dialect: str, entry: dict[str, Any]) -> Any:
    """The record's `attempt_history` with `entry` appended, capped at `ATTEMPTS_KEPT`.

    Past the cap, the oldest entry after the first `ATTEMPTS_KEPT_FIRST` ones
    is dropped.  An expression on the row the upsert updates: the append costs
    no statement of its own.
    """
    column = cast(Table, Job.__table__).c.attempt_history
    if dialect == "postgresql":
        history = func.coalesce(column, sql_cast(literal("[]"), JSONB))
        trimmed = case(
            (
                func.jsonb_array_length(history) >= ATTEMPTS_KEPT,
                history.op("-", return_type=JSONB())(literal(ATTEMPTS_KEPT_FIRST, Integer)),
            ),
            else_=history,
        )
        return trimmed.op("||", return_type=JSONB())(
            bindparam("attempt_entry", [entry], type_=JSONB())
        )
    history = func.coalesce(column, literal("[]"))
    trimmed = case(
        (
            func.json_array_length(history) >= ATTEMPTS_KEPT,
            func.json_remove(history, f"$[{ATTEMPTS_KEPT_FIRST}]"),
        ),
        else_=history,
    )
    return func.json_insert(
        trimmed, "$[#]", func.json(bindparam("attempt_entry", json.dumps(entry), type_=String()))
    )


def record_failure(
    session: Session,
    record: JobRecord,
    *,
    error: str,
    dead: bool,
    error_class: str | None = None,
    message: str | None = None,
    traceback: str | None = None,
) -> bool:
    """Record a failed attempt: `retrying`, or `dead` when no attempt follows.

    The attempt (its number, start, end, outcome, `error_class` and `message`,
    both taken from `error` when not given, and the end of its `traceback`
    when given) is appended to the record's
    `attempt_history` by the same statement.  A record already final (a
    commit that went through although its acknowledgement did not) is never
    changed by a later delivery, nor is another job's record (one of another
    tenant, actor or queue under the same message id).
    False when nothing was written: the record is final already (its commit
    went through although the worker saw it fail), or it is another job's.
    """
    now = dt.datetime.now(dt.UTC)
    if error_class is None or message is None:
        head, _, rest = error.partition(": ")
        error_class, message = (head, rest) if rest else ("", error)
    entry = failed_attempt(
        record,
        error_class=error_class,
        message=message,
        dead=dead,
        finished_at=now,
        traceback=traceback,
    )
    fields = {
        "tenant_id": record.tenant_id,
        "actor": record.actor,
        "queue": record.queue,
        "args": record.args,
        "enqueued_at": record.enqueued_at,
        "started_at": now,
    }
    changes = {
        "status": JOB_DEAD if dead else JOB_RETRYING,
        "attempts": record.attempts,
        "finished_at": now if dead else None,
        "error": error[:MAX_ERROR_LENGTH],
    }
    dialect = session.get_bind().dialect.name
    stmt = _insert(session).values(
        message_id=record.message_id, **fields, **changes, attempt_history=[entry]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[Job.message_id],
        set_={**changes, "attempt_history": _appended(dialect, entry)},
        where=and_(Job.status.not_in(JOB_FINAL_STATES), _same_job(Job.__table__, stmt.excluded)),
    )
    result = session.execute(stmt)
    return bool(getattr(result, "rowcount", 1))


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _attempt(entry: object) -> AttemptInfo | None:
    """One stored entry of `attempt_history`, or None when it is malformed (never raises)."""
    if not isinstance(entry, dict):
        return None
    number = entry.get("attempt")
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    outcome = entry.get("outcome")
    return {
        "attempt": number,
        "started_at": _text_or_none(entry.get("started_at")),
        "finished_at": _text_or_none(entry.get("finished_at")),
        "outcome": outcome if isinstance(outcome, str) else "failed",
        "error_class": _text_or_none(entry.get("error_class")),
        "error": _text_or_none(entry.get("error")),
        "traceback": _text_or_none(entry.get("traceback")),
    }


def attempt_list(job: Job) -> tuple[list[AttemptInfo], int]:
    """A job's attempts, oldest first, and how many were not kept (`ATTEMPTS_KEPT`).

    The failed ones come from `attempt_history`; a job that succeeded after
    failing gets its last attempt from the record itself (the success path
    writes no history).  A record from before the history was kept, or that
    failed without it (a dead letter requeued by hand), shows what its columns say.
    """
    stored = job.attempt_history if isinstance(job.attempt_history, list) else []
    attempts = [found for entry in stored if (found := _attempt(entry)) is not None]
    last = attempts[-1]["attempt"] if attempts else 0
    if job.status == JOB_SUCCEEDED and job.attempts > last:
        attempts.append(
            {
                "attempt": job.attempts,
                "started_at": iso(job.started_at),
                "finished_at": iso(job.finished_at),
                "outcome": JOB_SUCCEEDED,
                "error_class": None,
                "error": None,
                "traceback": None,
            }
        )
    not_kept = max(0, (attempts[-1]["attempt"] if attempts else 0) - len(attempts))
    return attempts, not_kept


def get_job(session: Session, message_id: str) -> Job:
    """The record of one message, or `NotFound`."""
    job = session.get(Job, message_id)
    if job is None:
        raise NotFound(f"no job record for message {message_id!r}")
    return job


def list_jobs(
    session: Session,
    *,
    tenant_id: int | None = None,
    status: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    after: Position | None = None,
    limit: int = 50,
    error_contains: str | None = None,
    exclude_queue: str | None = None,
    until: dt.datetime | None = None,
) -> list[Any]:
    """The newest job records first (by creation), filtered, from `after` on (a keyset page).

    The statement is `services.listing_sql.jobs_page` (its docstring says which
    index each filter reads); the rows read as `StoredJob`s.
    """
    statement = jobs_page(
        session.get_bind().dialect.name,
        tenant_id=tenant_id,
        status=status,
        actor=actor,
        since=since,
        until=until,
        error_contains=error_contains,
        exclude_queue=exclude_queue,
        after=after,
        limit=limit,
    )
    return fetch(session, statement, Job.__table__)


def count_by_status(
    session: Session,
    *,
    tenant_id: int | None = None,
    since: dt.datetime | None = None,
    exclude_queue: str | None = None,
) -> dict[str, int]:
    """How many records are in each status (of those sent since `since`, when given).

    Without `since` every record is counted: a scan on a large table; with it,
    the range of the creation index. `exclude_queue`: not that queue's records.
    """
    query = select(Job.status, func.count()).group_by(Job.status)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    if exclude_queue is not None:
        query = query.where(Job.queue != exclude_queue)
    if since is not None:
        query = query.where(Job.created_at >= since)
    return {status: count for status, count in session.execute(query).all()}


def purge_finished_jobs(session: Session, *, older_than: dt.datetime, batch_size: int) -> int:
    """Delete up to `batch_size` final records finished before `older_than`."""
    doomed = (
        select(Job.message_id)
        .where(Job.status.in_(JOB_FINAL_STATES), Job.finished_at < older_than)
        .limit(batch_size)
    )
    result = session.execute(delete(Job).where(Job.message_id.in_(doomed)))
    return int(getattr(result, "rowcount", 0) or 0)


class JobsOnSession:
    """`services.job_views.JobsReader` on a SQLAlchemy session (the console, the demo)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def page(self, **filters: Any) -> list[StoredJob]:
        """`list_jobs`."""
        return list_jobs(self.session, **filters)

    def with_ids(self, message_ids: list[str]) -> list[StoredJob]:
        """The records of these messages."""
        return fetch(self.session, jobs_with_ids(message_ids), Job.__table__)

    def running(
        self,
        *,
        now: dt.datetime,
        stale_after: dt.timedelta,
        tenant_id: int | None = None,
        actor: str | None = None,
    ) -> list[RunningJob]:
        """`services.workers.running_jobs`."""
        return running_jobs(
            self.session, now=now, stale_after=stale_after, tenant_id=tenant_id, actor=actor
        )
