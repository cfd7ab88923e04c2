"""Figures over the job records: finished per hour, waiting and finished per tenant."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.orm import Session

from db.models import Job, Tenant
from services.job_stats import finished_by_tenant, finished_per_hour, waiting_by_tenant
from services.tenants import create_tenant, list_tenants

NOW = dt.datetime(2026, 12, 6, 15, 40, tzinfo=dt.UTC)


def _job(session: Session, tenant_id: int, status: str, finished: dt.datetime | None) -> None:
    session.add(
        Job(message_id=str(uuid.uuid4()), tenant_id=tenant_id, actor="a", queue="q", args={},
            status=status, finished_at=finished, created_at=finished or NOW)
    )  # fmt: skip


def test_finished_jobs_are_counted_per_hour_and_per_tenant(
    sqlite_session: Session, tenant: Tenant
) -> None:
    other = create_tenant(sqlite_session, "other").id
    _job(sqlite_session, tenant.id, "succeeded", NOW - dt.timedelta(minutes=5))
    _job(sqlite_session, tenant.id, "succeeded", NOW - dt.timedelta(minutes=30))
    _job(sqlite_session, tenant.id, "dead", NOW - dt.timedelta(minutes=50))
    _job(sqlite_session, other, "succeeded", NOW - dt.timedelta(hours=30))
    _job(sqlite_session, other, "queued", None)
    _job(sqlite_session, other, "retrying", None)
    sqlite_session.flush()

    hours = finished_per_hour(sqlite_session, now=NOW, hours=3)
    assert [h["hour"] for h in hours] == [
        "2026-12-06T13:00:00+00:00", "2026-12-06T14:00:00+00:00", "2026-12-06T15:00:00+00:00"
    ]  # fmt: skip
    assert [h["counts"] for h in hours] == [{}, {"dead": 1}, {"succeeded": 2}]
    assert finished_per_hour(sqlite_session, now=NOW, hours=3, tenant_ids=[other])[2] == {
        "hour": "2026-12-06T15:00:00+00:00",
        "counts": {},
    }
    assert waiting_by_tenant(sqlite_session, since=NOW - dt.timedelta(days=1)) == {other: 2}
    assert waiting_by_tenant(sqlite_session, since=NOW + dt.timedelta(days=1)) == {}
    since = NOW - dt.timedelta(hours=1)
    assert finished_by_tenant(sqlite_session, since=since) == {tenant.id: 3}


def test_the_per_tenant_figures_can_be_of_some_tenants_only(
    sqlite_session: Session, tenant: Tenant
) -> None:
    other = create_tenant(sqlite_session, "other").id
    for tenant_id in (tenant.id, other):
        _job(sqlite_session, tenant_id, "succeeded", NOW - dt.timedelta(minutes=5))
        _job(sqlite_session, tenant_id, "queued", None)
    sqlite_session.flush()
    day, hour = NOW - dt.timedelta(days=1), NOW - dt.timedelta(hours=1)
    assert waiting_by_tenant(sqlite_session, since=day) == {tenant.id: 1, other: 1}
    assert waiting_by_tenant(sqlite_session, since=day, tenant_ids=[other]) == {other: 1}
    assert finished_by_tenant(sqlite_session, since=hour, tenant_ids=[tenant.id]) == {tenant.id: 1}
    assert finished_by_tenant(sqlite_session, since=hour, tenant_ids=[]) == {}


def test_tenants_are_listed_a_page_at_a_time_within_a_scope(
    sqlite_session: Session, tenant: Tenant
) -> None:
    ids = [tenant.id, *(create_tenant(sqlite_session, f"t{i}").id for i in range(4))]
    assert [t.id for t in list_tenants(sqlite_session)] == ids
    assert [t.id for t in list_tenants(sqlite_session, limit=2)] == ids[:2]
    assert [t.id for t in list_tenants(sqlite_session, after=ids[1], limit=2)] == ids[2:4]
    assert [t.id for t in list_tenants(sqlite_session, after=ids[-1])] == []
    scope = {ids[0], ids[3], ids[4]}
    assert [t.id for t in list_tenants(sqlite_session, among=scope, limit=2)] == [ids[0], ids[3]]
    assert [t.id for t in list_tenants(sqlite_session, among=scope, after=ids[0])] == ids[3:]
