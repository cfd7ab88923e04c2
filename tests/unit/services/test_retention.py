"""Retention beside the partitions: every growing table loses its expired rows, in batches.

Given rows older and newer than the retention in every table the daily job prunes,
When `prune_expired` runs (with small batches, so each table takes several),
Then exactly the expired rows are gone, an ingest goes only with its items, a dead
letter nobody requeued stays, and a spent budget names the tables left for next time.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import (
    INGEST_COMPLETED,
    JOB_SUCCEEDED,
    CancelRequest,
    DeadLetter,
    Ingest,
    IngestItem,
    Job,
    JobGroup,
    ScheduleRun,
    Tenant,
    Worker,
)
from services.retention import batches_for, prune_expired
from tests.unit.services.schedule_helpers import make

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
OLDER_THAN = NOW - dt.timedelta(days=30)
OLD = NOW - dt.timedelta(days=45)
NEW = NOW - dt.timedelta(days=1)


def fill(session: Session, tenant: Tenant) -> dict[str, set[str]]:
    """Two of each row, old and new; the ids that must survive, per table."""
    schedule = make(session, tenant)
    kept: dict[str, set[str]] = {}
    for when in (OLD, OLD, NEW):
        message_id = str(uuid.uuid4())
        session.add(
            Job(
                message_id=message_id,
                tenant_id=tenant.id,
                actor="ping",
                queue="q",
                args={},
                status=JOB_SUCCEEDED,
                attempts=1,
                created_at=when,
                finished_at=when,
            )
        )
        if when is NEW:
            kept["jobs"] = {message_id}
    for minute, when in enumerate((OLD, OLD, OLD, NEW)):
        session.add(
            ScheduleRun(
                tenant_id=tenant.id,
                schedule_id=schedule.id,
                slot_at=when + dt.timedelta(minutes=minute),
                created_at=when,
            )
        )
    for when in (OLD, NEW):
        ingest = Ingest(
            tenant_id=tenant.id, source_url="https://feed.test", status=INGEST_COMPLETED
        )
        ingest.created_at = when
        session.add(ingest)
        session.flush()
        for position in range(5):
            session.add(IngestItem(tenant_id=tenant.id, ingest_id=ingest.id, position=position))
        if when is NEW:
            kept["ingests"] = {str(ingest.id)}
    for when in (OLD, NEW):
        message_id = str(uuid.uuid4())
        session.add(CancelRequest(message_id=message_id, requested_at=when))
        if when is NEW:
            kept["cancel_requests"] = {message_id}
    kept["dead_letters"] = set()
    for requeued, when in ((OLD, OLD), (NEW, OLD), (None, OLD), (OLD, OLD)):
        message_id = str(uuid.uuid4())
        letter = DeadLetter(message_id=message_id, queue="q", reason="failed", requeued_at=requeued)
        letter.created_at = when
        session.add(letter)
        if requeued is not OLD:
            kept["dead_letters"].add(message_id)
    for when in (OLD, NEW):
        session.add(JobGroup(id=f"group-{when.day}", size=1, created_at=when))
    kept["job_groups"] = {f"group-{NEW.day}"}
    counter = itertools.count()
    for when in (OLD, NOW):
        worker_id = f"host:{next(counter)}"
        session.add(
            Worker(
                worker_id=worker_id,
                host="h",
                pid=1,
                queues=[],
                threads=1,
                in_progress=0,
                started_at=when,
                heartbeat_at=when,
            )
        )
        if when is NOW:
            kept["workers"] = {worker_id}
    session.flush()
    return kept


def ids(session: Session) -> dict[str, set[str]]:
    return {
        "jobs": set(session.scalars(select(Job.message_id))),
        "ingests": {str(i) for i in session.scalars(select(Ingest.id))},
        "cancel_requests": set(session.scalars(select(CancelRequest.message_id))),
        "dead_letters": set(session.scalars(select(DeadLetter.message_id))),
        "job_groups": set(session.scalars(select(JobGroup.id))),
        "workers": set(session.scalars(select(Worker.worker_id))),
    }


def test_every_expired_row_goes_in_batches_and_nothing_else(
    sqlite_session: Session, tenant: Tenant
) -> None:
    kept = fill(sqlite_session, tenant)

    deleted, unfinished = prune_expired(
        batches_for(sqlite_session), older_than=OLDER_THAN, now=NOW, batch_size=2
    )

    assert unfinished == []
    assert ids(sqlite_session) == kept
    # The new ingest keeps its items; the old one went with its items, which went first.
    items = list(sqlite_session.scalars(select(IngestItem.ingest_id)))
    assert {str(i) for i in items} == kept["ingests"] and len(items) == 5
    slots = list(sqlite_session.scalars(select(ScheduleRun.created_at)))
    assert len(slots) == 1
    assert deleted == {
        "jobs": 2,
        "schedule_runs": 3,
        "job_groups": 1,
        "ingest_items": 5,
        "ingests": 1,
        "cancel_requests": 1,
        "dead_letters": 2,
        "workers": 1,
    }


def test_a_spent_budget_leaves_the_unfinished_tables_for_the_next_run(
    sqlite_session: Session, tenant: Tenant
) -> None:
    fill(sqlite_session, tenant)
    ticks = itertools.count()

    # A clock that is past the budget after the first few batches.
    deleted, unfinished = prune_expired(
        batches_for(sqlite_session),
        older_than=OLDER_THAN,
        now=NOW,
        batch_size=1,
        budget_seconds=3,
        clock=lambda: float(next(ticks)),
    )

    assert sum(deleted.values()) == 2
    assert "schedule_runs" in unfinished and "jobs" in unfinished
    # The next run goes on where it stopped.
    _, unfinished = prune_expired(
        batches_for(sqlite_session), older_than=OLDER_THAN, now=NOW, batch_size=1
    )
    assert unfinished == []
