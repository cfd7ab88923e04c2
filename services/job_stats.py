"""Figures over the job records for the operator's tools: finished per hour, waiting per tenant."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any, TypedDict

from sqlalchemy import BigInteger, ColumnElement, Select, column, func, select, values
from sqlalchemy.orm import Session

from db.models import JOB_FINAL_STATES, Job
from services.store import WAITING_STATES


class HourCounts(TypedDict):
    """The records that reached a final state in one hour, by status."""

    hour: str
    counts: dict[str, int]


def _hour(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        # The hour in UTC, whatever the session's time zone (some zones are half an hour off).
        return func.date_trunc("hour", func.timezone("UTC", column))
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _as_utc(value: Any) -> dt.datetime:
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def finished_per_hour(
    session: Session,
    *,
    now: dt.datetime,
    hours: int = 24,
    tenant_ids: Sequence[int] | None = None,
) -> list[HourCounts]:
    """Per hour of the last `hours` (oldest first, empty hours too): records finished, by status.

    Read from the records' `finished_at` (the status-and-finish index), of
    `tenant_ids` only when given.
    """
    start = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    start -= dt.timedelta(hours=hours - 1)
    bucket = _hour(session, Job.finished_at)
    query = (
        select(bucket, Job.status, func.count())
        .where(Job.status.in_(sorted(JOB_FINAL_STATES)), Job.finished_at >= start)
        .group_by(bucket, Job.status)
    )
    if tenant_ids is not None:
        query = query.where(Job.tenant_id.in_(list(tenant_ids)))
    found: dict[dt.datetime, dict[str, int]] = {}
    for hour, status, count in session.execute(query).all():
        found.setdefault(_as_utc(hour), {})[status] = int(count)
    hours_shown = [start + dt.timedelta(hours=n) for n in range(hours)]
    return [{"hour": h.isoformat(), "counts": found.get(h, {})} for h in hours_shown]


def _of_tenants(tenant_ids: Collection[int] | None) -> ColumnElement[bool]:
    """Records of a tenant (not system jobs'), of `tenant_ids` only if given."""
    if tenant_ids is None:
        return Job.tenant_id.is_not(None)
    return Job.tenant_id.in_(sorted(tenant_ids))


def waiting_by_tenant(
    session: Session, *, since: dt.datetime, tenant_ids: Collection[int] | None = None
) -> dict[int, int]:
    """How many records sent since `since` wait (queued or retrying), per tenant.

    The depth of each tenant's queue in records, read from a range of the
    status-and-creation index; older waiting records are the store's stuck ones
    (`taskyard health`).  Only the tenants `tenant_ids`, if given.
    """
    if tenant_ids is not None and not tenant_ids:
        return {}
    dialect = session.get_bind().dialect.name
    rows = session.execute(waiting_query(since, tenant_ids, dialect)).all()
    return {int(t): int(count) for t, count in rows if t is not None and count}


def waiting_query(
    since: dt.datetime, tenant_ids: Collection[int] | None, dialect: str = "postgresql"
) -> Select[Any, Any]:
    """`waiting_by_tenant`'s statement (`tenant_ids` not empty, when given)."""
    waiting = (Job.status.in_(WAITING_STATES), Job.created_at >= since)
    if tenant_ids is None or dialect != "postgresql":
        return (
            select(Job.tenant_id, func.count())
            .where(*waiting, _of_tenants(tenant_ids))
            .group_by(Job.tenant_id)
        )
    # On PostgreSQL, a count per tenant, each a range of the (tenant, status, created_at)
    # index of the records not succeeded: it reads the tenant's waiting records alone,
    # where one count over the tenants reads every record sent in the window.
    page = values(column("id", BigInteger), name="page").data(
        [(tenant_id,) for tenant_id in sorted(tenant_ids)]
    )
    counted = (
        select(func.count()).select_from(Job).where(Job.tenant_id == page.c.id, *waiting)
    ).scalar_subquery()
    return select(page.c.id, counted)


def finished_by_tenant(
    session: Session, *, since: dt.datetime, tenant_ids: Collection[int] | None = None
) -> dict[int, int]:
    """How many records each tenant finished since `since`: its throughput.

    Only the tenants `tenant_ids`, if given.
    """
    query = (
        select(Job.tenant_id, func.count())
        .where(
            Job.status.in_(sorted(JOB_FINAL_STATES)),
            Job.finished_at >= since,
            _of_tenants(tenant_ids),
        )
        .group_by(Job.tenant_id)
    )
    rows = session.execute(query).all()
    return {int(tenant_id): int(count) for tenant_id, count in rows if tenant_id is not None}
