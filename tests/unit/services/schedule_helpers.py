"""Shared by the schedule service tests: a test actor's schema, a schedule factory, a clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import Schema, fields, validate
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Schedule, Tenant
from services.schedules import create_schedule

UTC = dt.UTC
NOON = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class PingArgs(Schema):
    """Arguments of the test actor `ping`."""

    tenant_id = fields.Integer(required=True, strict=True)
    url = fields.String(required=True, validate=validate.Length(min=1))


ACTORS: dict[str, type[Schema] | None] = {"ping": PingArgs, "free": None}


def make(session: Session, tenant: Tenant, **overrides: Any) -> Schedule:
    """A valid schedule of `tenant`, created at NOON unless told."""
    options: dict[str, Any] = {
        "actor": "ping",
        "args": {"url": "https://example.test"},
        "cron": "*/5 * * * *",
        "actors": ACTORS,
        "now": NOON,
        **overrides,
    }
    return create_schedule(session, tenant.id, **options)


def count(session: Session, model: type[Any]) -> int:
    """Rows of a table."""
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def minutes(start: dt.datetime, end: dt.datetime, step: int = 1) -> list[dt.datetime]:
    """Every `step` minutes from start to end, inclusive: the clock of a series of ticks."""
    out, moment = [], start
    while moment <= end:
        out.append(moment)
        moment += dt.timedelta(minutes=step)
    return out
