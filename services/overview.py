"""The figures of a glance at Taskyard: jobs by status, dead letters, workers, scheduler lag.

One reading for both faces: `taskyard summary` and the web console's overview.
Each figure comes from the service that owns it (job records, dead letters,
workers' heartbeats); this module only adds them up over the tenants asked for.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import TypedDict

from sqlalchemy.orm import Session

from db.models import JOB_DEAD, JOB_QUEUED, JOB_RETRYING, JOB_SUCCEEDED
from services.dead_letters import DeadLetterFilter, count_requeueable
from services.jobs import count_by_status
from services.workers import last_scheduler_tick, list_workers

# The states shown first, in this order; any other one follows.
MAIN_STATES = (JOB_QUEUED, JOB_RETRYING, JOB_SUCCEEDED, JOB_DEAD)


class Figures(TypedDict):
    """The figures, as of one reading."""

    # Records sent since the reading's `since`, by their status now, MAIN_STATES first.
    by_status: list[tuple[str, int]]
    # Dead letters not requeued.
    dead_letters: int
    # Live worker processes (a heartbeat within the stale window), all tenants'.
    workers: int
    threads: int
    # Threads running a job of the tenants asked for, at their last beat.
    busy: int
    # Since the last successful scheduler tick finished; None: never.
    scheduler_age_seconds: float | None


def read_figures(
    session: Session,
    *,
    tenant_ids: Sequence[int] | None,
    since: dt.datetime,
    now: dt.datetime,
    stale_after: dt.timedelta,
    exclude_queue: str | None = None,
) -> Figures:
    """The figures of `tenant_ids` (None: every tenant, and the system jobs too).

    `exclude_queue`: leave that queue's records out of the counts (the system queue's).
    """
    counts: Counter[str] = Counter()
    waiting = 0
    for tenant_id in [None] if tenant_ids is None else tenant_ids:
        counts.update(
            count_by_status(session, tenant_id=tenant_id, since=since, exclude_queue=exclude_queue)
        )
        waiting += count_requeueable(session, DeadLetterFilter(tenant_id=tenant_id))
    live = list_workers(session, now=now, stale_after=stale_after)
    busy = sum(
        1
        for worker in live
        for job in worker["running"]
        if tenant_ids is None or job["tenant_id"] in tenant_ids
    )
    last_tick = last_scheduler_tick(session)
    ordered = [s for s in MAIN_STATES if s in counts] + sorted(set(counts) - set(MAIN_STATES))
    return {
        "by_status": [(status, counts[status]) for status in ordered],
        "dead_letters": waiting,
        "workers": len(live),
        "threads": sum(worker["threads"] for worker in live),
        "busy": busy,
        "scheduler_age_seconds": None
        if last_tick is None
        else max(0.0, (now - last_tick).total_seconds()),
    }
