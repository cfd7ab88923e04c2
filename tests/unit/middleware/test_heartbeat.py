"""The heartbeat middleware on SQLite and the stub broker: its row, what runs, an outage."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Message
from dramatiq import Worker as DramatiqWorker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade_to_head
from db.models import Worker
from db.session import make_engine, make_session_factory
from middleware.heartbeat import Heartbeat
from services.workers import list_workers, purge_stale_workers, running_jobs
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
        [entry] = busy[0].running
        assert (entry["actor"], entry["queue"], entry["tenant_id"]) == ("slow", "tenant.1", None)
        # Written by the worker thread that runs it, not by the heartbeat's own thread
        assert entry["thread"] and entry["thread"] != "taskyard-heartbeat"
        release.set()
        broker.join("tenant.1")
        idle = wait_for(lambda: rows(sessions)[0].in_progress == 0, what="in progress 0")
        assert idle and rows(sessions)[0].running == []
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


def proxy(message_id: str, **kwargs: Any) -> MessageProxy:
    """A message as a worker thread holds it."""
    return MessageProxy(Message("tenant.7", "sync_feed", (), kwargs, {}, message_id=message_id))


def test_a_beat_writes_each_message_in_flight_and_forgets_it_once_done(
    sessions: sessionmaker[Session],
) -> None:
    # Given a heartbeat (no worker: no beating thread) and two messages in flight
    heartbeat = Heartbeat(session_factory=sessions)
    broker = StubBroker(middleware=[heartbeat])
    before = dt.datetime.now(dt.UTC)
    heartbeat.before_process_message(broker, proxy("m-1", tenant_id=7))
    heartbeat.before_process_message(broker, proxy("m-2", tenant_id=7))

    # When it beats
    assert heartbeat.beat_once() is True

    # Then its row lists both, with this thread and when they started
    [row] = rows(sessions)
    assert row.in_progress == 2 == heartbeat.in_progress
    assert [e["message_id"] for e in row.running] == ["m-1", "m-2"]
    first = row.running[0]
    assert (first["actor"], first["queue"], first["tenant_id"]) == ("sync_feed", "tenant.7", 7)
    assert first["thread"] == threading.current_thread().name
    assert first["thread_id"] == threading.get_ident()
    assert before <= dt.datetime.fromisoformat(first["started_at"]) <= dt.datetime.now(dt.UTC)

    # And once one finishes and the other is skipped, the next beat lists neither
    heartbeat.after_process_message(broker, proxy("m-1", tenant_id=7), result=None)
    heartbeat.after_skip_message(broker, proxy("m-2", tenant_id=7))
    assert heartbeat.beat_once() is True
    [row] = rows(sessions)
    assert (row.in_progress, row.running) == (0, [])
    broker.close()


@pytest.mark.parametrize("tenant_id", ["7", 0, -3, True, 7.0, None, 2**63])
def test_a_tenant_id_that_names_no_tenant_is_written_as_none(
    sessions: sessionmaker[Session], tenant_id: object
) -> None:
    heartbeat = Heartbeat(session_factory=sessions)
    broker = StubBroker(middleware=[heartbeat])

    heartbeat.before_process_message(broker, proxy("m-odd", tenant_id=tenant_id))
    heartbeat.beat_once()

    [entry] = rows(sessions)[0].running
    assert entry["tenant_id"] is None
    broker.close()


def test_each_beat_is_one_statement_however_many_jobs_run(
    sessions: sessionmaker[Session],
) -> None:
    heartbeat = Heartbeat(session_factory=sessions)
    broker = StubBroker(middleware=[heartbeat])
    statements: list[str] = []
    engine = sessions.kw["bind"]

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for n in range(20):
            heartbeat.before_process_message(broker, proxy(f"m-{n}", tenant_id=1))
        assert statements == []  # nothing per job
        heartbeat.beat_once()
        heartbeat.beat_once()
    finally:
        event.remove(engine, "before_cursor_execute", count)
        broker.close()

    assert len(statements) == 2
    assert all(s.lstrip().upper().startswith("INSERT INTO WORKERS") for s in statements)


def test_what_runs_is_read_back_from_live_rows_only(sessions: sessionmaker[Session]) -> None:
    heartbeat = Heartbeat(session_factory=sessions)
    broker = StubBroker(middleware=[heartbeat])
    heartbeat.before_process_message(broker, proxy("m-live", tenant_id=7))
    heartbeat.beat_once()
    window = dt.timedelta(seconds=6)
    now = dt.datetime.now(dt.UTC)

    with sessions() as session:
        live = running_jobs(session, now=now, stale_after=window)
        later = running_jobs(session, now=now + dt.timedelta(seconds=60), stale_after=window)

    [job] = live
    assert (job["message_id"], job["worker_id"], job["pid"]) == (
        "m-live",
        heartbeat.worker_id,
        heartbeat.pid,
    )
    assert later == []  # its heartbeat went stale
    broker.close()
