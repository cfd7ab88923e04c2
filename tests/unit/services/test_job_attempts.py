"""A job's attempt history on SQLite: capped to the first and the latest, read defensively."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Job
from services.jobs import ATTEMPTS_KEPT, ATTEMPTS_KEPT_FIRST, attempt_list, record_failure
from services.records import JobRecord


def fail(session: Session, times: int, *, dead_at_last: bool = False) -> Job:
    record = JobRecord("m-1", 1, "ingest", "tenant.1", {"tenant_id": 1}, None)
    for attempt in range(1, times + 1):
        record.attempts = attempt
        dead = dead_at_last and attempt == times
        assert record_failure(session, record, error=f"Boom: number {attempt}", dead=dead)
    session.flush()
    session.expire_all()
    job = session.get(Job, "m-1")
    assert job is not None
    return job


def test_each_failure_appends_its_attempt(sqlite_session: Session) -> None:
    job = fail(sqlite_session, 3)

    attempts, not_kept = attempt_list(job)
    assert [(a["attempt"], a["outcome"], a["error_class"], a["error"]) for a in attempts] == [
        (1, "retrying", "Boom", "number 1"),
        (2, "retrying", "Boom", "number 2"),
        (3, "retrying", "Boom", "number 3"),
    ]
    assert not_kept == 0


def test_past_the_cap_the_first_and_the_latest_attempts_are_kept(sqlite_session: Session) -> None:
    times = ATTEMPTS_KEPT + 5
    job = fail(sqlite_session, times, dead_at_last=True)

    attempts, not_kept = attempt_list(job)
    numbers = [a["attempt"] for a in attempts]
    latest = list(range(times - (ATTEMPTS_KEPT - ATTEMPTS_KEPT_FIRST) + 1, times + 1))
    assert numbers == list(range(1, ATTEMPTS_KEPT_FIRST + 1)) + latest
    assert not_kept == times - ATTEMPTS_KEPT
    assert attempts[-1]["outcome"] == "dead" and attempts[0]["error"] == "number 1"


def test_a_final_record_gets_no_attempt_from_a_late_failure(sqlite_session: Session) -> None:
    fail(sqlite_session, 1, dead_at_last=True)
    record = JobRecord("m-1", 1, "ingest", "tenant.1", {"tenant_id": 1}, None)
    record.attempts = 2

    assert not record_failure(sqlite_session, record, error="Late: copy", dead=False)
    sqlite_session.expire_all()
    job = sqlite_session.get(Job, "m-1")
    assert job is not None and len(job.attempt_history or []) == 1


def test_malformed_entries_are_skipped_and_an_old_record_shows_its_last_attempt() -> None:
    job = Job(
        message_id="m-2",
        actor="a",
        queue="q",
        args={},
        status="succeeded",
        attempts=4,
        attempt_history=["junk", {"attempt": "x"}, {"attempt": 2, "outcome": 7}],
    )

    attempts, not_kept = attempt_list(job)

    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(2, "failed"), (4, "succeeded")]
    assert not_kept == 2
