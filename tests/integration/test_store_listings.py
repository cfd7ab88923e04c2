"""Listings page by a cursor (no repeats, no gaps), refuse bad cursors, and the store is visible.

`taskyard jobs list` and `dead-letters list` go on from `--after CURSOR`;
`taskyard health` and the metrics server report each table's rows and size,
the oldest record and the job records stuck past retention.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_DEAD, JOB_QUEUED, JOB_SUCCEEDED, DeadLetter, Job
from middleware.metrics_server import HostCollector
from services.dead_letters import dead_letter_cursor
from services.job_views import job_cursor
from tests.integration.cli_harness import as_json, assert_one_line_error, taskyard

pytestmark = pytest.mark.integration

PAGE = 7


@pytest.fixture(autouse=True)
def _database(migrated_database: str) -> None:
    """Every test here runs the CLI on this run's migrated database."""


def add_jobs(
    sessions: sessionmaker[Session],
    tenant_id: int,
    count: int,
    *,
    status: str = JOB_QUEUED,
    created_at: dt.datetime | None = None,
) -> list[str]:
    """Insert `count` job records of a tenant in one statement (one `created_at`: ties)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows: list[dict[str, Any]] = [
        {"message_id": m, "tenant_id": tenant_id, "actor": "walk", "queue": f"tenant.{tenant_id}",
         "args": {"tenant_id": tenant_id}, "status": status}
        for m in ids
    ]  # fmt: skip
    if created_at is not None:
        rows = [row | {"created_at": created_at} for row in rows]
    with sessions.begin() as session:
        session.execute(insert(Job), rows)
    return ids


def health_json(retention_days: str) -> list[dict[str, Any]]:
    """`taskyard health --json`'s checks, whether or not all pass."""
    result = taskyard("health", "--json", TASKYARD_JOB_RETENTION_DAYS=retention_days)
    assert result.returncode in (0, 1), result.stderr
    checks = json.loads(result.stdout)
    assert isinstance(checks, list)
    return checks


def page(*args: str) -> list[dict[str, Any]]:
    found = as_json(taskyard(*args, "--limit", str(PAGE), "--json"))
    assert isinstance(found, list)
    return found


