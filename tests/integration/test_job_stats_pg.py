"""Finished jobs per hour on PostgreSQL: hours of UTC, whatever the session's time zone."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from db.models import Job
from services.job_stats import finished_per_hour
from settings import Settings

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 12, 6, 15, 40, tzinfo=dt.UTC)


def test_hours_are_utc_hours_in_a_session_half_an_hour_off(
    settings: Settings, migrated_database: str
) -> None:
    kolkata = create_engine(
        settings.database_url, connect_args={"options": "-c timezone=Asia/Kolkata"}
    )
    tenant_id = 2**62 + uuid.uuid4().int % 1000  # no other test's records
    try:
        with Session(kolkata) as session:
            for minutes in (5, 30, 50):
                finished = NOW - dt.timedelta(minutes=minutes)
                session.add(
                    Job(message_id=str(uuid.uuid4()), tenant_id=tenant_id, actor="a", queue="q",
                        args={}, status="succeeded", finished_at=finished)
                )  # fmt: skip
            session.flush()
            hours = finished_per_hour(session, now=NOW, hours=2, tenant_ids=[tenant_id])
            session.rollback()
    finally:
        kolkata.dispose()
    assert hours == [
        {"hour": "2026-12-06T14:00:00+00:00", "counts": {"succeeded": 1}},
        {"hour": "2026-12-06T15:00:00+00:00", "counts": {"succeeded": 2}},
    ]
