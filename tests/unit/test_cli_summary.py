"""`taskyard summary` on a SQLite file and the in-process broker (no queues to read).

The queue depth itself is read from a real RabbitMQ in
tests/integration/test_queue_depth.py; here, the figures from PostgreSQL's side.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pika.exceptions
import pytest
from click.testing import CliRunner, Result

from cli import main
from cli.summary import read_queues
from db.migrate import upgrade_to_head
from db.models import DeadLetter, Job, Tenant
from db.session import make_engine, make_session_factory
from services.workers import SCHEDULER_TICK_ACTOR, beat
from settings import Settings
from transport import queue_depth
from transport.queue_depth import ApiUnreadable, QueueDepth


def _job(
    message_id: str, status: str, *, tenant_id: int | None, hours_ago: float, now: dt.datetime
) -> Job:
    sent = now - dt.timedelta(hours=hours_ago)
    return Job(
        message_id=message_id,
        tenant_id=tenant_id,
        actor="sync_feed" if tenant_id is not None else SCHEDULER_TICK_ACTOR,
        queue=f"tenant.{tenant_id}" if tenant_id is not None else "taskyard.system",
        args={},
        status=status,
        attempts=1,
        created_at=sent,
        finished_at=sent if status == "succeeded" else None,
    )


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'summary.db'}"
    upgrade_to_head(url)
    engine = make_engine(Settings(database_url=url))
    now = dt.datetime.now(dt.UTC)  # (at the test's start: the command reads the clock too)
    with make_session_factory(engine).begin() as session:
        session.add_all([Tenant(id=7, name="acme"), Tenant(id=8, name="globex")])
        session.flush()
        session.add_all(
            [
                _job("a1", "succeeded", tenant_id=7, hours_ago=0.1, now=now),
                _job("a2", "succeeded", tenant_id=7, hours_ago=0.2, now=now),
                _job("a3", "dead", tenant_id=7, hours_ago=0.3, now=now),
                _job("a4", "succeeded", tenant_id=7, hours_ago=5, now=now),  # out of the window
                _job("b1", "queued", tenant_id=8, hours_ago=0.1, now=now),
                _job("tick", "succeeded", tenant_id=None, hours_ago=0.05, now=now),
                DeadLetter(
                    message_id="a3",
                    tenant_id=7,
                    actor="sync_feed",
                    queue="tenant.7",
                    reason="max_retries",
                    attempts=1,
                    message={"message_id": "a3"},
                ),
            ]
        )
        beat(
            session,
            worker_id="h1:1:0",
            host="h1",
            pid=1,
            queues=["tenant.7", "tenant.8"],
            threads=4,
            in_progress=1,
            running=[
                {
                    "message_id": "r1",
                    "actor": "sync_feed",
                    "queue": "tenant.8",
                    "tenant_id": 8,
                    "thread": "Thread-1",
                    "thread_id": 1,
                    "started_at": now.isoformat(),
                }
            ],
            started_at=now - dt.timedelta(hours=1),
            now=now,
        )
    engine.dispose()
    return url


def _taskyard(database: str, *args: str) -> Result:
    env = {
        "DATABASE_URL": database,
        "BROKER_URL": "stub://",
        "TASKYARD_HEARTBEAT_SECONDS": "60",
        "TASKYARD_QUEUE_PREFIX": "",  # (the queue names written above)
    }
    return CliRunner().invoke(main, ["summary", *args], env=env)


def _json(database: str, *args: str) -> Any:
    result = _taskyard(database, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_counts_the_last_hour_by_status_without_system_jobs(database: str) -> None:
    summary = _json(database)
    assert summary["by_status"] == {"queued": 1, "succeeded": 2, "dead": 1}
    assert summary["dead_letters"] == 1
    assert (summary["workers"], summary["threads"], summary["busy"]) == (1, 4, 1)
    assert summary["scheduler_age_seconds"] == pytest.approx(180, abs=30)
    assert summary["queues"] is None and "stub://" in summary["queues_error"]


def test_system_and_since_widen_the_counts(database: str) -> None:
    assert _json(database, "--system")["by_status"]["succeeded"] == 3
    assert _json(database, "--since", "6h")["by_status"]["succeeded"] == 3


def test_one_tenant_has_its_own_figures(database: str) -> None:
    summary = _json(database, "--tenant", "8")
    assert summary["by_status"] == {"queued": 1}
    assert (summary["dead_letters"], summary["busy"], summary["workers"]) == (0, 1, 1)


def test_an_unknown_tenant_is_one_error_line(database: str) -> None:
    result = _taskyard(database, "--tenant", "99")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "99" in result.stderr
    assert "tenant list" in result.stderr


def test_for_a_person(database: str) -> None:
    result = _taskyard(database)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "jobs sent since" in out and "system jobs left out" in out
    assert "1 live, 4 threads, 1 busy" in out and "last tick 3m" in out
    assert "queues not read" in out


def _depths_or(error: Exception, *, always: bool = False) -> Any:
    """A queue_depths that raises `error` when the settings name the management API
    (`always`: whatever they name)."""

    def queue_depths(settings: Settings, tenant_ids: list[int]) -> dict[int, QueueDepth | None]:
        if always or settings.rabbitmq_api_url:
            raise error
        return {
            tenant_id: QueueDepth(ready=2, unacked=None, consumers=1) for tenant_id in tenant_ids
        }

    return queue_depths


def test_an_unreadable_management_api_still_shows_the_ready_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_depth, "queue_depths", _depths_or(ApiUnreadable("no answer")))
    settings = Settings(broker_url="amqp://127.0.0.1/%2F", rabbitmq_api_url="http://127.0.0.1:1")
    queues, error, warning = read_queues(settings, [7])
    assert error is None and queues is not None
    assert [(q["tenant_id"], q["ready"], q["unacked"]) for q in queues] == [(7, 2, None)]
    assert warning == "no answer; unacked not shown"


def test_an_unreachable_broker_is_the_reason_queues_are_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = pika.exceptions.AMQPConnectionError("refused")
    monkeypatch.setattr(queue_depth, "queue_depths", _depths_or(refused, always=True))
    queues, error, _ = read_queues(Settings(broker_url="amqp://u:pw@127.0.0.1:1/%2F"), [7])
    assert queues is None and error is not None
    assert error.startswith("cannot reach the broker at amqp://u:***@127.0.0.1:1/%2F")
