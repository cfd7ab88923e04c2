"""A schedule's last runs on SQLite (the demo): claims newest first, each with its job's status."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from db.models import Job, ScheduleRun, Tenant
from services.schedules import last_runs
from tests.unit.services.schedule_helpers import make

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_the_newest_claims_come_with_their_jobs_status(
    sqlite_session: Session, tenant: Tenant
) -> None:
    schedule, other = make(sqlite_session, tenant), make(sqlite_session, tenant)
    for hours in range(4):
        slot = T0 - dt.timedelta(hours=hours)
        sqlite_session.add(ScheduleRun(tenant_id=tenant.id, schedule_id=schedule.id, slot_at=slot))
    sqlite_session.add(
        Job(
            message_id="m-1", tenant_id=tenant.id, actor="a", queue="q", args={},
            status="dead", schedule_id=schedule.id, slot_at=T0 - dt.timedelta(hours=1),
        )
    )  # fmt: skip
    sqlite_session.flush()

    found = last_runs(sqlite_session, [schedule.id, other.id], limit=3)

    assert [(r["slot_at"], r["message_id"], r["status"]) for r in found[schedule.id]] == [
        (T0.isoformat(), None, None),
        ((T0 - dt.timedelta(hours=1)).isoformat(), "m-1", "dead"),
        ((T0 - dt.timedelta(hours=2)).isoformat(), None, None),
    ]
    assert found[other.id] == []
    assert last_runs(sqlite_session, []) == {}
