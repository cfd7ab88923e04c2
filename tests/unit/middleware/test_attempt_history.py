"""Every attempt of a job on its record: appended by the failure's statement, none on success."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.jobs import job_detail
from services.errors import TransientError
from services.jobs import attempt_list
from services.redaction import redact_value
from tests.unit.middleware.stub_world import stub_world
from tests.unit.middleware.test_db_session import Harness, declare


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with stub_world(tmp_path) as (broker, worker, sessions, settings):
        yield Harness(broker=broker, worker=worker, sessions=sessions, settings=settings)


def test_a_job_that_succeeds_at_once_writes_no_history(harness: Harness) -> None:
    actor = declare(harness, "fine", lambda tenant_id: None)
    message = actor.send(tenant_id=1)
    harness.drain()

    job = harness.job(message.message_id)
    assert (job.status, job.attempt_history) == ("succeeded", None)
    attempts, not_kept = attempt_list(job)
    assert [(a["attempt"], a["outcome"], a["error"]) for a in attempts] == [(1, "succeeded", None)]
    assert not_kept == 0


def test_each_failed_attempt_keeps_its_own_error_then_the_success_is_read_from_the_record(
    harness: Harness,
) -> None:
    calls: list[int] = []

    def flaky(tenant_id: int) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError(f"down {len(calls)} at https://user:hunter2@feed.example/x")

    actor = declare(harness, "flaky_twice", flaky)
    message = actor.send(tenant_id=1)
    harness.drain()

    job = harness.job(message.message_id)
    assert job.status == "succeeded" and job.error is None
    stored = job.attempt_history or []
    assert [(e["attempt"], e["outcome"], e["error_class"]) for e in stored] == [
        (1, "retrying", "TransientError"),
        (2, "retrying", "TransientError"),
    ]
    assert stored[0]["error"].startswith("down 1") and stored[1]["error"].startswith("down 2")
    assert all(e["started_at"] and e["finished_at"] for e in stored)
    # Each with the end of its own traceback: where it was raised, and what
    assert all(
        "in flaky" in e["traceback"] and "raise TransientError" in e["traceback"] for e in stored
    )
    assert "down 1" in stored[0]["traceback"] and "down 2" in stored[1]["traceback"]
    with harness.sessions() as session:
        shown = job_detail(session, message.message_id, stale_after=dt.timedelta(seconds=30))
    assert [a["outcome"] for a in shown["attempt_history"]] == ["retrying", "retrying", "succeeded"]
    assert [a["traceback"] is not None for a in shown["attempt_history"]] == [True, True, False]
    # (redacted as `jobs show` shows everything: no credential from the URL)
    assert "hunter2" in stored[0]["traceback"]
    shown_attempts = redact_value(shown["attempt_history"])
    assert all("hunter2" not in (a["traceback"] or "") for a in shown_attempts)


def test_a_job_that_dies_ends_its_history_with_a_dead_attempt(harness: Harness) -> None:
    def always_down(tenant_id: int) -> None:
        raise TransientError("still down")

    actor = declare(harness, "always_down_history", always_down)
    message = actor.send(tenant_id=1)
    harness.drain()

    job = harness.job(message.message_id)
    assert [(e["attempt"], e["outcome"]) for e in job.attempt_history or []] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "dead"),
    ]
