"""Periodic maintenance actors; `periodiq schedules` sends them, any worker runs them.

They are declared here, not in schedules.py, because `dramatiq actors` imports
only this package and every worker must know an actor to run it.
"""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

import brokers
from actors.base import taskyard_actor
from middleware import current_session
from services import jobs
from services.cron import periodic
from services.schedule_slots import purge_schedule_runs
from services.workers import purge_stale_workers

# Every day at 03:17 UTC: off the hour, when most other cron jobs start.
JOB_RETENTION_CRON = "17 3 * * *"
# How many records one run deletes at most; the rest go on the next day.
PURGE_BATCH_SIZE = 50_000
# Heartbeat rows silent this long belong to workers that are gone.
STALE_WORKER_AGE = dt.timedelta(days=1)


class PurgeResult(TypedDict):
    """What `purge_job_records` leaves on its job record."""

    deleted: int
    schedule_runs_deleted: int
    stale_workers_deleted: int
    older_than: str


@taskyard_actor(
    name="purge_job_records", tenant_scoped=False, periodic=periodic(JOB_RETENTION_CRON)
)
def purge_job_records() -> PurgeResult:
    """Delete finished job records and schedules' claimed slots older than the retention,
    and the heartbeat rows of workers silent for a day."""
    days = brokers.settings.job_retention_days
    older_than = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    deleted = jobs.purge_finished_jobs(
        current_session(), older_than=older_than, batch_size=PURGE_BATCH_SIZE
    )
    runs = purge_schedule_runs(
        current_session(), older_than=older_than, batch_size=PURGE_BATCH_SIZE
    )
    # A worker that vanished without a clean shutdown (SIGKILL, a lost host) leaves
    # its heartbeat row; a day of silence is proof enough that it is gone.
    workers = purge_stale_workers(
        current_session(), older_than=dt.datetime.now(dt.UTC) - STALE_WORKER_AGE
    )
    return {
        "deleted": deleted,
        "schedule_runs_deleted": runs,
        "stale_workers_deleted": workers,
        "older_than": older_than.isoformat(),
    }
