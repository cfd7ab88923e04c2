"""What runs, from the workers' heartbeat rows: live rows only, malformed entries skipped."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from db.models import Worker
from services.job_views import stale_window
from services.workers import (
    beat,
    list_workers,
    running_job,
    running_jobs,
)

NOW = dt.datetime(2026, 12, 12, 10, 0, 0, tzinfo=dt.UTC)
WINDOW = dt.timedelta(seconds=6)


def entry(message_id: str, *, seconds_ago: float = 1.0, **fields: Any) -> dict[str, Any]:
    """One `running` entry as the heartbeat writes it, started `seconds_ago` before NOW."""
    started = NOW - dt.timedelta(seconds=seconds_ago)
    return {
        "message_id": message_id,
        "actor": "sync_feed",
        "queue": "tenant.7",
        "tenant_id": 7,
        "thread": "Thread-1",
        "thread_id": 140001,
        "started_at": started.isoformat(),
        **fields,
    }


def write(
    session: Session,
    worker_id: str,
    running: list[dict[str, Any]],
    *,
    beat_age: float = 1.0,
    host: str = "h1",
    pid: int = 11,
) -> None:
    beat(
        session,
        worker_id=worker_id,
        host=host,
        pid=pid,
        queues=["tenant.7"],
        threads=4,
        in_progress=len(running),
        running=running,
        started_at=NOW - dt.timedelta(hours=1),
        now=NOW - dt.timedelta(seconds=beat_age),
    )


def test_the_running_jobs_of_live_workers_the_longest_running_first(
    sqlite_session: Session,
) -> None:
    write(sqlite_session, "w1", [entry("a", seconds_ago=3), entry("b", seconds_ago=30)])
    write(sqlite_session, "w2", [entry("c", seconds_ago=10, thread="Thread-2")], host="h2", pid=22)

    jobs = running_jobs(sqlite_session, now=NOW, stale_after=WINDOW)

    assert [j["message_id"] for j in jobs] == ["b", "c", "a"]
    assert jobs[1] == {
        "message_id": "c",
        "actor": "sync_feed",
        "queue": "tenant.7",
        "tenant_id": 7,
        "worker_id": "w2",
        "host": "h2",
        "pid": 22,
        "thread": "Thread-2",
        "started_at": (NOW - dt.timedelta(seconds=10)).isoformat(),
        "running_seconds": 10.0,
    }


def test_a_stale_workers_jobs_are_not_running(sqlite_session: Session) -> None:
    # Given a worker silent for longer than the window (it died with its jobs)
    write(sqlite_session, "dead", [entry("ghost")], beat_age=WINDOW.total_seconds() + 1)
    write(sqlite_session, "live", [entry("real")], beat_age=WINDOW.total_seconds() - 1)

    jobs = running_jobs(sqlite_session, now=NOW, stale_after=WINDOW)

    assert [j["message_id"] for j in jobs] == ["real"]
    assert running_job(sqlite_session, "ghost", now=NOW, stale_after=WINDOW) is None


def test_a_beat_replaces_what_the_row_said_runs(sqlite_session: Session) -> None:
    write(sqlite_session, "w1", [entry("a"), entry("b")])
    write(sqlite_session, "w1", [entry("b")])

    [worker] = list_workers(sqlite_session, now=NOW, stale_after=WINDOW)

    assert [j["message_id"] for j in worker["running"]] == ["b"]
    assert worker["in_progress"] == 1


@pytest.mark.parametrize(
    "malformed",
    [
        "not an object",
        None,
        7,
        ["a", "list"],
        {"actor": "x", "started_at": NOW.isoformat()},  # no message id
        entry("", actor="x"),  # an empty message id
        entry(7),  # a message id that is not a string
        entry("no-actor", actor=None),
        entry("no-start", started_at=None),
        entry("bad-start", started_at="yesterday"),
        entry("number-start", started_at=1765533600),
        entry("far-start", started_at="0001-01-01T00:00:00+23:59"),
    ],
)
def test_a_malformed_entry_is_skipped_and_the_rest_still_read(
    sqlite_session: Session, malformed: Any
) -> None:
    write(sqlite_session, "w1", [])
    sqlite_session.execute(
        update(Worker).values(running=[malformed, entry("good")]).where(Worker.worker_id == "w1")
    )

    jobs = running_jobs(sqlite_session, now=NOW, stale_after=WINDOW)
    [worker] = list_workers(sqlite_session, now=NOW, stale_after=WINDOW)

    assert [j["message_id"] for j in jobs] == ["good"]
    assert [j["message_id"] for j in worker["running"]] == ["good"]


@pytest.mark.parametrize("column", [{"not": "a list"}, "text", 3, None])
def test_a_running_column_that_is_not_a_list_reads_as_nothing(
    sqlite_session: Session, column: Any
) -> None:
    write(sqlite_session, "w1", [])
    # JSON null, not SQL NULL (the column is NOT NULL).
    sqlite_session.execute(update(Worker).values(running=column).where(Worker.worker_id == "w1"))

    assert running_jobs(sqlite_session, now=NOW, stale_after=WINDOW) == []


def test_odd_but_usable_fields_are_read_with_what_can_be_trusted(sqlite_session: Session) -> None:
    naive = (NOW - dt.timedelta(seconds=5)).replace(tzinfo=None).isoformat()
    offset = (NOW - dt.timedelta(seconds=2)).astimezone(dt.timezone(dt.timedelta(hours=2)))
    write(
        sqlite_session,
        "w1",
        [
            entry("naive", started_at=naive, tenant_id="7", thread=None, queue=None),
            entry("offset", started_at=offset.isoformat(), tenant_id=True),
            entry("future", seconds_ago=-30),  # the worker's clock runs ahead
        ],
    )

    jobs = {j["message_id"]: j for j in running_jobs(sqlite_session, now=NOW, stale_after=WINDOW)}

    assert jobs["naive"]["started_at"] == (NOW - dt.timedelta(seconds=5)).isoformat()
    assert (jobs["naive"]["tenant_id"], jobs["naive"]["thread"], jobs["naive"]["queue"]) == (
        None,
        "",
        "",
    )
    assert jobs["offset"]["started_at"] == (NOW - dt.timedelta(seconds=2)).isoformat()
    assert jobs["offset"]["tenant_id"] is None
    assert jobs["future"]["running_seconds"] == 0.0


def test_running_jobs_filter_by_tenant_and_actor(sqlite_session: Session) -> None:
    write(
        sqlite_session,
        "w1",
        [
            entry("t7", tenant_id=7),
            entry("t8", tenant_id=8),
            entry("t8-other", tenant_id=8, actor="notify_webhook"),
            entry("system", tenant_id=None, actor="scheduler_tick"),
        ],
    )

    def ids(**filters: Any) -> list[str]:
        found = running_jobs(sqlite_session, now=NOW, stale_after=WINDOW, **filters)
        return sorted(j["message_id"] for j in found)

    assert ids(tenant_id=8) == ["t8", "t8-other"]
    assert ids(tenant_id=8, actor="notify_webhook") == ["t8-other"]
    assert ids(actor="scheduler_tick") == ["system"]
    assert ids(tenant_id=9) == []
    assert len(ids()) == 4


def test_running_job_finds_one_message_the_latest_start_when_two_threads_list_it(
    sqlite_session: Session,
) -> None:
    # A worker died with "m" (its row not stale yet); another worker runs the redelivery
    write(sqlite_session, "died", [entry("m", seconds_ago=20)], beat_age=5)
    write(sqlite_session, "took-over", [entry("m", seconds_ago=2)], host="h2")

    found = running_job(sqlite_session, "m", now=NOW, stale_after=WINDOW)

    assert found is not None and found["worker_id"] == "took-over"
    assert running_job(sqlite_session, "other", now=NOW, stale_after=WINDOW) is None


def test_stale_window_is_three_beats() -> None:
    assert stale_window(2.0) == dt.timedelta(seconds=6)
