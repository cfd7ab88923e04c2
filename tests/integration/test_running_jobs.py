"""What runs comes from the workers' heartbeat, on the real PostgreSQL and the real command line.

The record of a job is not written when it starts: `jobs list --status running`,
`jobs show` and `workers` read the `running` list of the live workers' rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dramatiq import Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from actors.base import taskyard_actor
from brokers import build_broker
from db.models import Job
from db.models import Worker as WorkerRow
from middleware.db_session import find_middleware
from middleware.heartbeat import Heartbeat
from services.workers import beat, remove_worker, running_job, running_jobs
from settings import Settings
from tests.integration.cli_harness import as_json, taskyard
from tests.support import wait_for

pytestmark = pytest.mark.integration


def shown_seconds(text: str) -> int:
    """The first duration the CLI printed as `<m>m<s>s`, in seconds."""
    found = re.search(r"\b(\d+)m(\d+)s\b", text)
    assert found, text
    return int(found.group(1)) * 60 + int(found.group(2))


WINDOW = dt.timedelta(seconds=6)
# The command line's window for the rows these tests write: 3 beats of 30 s, so that a
# slow run's later commands still find them live (a real worker beats every 2 s).
SLOW_BEATS = {"TASKYARD_HEARTBEAT_SECONDS": "30"}


@pytest.fixture
def worker_ids(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    """Worker ids a test writes rows for; their rows are deleted afterwards."""
    ids: list[str] = []
    yield ids
    with sessions.begin() as session:
        for worker_id in ids:
            remove_worker(session, worker_id)


def _entry(
    message_id: str, tenant_id: int | None, *, seconds_ago: float = 30.0, thread: str = "Thread-3"
) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return {
        "message_id": message_id,
        "actor": "sync_feed",
        "queue": f"tenant.{tenant_id}",
        "tenant_id": tenant_id,
        "thread": thread,
        "thread_id": 7,
        "started_at": started.isoformat(),
    }


def _beat(
    sessions: sessionmaker[Session],
    worker_id: str,
    running: list[dict[str, Any]],
    *,
    age: float = 0.0,
    host: str = "it-host",
) -> None:
    now = dt.datetime.now(dt.UTC)
    with sessions.begin() as session:
        beat(
            session,
            worker_id=worker_id,
            host=host,
            pid=31337,
            queues=["q"],
            threads=4,
            in_progress=len(running),
            running=running,
            started_at=now - dt.timedelta(minutes=5),
            now=now - dt.timedelta(seconds=age),
        )


def _record(sessions: sessionmaker[Session], message_id: str, tenant_id: int, status: str) -> None:
    with sessions.begin() as session:
        session.add(
            Job(
                message_id=message_id,
                tenant_id=tenant_id,
                actor="sync_feed",
                queue=f"tenant.{tenant_id}",
                args={"tenant_id": tenant_id},
                status=status,
                attempts=1 if status == "retrying" else 0,
            )
        )


def cli(*args: str) -> Any:
    """The JSON a `taskyard ... --json` printed, seeing the rows written here as live."""
    return as_json(taskyard(*args, "--json", **SLOW_BEATS))


def _ids(jobs: list[dict[str, Any]]) -> list[str]:
    return [job["message_id"] for job in jobs]


def test_a_heartbeat_with_a_message_in_flight_shows_it_running_then_not(
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
    worker_ids: list[str],
) -> None:
    # Given a heartbeat on PostgreSQL and a message of a tenant's, queued, in flight
    tenant_id = make_tenant("running-beat")
    message_id = str(uuid.uuid4())
    _record(sessions, message_id, tenant_id, "queued")
    heartbeat = Heartbeat(session_factory=sessions)
    heartbeat.worker_id = f"it-beat-{uuid.uuid4().hex[:8]}"
    worker_ids.append(heartbeat.worker_id)
    broker = StubBroker(middleware=[heartbeat])
    message = MessageProxy(
        Message(f"tenant.{tenant_id}", "sync_feed", (), {"tenant_id": tenant_id}, {},
                message_id=message_id)
    )  # fmt: skip
    heartbeat.before_process_message(broker, message)

    # When it beats
    assert heartbeat.beat_once() is True

    # Then its row holds the entry as JSONB
    with sessions() as session:
        stored = session.scalar(
            text("SELECT running FROM workers WHERE worker_id = :id"), {"id": heartbeat.worker_id}
        )
        kind = session.scalar(
            text("SELECT jsonb_typeof(running) FROM workers WHERE worker_id = :id"),
            {"id": heartbeat.worker_id},
        )
    assert kind == "array"
    assert [(e["message_id"], e["tenant_id"], e["thread"]) for e in stored] == [
        (message_id, tenant_id, threading.current_thread().name)
    ]

    # And the command line shows it running, on this worker and thread
    listed = cli("jobs", "list", "--status", "running", "--tenant", str(tenant_id))
    shown = cli("jobs", "show", message_id)
    workers = cli("workers")
    assert _ids(listed) == [message_id]
    assert (shown["status"], shown["record_status"]) == ("running", "queued")
    assert (shown["worker_id"], shown["pid"]) == (heartbeat.worker_id, heartbeat.pid)
    assert shown["thread"] == threading.current_thread().name
    [mine] = [w for w in workers if w["worker_id"] == heartbeat.worker_id]
    assert _ids(mine["running"]) == [message_id]

    # When the message finishes and the next beat is written
    heartbeat.after_process_message(broker, message, result=None)
    assert heartbeat.beat_once() is True

    # Then nothing runs, and the record speaks for itself again
    listed = cli("jobs", "list", "--status", "running", "--tenant", str(tenant_id))
    shown = cli("jobs", "show", message_id)
    assert listed == []
    assert shown["status"] == "queued" and "worker_id" not in shown
    with sessions() as session:
        row = session.get(WorkerRow, heartbeat.worker_id)
        assert row is not None and row.running == [] and row.in_progress == 0
    broker.close()


def test_running_jobs_read_live_rows_and_skip_malformed_json(
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
    worker_ids: list[str],
) -> None:
    # Given a live row with good and malformed entries, a live row whose column is
    # not a list at all, and a stale row
    tenant_id = make_tenant("running-malformed")
    live, odd, stale = (f"it-{name}-{uuid.uuid4().hex[:8]}" for name in ("live", "odd", "stale"))
    worker_ids.extend([live, odd, stale])
    _beat(sessions, live, [])
    _beat(sessions, odd, [])
    _beat(sessions, stale, [_entry("stale-job", tenant_id)], age=3600)
    good = _entry(f"good-{uuid.uuid4()}", tenant_id)
    malformed = [
        "text",
        17,
        None,
        [1, 2],
        {"message_id": "no-start", "actor": "a"},
        _entry("bad-start", tenant_id) | {"started_at": "soon"},
        _entry("", tenant_id),
        _entry("no-actor", tenant_id) | {"actor": {"nested": True}},
        good,
    ]
    with sessions.begin() as session:
        session.execute(
            text("UPDATE workers SET running = CAST(:running AS jsonb) WHERE worker_id = :id"),
            {"running": json.dumps(malformed), "id": live},
        )
        session.execute(
            text("""UPDATE workers SET running = '{"not": "a list"}' WHERE worker_id = :id"""),
            {"id": odd},
        )

    # When what runs is read
    now = dt.datetime.now(dt.UTC)
    with sessions() as session:
        found = running_jobs(session, now=now, stale_after=WINDOW, tenant_id=tenant_id)
        one = running_job(session, good["message_id"], now=now, stale_after=WINDOW)
        gone = running_job(session, "stale-job", now=now, stale_after=WINDOW)

    # Then only the good entry of the live row is there
    assert _ids(found) == [good["message_id"]]
    assert one is not None and one["worker_id"] == live
    assert gone is None
    # And the command line reads the same, without crashing on the rest
    workers = cli("workers")
    assert {
        w["worker_id"]: _ids(w["running"]) for w in workers if w["worker_id"] in (live, odd)
    } == {
        live: [good["message_id"]],
        odd: [],
    }


def test_the_command_line_shows_running_jobs_from_beats_written_directly(
    sessions: sessionmaker[Session],
    make_tenant: Callable[[str], int],
    worker_ids: list[str],
) -> None:
    # Given jobs of two tenants that live workers run (one retrying, one never recorded)
    mine, other = make_tenant("running-cli"), make_tenant("running-cli-other")
    retrying, unrecorded, theirs = (str(uuid.uuid4()) for _ in range(3))
    _record(sessions, retrying, mine, "retrying")
    w1, w2 = f"it-w1-{uuid.uuid4().hex[:8]}", f"it-w2-{uuid.uuid4().hex[:8]}"
    worker_ids.extend([w1, w2])
    _beat(
        sessions,
        w1,
        [_entry(retrying, mine, seconds_ago=200, thread="Thread-8"), _entry(theirs, other)],
    )
    _beat(sessions, w2, [_entry(unrecorded, mine, seconds_ago=10)], host="it-host-2")

    # When the operator asks what runs for one tenant, and about one job
    listed = cli("jobs", "list", "--status", "running", "--tenant", str(mine))
    table = taskyard("jobs", "list", "--status", "running", "--tenant", str(mine), **SLOW_BEATS)
    shown = cli("jobs", "show", retrying)
    every = cli("jobs", "list", "--tenant", str(mine))
    queued = cli("jobs", "list", "--tenant", str(mine), "--status", "retrying")
    workers = taskyard("workers", **SLOW_BEATS)

    # Then the tenant's running jobs are listed, the longest running first
    assert _ids(listed) == [retrying, unrecorded]
    assert (listed[0]["record_status"], listed[0]["attempts"]) == ("retrying", 1)
    assert (listed[1]["record_status"], listed[1]["args"]) == (None, None)
    assert table.returncode == 0, table.stderr
    assert "Thread-8" in table.stdout and 200 <= shown_seconds(table.stdout) < 600
    # And the job shows where and since when it runs, though its record says retrying
    assert (shown["status"], shown["host"], shown["thread"]) == ("running", "it-host", "Thread-8")
    assert shown["running_seconds"] >= 200
    # And the record lists show it running, not retrying
    assert [(j["message_id"], j["status"]) for j in every] == [(retrying, "running")]
    assert queued == []
    # And `workers` lists each thread's job with its tenant and for how long
    assert workers.returncode == 0, workers.stderr
    line = next(line for line in workers.stdout.splitlines() if retrying in line)
    for part in ("it-host", "31337", "Thread-8", "sync_feed", str(mine)):
        assert part in line
    # Running for about 3m20s: more when the machine is slow to run the commands
    assert 200 <= shown_seconds(line) < 600


@pytest.fixture
def pg_stub_worker(
    settings: Settings, migrated_database: str
) -> Iterator[tuple[StubBroker, Worker, Heartbeat]]:
    """The production middleware on PostgreSQL with an in-process broker, beating every 0.2 s."""
    fast = dataclasses.replace(settings, broker_url="stub://", heartbeat_seconds=0.2)
    broker = build_broker(fast)
    assert isinstance(broker, StubBroker)
    heartbeat = find_middleware(broker, Heartbeat)
    assert heartbeat is not None
    # Dramatiq's default poll (worker_timeout=1000): the in-process broker gives each of
    # the database's tenants a consumer thread, and a shorter poll on each of them kept
    # the machine's CPU busy.
    worker = Worker(broker, worker_timeout=1000, worker_threads=2)
    worker.start()
    yield broker, worker, heartbeat
    worker.stop()
    broker.close()
    # Queues declared after the stop (the tenant refresh) got consumer threads of their
    # own, which the stop did not know of: stop them too, or they poll for ever.
    for consumer in list(worker.consumers.values()):
        consumer.stop()


def test_a_job_a_real_worker_runs_shows_running_until_it_finishes(
    pg_stub_worker: tuple[StubBroker, Worker, Heartbeat],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    broker, _, heartbeat = pg_stub_worker
    started, release = threading.Event(), threading.Event()

    def held(tenant_id: int) -> None:
        started.set()
        release.wait(20)

    # Given a job that a worker thread holds
    tenant_id = make_tenant("running-real")
    actor = taskyard_actor(name="running_held", broker=broker)(held)
    broker.declare_queue(settings.tenant_queue(tenant_id))
    message = actor.send(tenant_id=tenant_id)
    try:
        assert started.wait(10)

        # When the operator asks, the next beats show it running on that worker
        def running() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = as_json(
                taskyard(
                    "jobs", "list", "--status", "running", "--tenant", str(tenant_id), "--json"
                )
            )
            return found

        [job] = wait_for(running, what="the job listed as running")
        assert (job["message_id"], job["actor"]) == (message.message_id, "running_held")
        assert job["worker_id"] == heartbeat.worker_id
        assert job["record_status"] in ("queued", "running")  # the record is not the source
        shown = as_json(taskyard("jobs", "show", message.message_id, "--json"))
        assert shown["status"] == "running" and shown["thread"] == job["thread"]
    finally:
        release.set()

    # Then, once it finished, the record has its final state and nothing runs
    def finished() -> bool:
        with sessions() as session:
            record = session.scalar(select(Job).where(Job.message_id == message.message_id))
            return record is not None and record.status == "succeeded"

    wait_for(finished, what="the job's success")
    assert as_json(taskyard("jobs", "show", message.message_id, "--json"))["status"] == "succeeded"
    wait_for(lambda: not running_now(sessions, tenant_id), what="the beat after the job")


def running_now(sessions: sessionmaker[Session], tenant_id: int) -> list[Any]:
    with sessions() as session:
        return list(
            running_jobs(
                session, now=dt.datetime.now(dt.UTC), stale_after=WINDOW, tenant_id=tenant_id
            )
        )
