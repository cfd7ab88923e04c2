"""What a job record and a worker's heartbeat look like to a reader: plain data, no SQLAlchemy.

The listings build these from rows, whichever way the rows were read: through
SQLAlchemy (`services.jobs`, `services.workers`: the console, the demo) or by
the command line's quick reads (`cli/quick.py`, plain psycopg2).  A row only
needs the attributes of `StoredJob` or `HeartbeatRow`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, NotRequired, Protocol, TypedDict

from services.errors import valid_tenant_id
from services.pagination import encode_cursor

# A worker is live while its last heartbeat is younger than this many beats.
STALE_AFTER_BEATS = 3

# The listing name a job cursor carries (services/pagination.py).
JOBS_LISTING = "jobs"


class StoredJob(Protocol):
    """What a listing reads of a job record (a `db.models.Job`, or a row of its columns)."""

    @property
    def message_id(self) -> str: ...
    @property
    def tenant_id(self) -> int | None: ...
    @property
    def actor(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def args(self) -> dict[str, Any]: ...
    @property
    def enqueued_at(self) -> dt.datetime | None: ...
    @property
    def started_at(self) -> dt.datetime | None: ...
    @property
    def finished_at(self) -> dt.datetime | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def result(self) -> Any: ...
    @property
    def result_dropped(self) -> str | None: ...
    @property
    def schedule_id(self) -> int | None: ...
    @property
    def slot_at(self) -> dt.datetime | None: ...
    @property
    def created_at(self) -> dt.datetime: ...


class HeartbeatRow(Protocol):
    """What `running` reads of a worker's heartbeat row (a `db.models.Worker`, or a row)."""

    @property
    def worker_id(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def running(self) -> Any: ...


class AttemptInfo(TypedDict):
    """One attempt of a job: its number, when it ran, how it ended, and its error if it failed.

    `outcome` is the record's status that attempt left: retrying, dead (failed), or
    succeeded (the last attempt of a job that succeeded, read from the record itself).
    """

    attempt: int
    started_at: str | None
    finished_at: str | None
    outcome: str
    error_class: str | None
    error: str | None
    # The end of the attempt's traceback (None: not kept, as before migration 0013's
    # history, or for a success).
    traceback: str | None


class JobInfo(TypedDict):
    """A job record as the command line shows it."""

    message_id: str
    tenant_id: int | None
    actor: str
    queue: str
    status: str
    attempts: int
    args: dict[str, Any]
    enqueued_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    error: str | None
    # Any JSON value; None: no result, or not kept (then `result_dropped` says why).
    result: Any
    result_dropped: str | None
    schedule_id: int | None
    slot_at: str | None
    # In a listing: where the next page starts after this record (`--after`).
    cursor: NotRequired[str]
    # On one job's page (`jobs show`): its attempts, oldest first (`attempt_list`), and how
    # many attempts between the first and the latest kept ones were not kept.
    attempt_history: NotRequired[list[AttemptInfo]]
    attempts_not_kept: NotRequired[int]


def iso(value: dt.datetime | None) -> str | None:
    """A time as ISO 8601 text, None as None."""
    return value.isoformat() if value is not None else None


def job_info(job: StoredJob) -> JobInfo:
    """The plain-data view of a job record."""
    duration = None
    if job.started_at is not None and job.finished_at is not None:
        duration = (job.finished_at - job.started_at).total_seconds()
    return {
        "message_id": job.message_id,
        "tenant_id": job.tenant_id,
        "actor": job.actor,
        "queue": job.queue,
        "status": job.status,
        "attempts": job.attempts,
        "args": job.args,
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "duration_seconds": duration,
        "error": job.error,
        "result": job.result,
        "result_dropped": job.result_dropped,
        "schedule_id": job.schedule_id,
        "slot_at": iso(job.slot_at),
    }


def job_cursor(job: StoredJob) -> str:
    """The cursor that resumes a listing of jobs after `job`."""
    return encode_cursor(JOBS_LISTING, job.created_at, job.message_id)


def stale_window(heartbeat_seconds: float) -> dt.timedelta:
    """How long a worker stays live after its last beat, for a beat every `heartbeat_seconds`."""
    return dt.timedelta(seconds=heartbeat_seconds * STALE_AFTER_BEATS)


class RunningEntry(TypedDict):
    """One message a worker thread runs, as the heartbeat writes it into `workers.running`."""

    message_id: str
    actor: str
    queue: str
    tenant_id: int | None
    thread: str
    thread_id: int | None
    started_at: str


class RunningJob(TypedDict):
    """A job that a live worker's heartbeat says one of its threads runs now."""

    message_id: str
    actor: str
    queue: str
    tenant_id: int | None
    worker_id: str
    host: str
    pid: int
    thread: str
    started_at: str
    running_seconds: float


def as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _moment(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(dt.datetime.fromisoformat(value)).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


def start_of(job: RunningJob) -> dt.datetime:
    return dt.datetime.fromisoformat(job["started_at"])


def _running_job(entry: object, worker: HeartbeatRow, *, now: dt.datetime) -> RunningJob | None:
    """One entry of a row's `running` list, or None when it is malformed (never raises)."""
    if not isinstance(entry, dict):
        return None
    message_id, actor, queue = entry.get("message_id"), entry.get("actor"), entry.get("queue")
    started = _moment(entry.get("started_at"))
    if not (isinstance(message_id, str) and message_id and isinstance(actor, str) and actor):
        return None
    if started is None:
        return None
    tenant_id, thread = entry.get("tenant_id"), entry.get("thread")
    return {
        "message_id": message_id,
        "actor": actor,
        "queue": queue if isinstance(queue, str) else "",
        "tenant_id": tenant_id if valid_tenant_id(tenant_id) else None,
        "worker_id": worker.worker_id,
        "host": worker.host,
        "pid": worker.pid,
        "thread": thread if isinstance(thread, str) else "",
        "started_at": started.isoformat(),
        # Another host's clock may run ahead of this one's.
        "running_seconds": round(max(0.0, (now - started).total_seconds()), 1),
    }


def running_of(worker: HeartbeatRow, *, now: dt.datetime) -> list[RunningJob]:
    """The well-formed entries of a row's `running` list, the longest running first."""
    entries = worker.running if isinstance(worker.running, list) else []
    found = [job for e in entries if (job := _running_job(e, worker, now=now)) is not None]
    return sorted(found, key=lambda job: (start_of(job), job["thread"]))


def running_now(
    workers: Iterable[HeartbeatRow],
    *,
    now: dt.datetime,
    tenant_id: int | None = None,
    actor: str | None = None,
) -> list[RunningJob]:
    """What the threads of these (live) workers run, the longest running first.

    Malformed entries are skipped; `tenant_id` and `actor` keep only those jobs.
    """
    found = [
        job
        for worker in workers
        for job in running_of(worker, now=now)
        if (tenant_id is None or job["tenant_id"] == tenant_id)
        and (actor is None or job["actor"] == actor)
    ]
    return sorted(found, key=lambda j: (start_of(j), j["host"], j["pid"], j["thread"]))


class JobsReader(Protocol):
    """Where a listing of jobs reads its rows (`cli.jobs.job_listing`).

    Through SQLAlchemy (`services.jobs.JobsOnSession`) or plain psycopg2
    (`cli.quick.QuickReader`): both run `services.listing_sql`'s statements.
    """

    def page(self, **filters: Any) -> list[StoredJob]:
        """`services.listing_sql.jobs_page` with these filters: a page of records."""
        ...

    def with_ids(self, message_ids: list[str]) -> list[StoredJob]:
        """The records of these messages (`jobs_with_ids`); any order."""
        ...

    def running(
        self,
        *,
        now: dt.datetime,
        stale_after: dt.timedelta,
        tenant_id: int | None = None,
        actor: str | None = None,
    ) -> list[RunningJob]:
        """What live workers run now (`running_now` of `live_heartbeats`)."""
        ...
