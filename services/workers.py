"""Worker processes' heartbeat rows: written by each worker, read by `workers`, `health`, `jobs`.

A row also says what each of the process's threads runs (`running`, as of its
last beat): that, not the job's record, is where "running" comes from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import JOB_SUCCEEDED, Job, Tenant, Worker
from db.session import fetch
from services.job_views import (
    RunningJob,
    as_utc,
    running_now,
    running_of,
    start_of,
)
from services.listing_sql import live_heartbeats
from services.tenants import is_served
from settings import tenant_of_queue_name

# The actor whose successful runs show that the scheduler ticks (schedules.py sends it).
SCHEDULER_TICK_ACTOR = "scheduler_tick"
# The newest successful tick records read for the last finish: ticks that overlap
# (a slow one, a redelivered one) may finish out of order, a few at most.
TICKS_READ = 10


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
    # What its threads ran at its last beat.
    running: list[RunningJob]


def beat(
    session: Session,
    *,
    worker_id: str,
    host: str,
    pid: int,
    queues: Sequence[str],
    threads: int,
    in_progress: int,
    running: Sequence[Mapping[str, Any]],
    started_at: dt.datetime,
    now: dt.datetime,
    kind: str = "worker",
) -> None:
    """Insert or refresh the row of one worker process, with what its threads run (one statement).

    `running` holds one object per message in flight (see `RunningEntry`).
    """
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "kind": kind,
        "host": host,
        "pid": pid,
        "queues": list(queues),
        "threads": threads,
        "in_progress": in_progress,
        "running": [dict(entry) for entry in running],
        "started_at": started_at,
        "heartbeat_at": now,
    }
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Worker).values(**values)
    refreshed = ("queues", "threads", "in_progress", "running", "heartbeat_at")
    changed = {k: stmt.excluded[k] for k in refreshed}
    session.execute(stmt.on_conflict_do_update(index_elements=["worker_id"], set_=changed))


def remove_worker(session: Session, worker_id: str) -> None:
    """Delete the row of a worker that stops."""
    session.execute(delete(Worker).where(Worker.worker_id == worker_id))


# Heartbeat rows silent this long belong to workers that are gone (the daily retention
# job deletes them).
STALE_WORKER_AGE = dt.timedelta(days=1)


def purge_stale_workers(session: Session, *, older_than: dt.datetime) -> int:
    """Delete the rows of workers silent since before `older_than` (they vanished); how many."""
    result = session.execute(delete(Worker).where(Worker.heartbeat_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def worker_info(worker: Worker, *, now: dt.datetime, stale_after: dt.timedelta) -> WorkerInfo:
    """A worker row as plain data, with its heartbeat's age and whether it is live."""
    age = (now - as_utc(worker.heartbeat_at)).total_seconds()
    return {
        "worker_id": worker.worker_id,
        "kind": worker.kind,
        "host": worker.host,
        "pid": worker.pid,
        "queues": list(worker.queues),
        "threads": worker.threads,
        "in_progress": worker.in_progress,
        "started_at": as_utc(worker.started_at).isoformat(),
        "heartbeat_at": as_utc(worker.heartbeat_at).isoformat(),
        "age_seconds": round(age, 1),
        "live": age <= stale_after.total_seconds(),
        "running": running_of(worker, now=now),
    }


def list_workers(
    session: Session, *, now: dt.datetime, stale_after: dt.timedelta, include_stale: bool = False
) -> list[WorkerInfo]:
    """The workers whose heartbeat is fresher than `stale_after` (or all), by host and pid."""
    query = select(Worker).order_by(Worker.host, Worker.pid, Worker.worker_id)
    if not include_stale:
        query = query.where(Worker.heartbeat_at >= now - stale_after)
    return [worker_info(w, now=now, stale_after=stale_after) for w in session.scalars(query)]


def serving_hosts(
    session: Session, *, now: dt.datetime, stale_after: dt.timedelta, queue_prefix: str
) -> dict[int, list[str]]:
    """The hosts of the live workers that consume each tenant's queue, by tenant id.

    From the heartbeat rows' queues: a worker pinned to some tenants
    (`TASKYARD_TENANTS`) lists their queues only; an unpinned one every
    tenant's.  A tenant no live worker serves is absent (`unserved_tenants`).
    """
    live = session.execute(
        select(Worker.host, Worker.queues).where(Worker.heartbeat_at >= now - stale_after)
    )
    served: dict[int, set[str]] = {}
    for host, queues in live:
        for name in queues if isinstance(queues, list) else []:
            if isinstance(name, str) and (
                (tenant_id := tenant_of_queue_name(queue_prefix, name)) is not None
            ):
                served.setdefault(tenant_id, set()).add(host)
    return {tenant_id: sorted(hosts) for tenant_id, hosts in served.items()}


def unserved_tenants(
    session: Session, *, now: dt.datetime, stale_after: dt.timedelta, queue_prefix: str
) -> list[int]:
    """Tenants a worker should serve that no live worker consumes the queue of, by id.

    A tenant created less than `stale_after` ago is left out: an unpinned
    worker picks a new tenant up at its next refresh.  Its jobs wait in its
    queue meanwhile (nothing is lost); they run once a worker serving it starts.
    """
    served = serving_hosts(session, now=now, stale_after=stale_after, queue_prefix=queue_prefix)
    wanted = session.execute(
        select(Tenant.id, Tenant.status).where(Tenant.created_at < now - stale_after)
    )
    return sorted(t for t, status in wanted if is_served(status) and t not in served)


def running_jobs(
    session: Session,
    *,
    now: dt.datetime,
    stale_after: dt.timedelta,
    tenant_id: int | None = None,
    actor: str | None = None,
) -> list[RunningJob]:
    """What the threads of live workers run now (by their last beat), the longest running first.

    Live as in `list_workers`: a heartbeat fresher than `stale_after`. Malformed
    entries are skipped. A job started less than one beat ago is not here yet.
    """
    rows = fetch(session, live_heartbeats(now - stale_after), Worker.__table__)
    return running_now(rows, now=now, tenant_id=tenant_id, actor=actor)


def running_job(
    session: Session, message_id: str, *, now: dt.datetime, stale_after: dt.timedelta
) -> RunningJob | None:
    """The live thread running `message_id` now, if a heartbeat says one does.

    Two may (a redelivered copy starts while the row of the worker that died with
    it has not gone stale yet): the latest start is the one that runs.
    """
    found = [
        job
        for job in running_jobs(session, now=now, stale_after=stale_after)
        if job["message_id"] == message_id
    ]
    return max(found, key=start_of, default=None)


def last_scheduler_tick(session: Session) -> dt.datetime | None:
    """When a scheduler tick last finished successfully (its job record), if ever.

    Read from the newest tick records (the actor's index, newest first), not by a
    scan for the latest finish: as quick when the scheduler has been down for days.
    """
    newest = (
        select(Job.finished_at)
        .where(Job.actor == SCHEDULER_TICK_ACTOR, Job.status == JOB_SUCCEEDED)
        .order_by(Job.created_at.desc())
        .limit(TICKS_READ)
        .subquery()
    )
    value = session.scalar(select(func.max(newest.c.finished_at)))
    return as_utc(value) if value is not None else None
