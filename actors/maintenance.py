"""Periodic maintenance actors; `periodiq schedules` sends them, any worker runs them.

They are declared here, not in schedules.py, because `dramatiq actors` imports
only this package and every worker must know an actor to run it.
"""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

from sqlalchemy import Engine

import brokers
from actors.base import taskyard_actor
from middleware import current_session
from services import partitions, retention
from services.cron import periodic

# Every day at 03:17 UTC: off the hour, when most other cron jobs start.
JOB_RETENTION_CRON = "17 3 * * *"


class PurgeResult(TypedDict):
    """What `purge_job_records` leaves on its job record."""

    deleted: int
    partitions_created: list[str]
    partitions_dropped: list[str]
    partitions_left: list[str]
    # Rows deleted per table (services/retention.py), and the tables the run's time
    # budget left unfinished (the next run goes on).
    pruned: dict[str, int]
    unfinished: list[str]
    schedule_runs_deleted: int
    group_rows_deleted: int
    stale_workers_deleted: int
    older_than: str


@taskyard_actor(
    name="purge_job_records", tenant_scoped=False, periodic=periodic(JOB_RETENTION_CRON)
)
def purge_job_records() -> PurgeResult:
    """Keep every table for the retention: create the next days' partitions of `jobs`,
    drop its expired days whole, then delete the other expired rows in short batches
    (services/retention.py: the default partition, schedules' claimed slots, groups,
    ingests and their items, cancel requests, requeued dead letters, vanished workers)."""
    days = brokers.settings.job_retention_days
    now = dt.datetime.now(dt.UTC)
    older_than = now - dt.timedelta(days=days)
    session = current_session()
    # First, on a connection of its own (each DDL statement commits alone, and this
    # job's transaction holds no lock on `jobs` yet): the next days' partitions, and
    # the expired days' dropped whole (services/partitions.py).
    engine = session.get_bind()
    assert isinstance(engine, Engine), "the session is bound to an engine"
    with engine.connect() as connection:
        created = partitions.ensure_partitions(connection, today=now.date())
        dropped, left = partitions.drop_expired(connection, now=now, retention_days=days)
    pruned, unfinished = retention.prune_expired(
        retention.batches_for(session), older_than=older_than, now=now
    )
    return {
        "deleted": pruned["jobs"],
        "partitions_created": created,
        "partitions_dropped": dropped,
        "partitions_left": left,
        "pruned": pruned,
        "unfinished": unfinished,
        "schedule_runs_deleted": pruned["schedule_runs"],
        "group_rows_deleted": pruned["job_groups"],
        "stale_workers_deleted": pruned["workers"],
        "older_than": older_than.isoformat(),
    }
