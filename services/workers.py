"""Worker processes' heartbeat rows: written by each worker, read by `workers` and `health`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypedDict

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import JOB_SUCCEEDED, Job, Worker

# A worker is live while its last heartbeat is younger than this many beats.
STALE_AFTER_BEATS = 3
# The actor whose successful runs show that the scheduler ticks (schedules.py sends it).
SCHEDULER_TICK_ACTOR = "scheduler_tick"


class WorkerInfo(TypedDict):
    """One worker process as `taskyard workers` shows it."""

    worker_id: str
    kind: str
    host: str
    pid: int
    queues: list[Any]
    threads: int
    in_progress: int
    started_at: str
    heartbeat_at: str
    age_seconds: float
    live: bool


def beat(
    session: Session,
    *,
    worker_id: str,
    host: str,
    pid: int,
    queues: Sequence[str],
    threads: int,
    in_progress: int,
    started_at: dt.datetime,
    now: dt.datetime,
    kind: str = "worker",
) -> None:
    """Insert or refresh the row of one worker process."""
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "kind": kind,
        "host": host,
        "pid": pid,
        "queues": list(queues),
        "threads": threads,
        "in_progress": in_progress,
        "started_at": started_at,
        "heartbeat_at": now,
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Worker).values(**values)
    changed = {k: stmt.excluded[k] for k in ("queues", "threads", "in_progress", "heartbeat_at")}
    session.execute(stmt.on_conflict_do_update(index_elements=["worker_id"], set_=changed))


def remove_worker(session: Session, worker_id: str) -> None:
    """Delete the row of a worker that stops."""
    session.execute(delete(Worker).where(Worker.worker_id == worker_id))


def purge_stale_workers(session: Session, *, older_than: dt.datetime) -> int:
    """Delete the rows of workers silent since before `older_than` (they vanished); how many."""
    result = session.execute(delete(Worker).where(Worker.heartbeat_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def worker_info(worker: Worker, *, now: dt.datetime, stale_after: dt.timedelta) -> WorkerInfo:
    """A worker row as plain data, with its heartbeat's age and whether it is live."""
    age = (now - _aware(worker.heartbeat_at)).total_seconds()
    return {
        "worker_id": worker.worker_id,
        "kind": worker.kind,
        "host": worker.host,
        "pid": worker.pid,
        "queues": list(worker.queues),
        "threads": worker.threads,
        "in_progress": worker.in_progress,
        "started_at": _aware(worker.started_at).isoformat(),
        "heartbeat_at": _aware(worker.heartbeat_at).isoformat(),
        "age_seconds": round(age, 1),
        "live": age <= stale_after.total_seconds(),
    }


def list_workers(
    session: Session, *, now: dt.datetime, stale_after: dt.timedelta, include_stale: bool = False
) -> list[WorkerInfo]:
    """The workers whose heartbeat is fresher than `stale_after` (or all), by host and pid."""
    query = select(Worker).order_by(Worker.host, Worker.pid, Worker.worker_id)
    if not include_stale:
        query = query.where(Worker.heartbeat_at >= now - stale_after)
    return [worker_info(w, now=now, stale_after=stale_after) for w in session.scalars(query)]


def last_scheduler_tick(session: Session) -> dt.datetime | None:
    """When a scheduler tick last finished successfully (its job record), if ever."""
    query = select(func.max(Job.finished_at)).where(
        Job.actor == SCHEDULER_TICK_ACTOR, Job.status == JOB_SUCCEEDED
    )
    value = session.scalar(query)
    return _aware(value) if value is not None else None