def test_a_filtered_walk_sees_every_record_once_while_records_are_written(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    # Given a tenant with 30 queued records (10 of them written in one statement, so they
    # share their creation time), 5 dead ones, and another tenant's records
    tenant, other = make_tenant("walk"), make_tenant("walk-other")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    queued = add_jobs(sessions, tenant, 20) + add_jobs(sessions, tenant, 10, created_at=long_ago)
    add_jobs(sessions, tenant, 5, status=JOB_DEAD)
    add_jobs(sessions, other, 10)
    listing = ("jobs", "list", "--tenant", str(tenant), "--status", JOB_QUEUED)

    # When the queued ones are walked a page at a time, while new records are sent and
    # records not yet reached are written again (updated_at moves, created_at does not)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        found = page(*listing, *(("--after", cursor) if cursor else ()))
        seen += [job["message_id"] for job in found]
        pages += 1
        assert pages <= 10, "the walk does not move on"
        if len(found) < PAGE:
            break
        cursor = found[-1]["cursor"]
        add_jobs(sessions, tenant, 3)
        with sessions.begin() as session:
            session.execute(
                update(Job)
                .where(Job.message_id.in_(queued[-(pages * 2) :]))
                .values(attempts=Job.attempts + 1, updated_at=dt.datetime.now(dt.UTC))
            )

    # Then every queued record there was at the start came once, newest first, and
    # nothing of the other statuses or of the other tenant
    assert len(seen) == len(set(seen)), "a record was listed twice"
    assert set(seen) == set(queued), "a record was skipped"
    assert seen[-10:] and set(seen[-10:]) == set(queued[20:]), "not newest first"
    assert pages == len(queued) // PAGE + 1


def test_dead_letters_page_on_from_a_cursor(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    # Given 12 dead letters of a tenant
    tenant = make_tenant("walk-dead")
    ids = [f"dl-{uuid.uuid4()}" for _ in range(12)]
    with sessions.begin() as session:
        session.execute(
            insert(DeadLetter),
            [{"message_id": m, "tenant_id": tenant, "queue": "q", "reason": "failed"} for m in ids],
        )
    listing = ("dead-letters", "list", "--tenant", str(tenant))

    # When they are read two pages at a time
    first = page(*listing)
    second = page(*listing, "--cursor", first[-1]["cursor"])

    # Then the pages hold all of them, once each
    walked = [d["message_id"] for d in first + second]
    assert sorted(walked) == sorted(ids)


def test_a_bad_cursor_is_one_clear_error(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    tenant = make_tenant("bad-cursor")
    [message_id] = add_jobs(sessions, tenant, 1)
    with sessions() as session:
        record = session.get(Job, message_id)
        assert record is not None
        good = job_cursor(record)
        dead = DeadLetter(message_id="x", created_at=record.created_at)
        letters_cursor = dead_letter_cursor(dead)
    bad = [
        "nope",
        "",
        "!!!!",
        good[:-3],
        good + "A" * 400,
        "WzEsMiwzXQ",  # [1,2,3]
        "WyJqb2JzIiwieWVzdGVyZGF5IiwiYSJd",  # ["jobs","yesterday","a"]
        letters_cursor,
    ]
    for cursor in bad:
        result = taskyard("jobs", "list", "--after", cursor)
        assert result.returncode == 2, (cursor, result.stderr)
        assert "Traceback" not in result.stderr
        assert "is not a cursor of jobs" in result.stderr, result.stderr
        assert "--after" in result.stderr
    line = assert_one_line_error(
        taskyard("jobs", "list", "--status", "running", "--after", good), 1
    )
    assert "--after does not apply to --status running" in line
    # And a good one still works
    assert (
        as_json(taskyard("jobs", "list", "--tenant", str(tenant), "--after", good, "--json")) == []
    )


def test_health_and_metrics_report_the_tables_and_the_stuck_records(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session], engine: Engine
) -> None:
    # Given a job record queued 40 days ago (past a 30-day retention), a recent one,
    # and a finished one just as old (finished: not stuck)
    tenant = make_tenant("store")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    stuck = add_jobs(sessions, tenant, 1, created_at=old)
    add_jobs(sessions, tenant, 1)
    add_jobs(sessions, tenant, 1, status=JOB_SUCCEEDED, created_at=old)

    # When health runs with that retention (no worker runs here: it exits 1 for that)
    checks = health_json("30")
    table = taskyard("health", TASKYARD_JOB_RETENTION_DAYS="30")

    # Then its store line counts the stuck record and every table's size and age
    [store] = [c for c in checks if c["check"] == "store"]
    assert store["ok"], store
    stats = store["store"]
    assert stats["stuck_jobs"] >= 1 and stats["retention_days"] == 30
    tables = {t["table"]: t for t in stats["tables"]}
    assert {"jobs", "dead_letters", "outbox", "ingest_items", "schedule_runs"} <= set(tables)
    jobs = tables["jobs"]
    assert jobs["rows"] >= 3 and jobs["heap_bytes"] > 0 and jobs["index_bytes"] > 0
    assert jobs["oldest_age_seconds"] >= 40 * 86400 - 60
    # 40 days old against 30 days of retention: 10 days late; a table with no retention
    # (dead letters stay until an operator purges them) has no lag
    assert jobs["retention_seconds"] == 30 * 86400
    assert jobs["retention_lag_seconds"] >= 10 * 86400 - 60
    assert tables["workers"]["retention_seconds"] == 86400
    assert tables["dead_letters"]["retention_lag_seconds"] is None
    assert "stuck" in store["detail"] and "TASKYARD_JOB_RETENTION_DAYS" in store["detail"]
    assert "past the retention" in store["detail"]
    assert "ok   store" in table.stdout and "jobs" in table.stdout and "lag" in table.stdout
    # And a longer retention has none of these stuck, and no lag
    longer = health_json("400")
    [longer_store] = [c["store"] for c in longer if c["check"] == "store"]
    assert longer_store["stuck_jobs"] == 0
    longer_jobs = next(t for t in longer_store["tables"] if t["table"] == "jobs")
    assert longer_jobs["retention_lag_seconds"] == 0

    # And the metrics server's collector gives the same, one series per table
    collector = HostCollector(
        broker_url="amqp://guest:guest@127.0.0.1:1/%2F",
        engine=engine,
        queue_prefix="",
        list_queues=list,
        retention_days=30,
    )
    families = {f.name: f for f in collector.collect()}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for name in ("taskyard_table_rows", "taskyard_table_bytes", "taskyard_jobs_stuck")
        for s in families[name].samples
    }
    assert samples[("taskyard_table_rows", (("table", "jobs"),))] >= 3
    assert samples[("taskyard_table_bytes", (("part", "heap"), ("table", "jobs")))] > 0
    assert samples[("taskyard_jobs_stuck", ())] >= 1
    ages = {
        s.labels["table"]: s.value
        for s in families["taskyard_table_oldest_record_age_seconds"].samples
    }
    assert ages["jobs"] >= 40 * 86400 - 60
    lags = {s.labels["table"]: s.value for s in families["taskyard_retention_lag_seconds"].samples}
    assert lags["jobs"] >= 10 * 86400 - 60 and lags["schedule_runs"] >= 0
    assert "dead_letters" not in lags
    assert len({labels for _, labels in samples}) <= 3 * (len(tables) * 2) + 1
    assert stuck
