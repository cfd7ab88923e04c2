"""The heartbeat middleware on SQLite and the stub broker: its row, its counts, an outage."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker as DramatiqWorker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade_to_head
from db.models import Worker
from db.session import make_engine, make_session_factory
from middleware.heartbeat import Heartbeat
from services.workers import list_workers, purge_stale_workers
from settings import Settings
from tests.support import wait_for


def factory(path: Path) -> sessionmaker[Session]:
    return make_session_factory(make_engine(Settings(database_url=f"sqlite:///{path}")))


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    """A migrated SQLite database's session factory."""
    upgrade_to_head(f"sqlite:///{tmp_path / 'taskyard.sqlite3'}")
    return factory(tmp_path / "taskyard.sqlite3")


def rows(sessions: sessionmaker[Session]) -> list[Worker]:
    with sessions() as session:
        return list(session.scalars(select(Worker)))


@pytest.fixture
def beating(sessions: sessionmaker[Session]) -> Iterator[tuple[StubBroker, Heartbeat]]:
    heartbeat = Heartbeat(session_factory=sessions, interval_seconds=0.05)
    broker = StubBroker(middleware=[heartbeat])
    broker.declare_queue("tenant.1")
    yield broker, heartbeat
    broker.close()


def test_a_worker_writes_its_row_counts_running_jobs_and_removes_it_at_shutdown(
    sessions: sessionmaker[Session], beating: tuple[StubBroker, Heartbeat]
) -> None:
    broker, heartbeat = beating
    started, release = threading.Event(), threading.Event()

    @dramatiq.actor(broker=broker, queue_name="tenant.1")
    def slow() -> None:
        started.set()
        release.wait(10)

    worker = DramatiqWorker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        [row] = wait_for(lambda: rows(sessions), what="the heartbeat row")
        assert (row.threads, row.queues, row.in_progress) == (2, ["tenant.1"], 0)
        slow.send()
        assert started.wait(5)
        busy = wait_for(
            lambda: [r for r in rows(sessions) if r.in_progress == 1], what="in progress 1"
        )
        assert busy[0].worker_id == heartbeat.worker_id
        release.set()
        broker.join("tenant.1")
        wait_for(lambda: rows(sessions)[0].in_progress == 0, what="in progress 0")
    finally:
        release.set()
        worker.stop()

    assert rows(sessions) == []


def test_a_database_outage_skips_beats_without_stopping_them(tmp_path: Path) -> None:
    # Given a worker whose database has no schema yet (every beat fails)
    path = tmp_path / "later.sqlite3"
    heartbeat = Heartbeat(session_factory=factory(path), interval_seconds=0.05)
    broker = StubBroker(middleware=[heartbeat])
    worker = DramatiqWorker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert heartbeat.beat_once() is False
        # When the database comes back
        upgrade_to_head(f"sqlite:///{path}")
        # Then the same thread writes the row at its next beat
        wait_for(lambda: rows(factory(path)), what="a beat after the outage")
    finally:
        worker.stop()
        broker.close()


def test_stale_rows_are_hidden_then_purged(sessions: sessionmaker[Session]) -> None:
    now = dt.datetime.now(dt.UTC)
    with sessions.begin() as session:
        for name, age in (("fresh", 5), ("stale", 60), ("gone", 2 * 86400)):
            at = now - dt.timedelta(seconds=age)
            session.add(
                Worker(worker_id=name, host=name, pid=1, queues=[], started_at=at, heartbeat_at=at)
            )
    window = dt.timedelta(seconds=30)

    with sessions.begin() as session:
        live = list_workers(session, now=now, stale_after=window)
        every = list_workers(session, now=now, stale_after=window, include_stale=True)
        purged = purge_stale_workers(session, older_than=now - dt.timedelta(days=1))

    assert [w["host"] for w in live] == ["fresh"]
    assert {w["host"]: w["live"] for w in every} == {"fresh": True, "gone": False, "stale": False}
    assert purged == 1
    assert sorted(r.host for r in rows(sessions)) == ["fresh", "stale"]
