"""A job's attempt history on the real PostgreSQL: one JSONB list, appended and capped in place."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.models import Job
from services.jobs import ATTEMPTS_KEPT, ATTEMPTS_KEPT_FIRST, attempt_list, record_failure
from services.records import JobRecord

pytestmark = pytest.mark.integration


def test_failures_append_their_attempts_and_the_cap_keeps_the_first_and_the_latest(
    engine: Engine,
) -> None:
    message_id = str(uuid.uuid4())
    record = JobRecord(message_id, None, "history_test", "history.q", {"url": "x"}, None)
    times = ATTEMPTS_KEPT + 3
    for attempt in range(1, times + 1):
        record.attempts = attempt
        with Session(engine) as session, session.begin():
            written = record_failure(
                session, record, error=f"Boom: {attempt}", dead=attempt == times
            )
            assert written

    with Session(engine) as session:
        job = session.get(Job, message_id)
        assert job is not None
        attempts, not_kept = attempt_list(job)
    latest = range(times - (ATTEMPTS_KEPT - ATTEMPTS_KEPT_FIRST) + 1, times + 1)
    assert [a["attempt"] for a in attempts] == [*range(1, ATTEMPTS_KEPT_FIRST + 1), *latest]
    assert [a["error"] for a in attempts][:2] == ["1", str(latest[0])]
    assert attempts[-1]["outcome"] == "dead" and not_kept == times - ATTEMPTS_KEPT
    assert job.status == "dead" and job.attempts == times
