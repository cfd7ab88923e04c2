"""`taskyard workers` and `taskyard health` against a real worker, broker and database."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, Worker
from settings import Settings
from tests.integration.cli_harness import BROKER_DOWN_URL, as_json, taskyard
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _database(migrated_database: str) -> None:
    """Every test here runs the CLI on this run's migrated database."""


def _rows(sessions: sessionmaker[Session]) -> list[Worker]:
    with sessions() as session:
        return list(session.scalars(select(Worker)))


def test_a_running_worker_is_listed_with_its_queues_and_threads(
    start_worker: Callable[..., WorkerProcess],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    # Given a worker of 3 threads; its heartbeat row appears at boot
    before = {row.worker_id for row in _rows(sessions)}
    worker = start_worker(threads=3)
    mine = wait_for(
        lambda: [r for r in _rows(sessions) if r.worker_id not in before], what="heartbeat row"
    )

    # When the operator lists the workers
    listed = as_json(taskyard("workers", "--json"))
    table = taskyard("workers")

    # Then it is there, live, with this run's system queue and its thread count
    [row] = [w for w in listed if w["worker_id"] == mine[0].worker_id]
    assert row["live"] is True
    assert row["threads"] == 3
    assert settings.system_queue in row["queues"]
    assert row["in_progress"] == 0
    assert table.returncode == 0 and str(row["pid"]) in table.stdout

    # And when the worker stops, its row goes with it
    assert worker.stop() == 0
    ids = {w["worker_id"] for w in as_json(taskyard("workers", "--stale", "--json"))}
    assert mine[0].worker_id not in ids


def test_a_silent_worker_is_hidden_unless_asked(sessions: sessionmaker[Session]) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with sessions.begin() as session:
        session.add(
            Worker(
                worker_id=f"gone:1:{old.timestamp()}",
                host="gone",
                pid=1,
                queues=["x"],
                started_at=old,
                heartbeat_at=old,
            )
        )

    live = as_json(taskyard("workers", "--json"))
    every = as_json(taskyard("workers", "--stale", "--json"))

    assert "gone" not in [w["host"] for w in live]
    [gone] = [w for w in every if w["host"] == "gone"]
    assert gone["live"] is False and gone["age_seconds"] >= 3600


def test_health_passes_with_a_worker_and_a_fresh_tick(
    worker: WorkerProcess, sessions: sessionmaker[Session]
) -> None:
    # Given a worker (its heartbeat) and a scheduler tick it has run
    from actors.schedules import scheduler_tick

    tick = scheduler_tick.send()
    wait_for(
        lambda: (j := sessions().get(Job, tick.message_id)) is not None and j.status == "succeeded",
        what="the scheduler tick",
    )

    # When the health probe runs
    result = taskyard("health")
    checks = as_json(taskyard("health", "--json"))

    # Then every check passes, one line each (then the store's table), and it exits 0
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:6]] == [
        ["ok", name] for name in ("broker", "database", "schema", "workers", "scheduler", "store")
    ]
    assert [c["check"] for c in checks] == [
        "broker", "database", "schema", "workers", "scheduler", "store",
    ]  # fmt: skip
    assert all(c["ok"] for c in checks), checks


def test_health_fails_when_the_broker_is_down(worker: WorkerProcess) -> None:
    result = taskyard("health", "--json", BROKER_URL=BROKER_DOWN_URL)

    assert result.returncode == 1
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert checks["broker"]["ok"] is False
    assert "127.0.0.1:1" in checks["broker"]["detail"]
    assert "does not answer" in checks["broker"]["detail"]
    assert checks["database"]["ok"] is True
    assert "s3cret-pw" not in result.stdout


def test_health_fails_on_a_database_without_the_schema(sessions: sessionmaker[Session]) -> None:
    # The server's own `postgres` database: reachable, but never migrated
    result = taskyard(
        "health",
        DATABASE_URL=sessions.kw["bind"]
        .url.set(database="postgres")
        .render_as_string(hide_password=False),
    )

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("ok") and "broker" in lines[0]
    assert any(line.startswith("FAIL") and "schema" in line for line in lines)
