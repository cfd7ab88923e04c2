"""`jobs list --status running`, `jobs show` and `workers` read what runs from the heartbeat.

On a SQLite file and click's runner: nothing else running.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import main
from cli.render import duration
from db.migrate import upgrade_to_head
from db.models import Job
from db.session import make_engine, make_session_factory
from services.workers import beat
from settings import Settings


class World:
    """A migrated SQLite file, its sessions, and the command line pointed at it."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        upgrade_to_head(self.url)
        self.engine = make_engine(Settings(database_url=self.url))
        self.sessions = make_session_factory(self.engine)

    def taskyard(self, *args: str) -> Result:
        # Beats of 30 s: the rows written here stay live (3 beats) however slow the run.
        env = {"DATABASE_URL": self.url, "TASKYARD_HEARTBEAT_SECONDS": "30"}
        return CliRunner().invoke(main, list(args), env=env)

    def json(self, *args: str) -> Any:
        result = self.taskyard(*args, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def record(
        self,
        message_id: str,
        status: str,
        *,
        tenant_id: int = 7,
        attempts: int = 0,
        updated_ago: float = 0.0,
    ) -> None:
        updated = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=updated_ago)
        with self.sessions.begin() as session:
            session.add(
                Job(
                    message_id=message_id,
                    tenant_id=tenant_id,
                    actor="sync_feed",
                    queue=f"tenant.{tenant_id}",
                    args={"tenant_id": tenant_id, "n": 1},
                    status=status,
                    attempts=attempts,
                    updated_at=updated,
                )
            )

    def beat(
        self, worker_id: str, running: list[dict[str, Any]], *, age: float = 0.5, host: str = "h1"
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        with self.sessions.begin() as session:
            beat(
                session,
                worker_id=worker_id,
                host=host,
                pid=4242,
                queues=["tenant.7"],
                threads=4,
                in_progress=len(running),
                running=running,
                started_at=now - dt.timedelta(hours=1),
                now=now - dt.timedelta(seconds=age),
            )


def entry(
    message_id: str,
    *,
    tenant_id: int | None = 7,
    actor: str = "sync_feed",
    seconds_ago: float = 90.0,
    thread: str = "Thread-3",
) -> dict[str, Any]:
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return {
        "message_id": message_id,
        "actor": actor,
        "queue": f"tenant.{tenant_id}",
        "tenant_id": tenant_id,
        "thread": thread,
        "thread_id": 1,
        "started_at": started.isoformat(),
    }


@pytest.fixture
def world(tmp_path: Path) -> Any:
    made = World(tmp_path / "taskyard.sqlite3")
    yield made
    made.engine.dispose()


def test_jobs_list_running_is_what_live_workers_run_with_their_records(world: World) -> None:
    # Given a queued and a retrying record that live workers run, one run without a
    # record, one whose record finished (the beat lags), and one on a silent worker
    world.record("queued-1", "queued")
    world.record("retry-1", "retrying", attempts=1)
    world.record("done-1", "succeeded", attempts=1)
    world.beat(
        "w1",
        [
            entry("queued-1", seconds_ago=5),
            entry("retry-1", seconds_ago=125, thread="Thread-4"),
            entry("done-1", seconds_ago=1, thread="Thread-5"),
        ],
    )
    world.beat("w2", [entry("no-record", tenant_id=8, actor="notify_webhook")], host="h2")
    world.beat("gone", [entry("ghost")], age=3600)

    listed = world.json("jobs", "list", "--status", "running")

    # Then the live ones are listed, the longest running first, with their records
    assert [j["message_id"] for j in listed] == ["retry-1", "no-record", "queued-1"]
    retry, bare, queued = listed
    assert retry["status"] == "running" and retry["record_status"] == "retrying"
    assert (retry["attempts"], retry["args"]) == (1, {"tenant_id": 7, "n": 1})
    assert (retry["host"], retry["pid"], retry["thread"]) == ("h1", 4242, "Thread-4")
    assert retry["running_seconds"] >= 125
    assert bare["record_status"] is None and bare["args"] is None and bare["tenant_id"] == 8
    assert queued["record_status"] == "queued"

    # And the filters apply
    assert [
        j["message_id"] for j in world.json("jobs", "list", "--status", "running", "--tenant", "8")
    ] == ["no-record"]
    by_actor = world.json("jobs", "list", "--status", "running", "--actor", "sync_feed")
    assert [j["message_id"] for j in by_actor] == ["retry-1", "queued-1"]
    recent = world.json("jobs", "list", "--status", "running", "--since", "1m")
    assert [j["message_id"] for j in recent] == ["queued-1"]
    limited = world.json("jobs", "list", "--status", "running", "--limit", "1")
    assert [j["message_id"] for j in limited] == ["retry-1"]

    # And the table names the worker, the thread and for how long
    table = world.taskyard("jobs", "list", "--status", "running")
    assert table.exit_code == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if "retry-1" in line)
    for shown in ("running", "h1", "4242", "Thread-4", "2m0"):
        assert shown in line


def test_jobs_show_says_running_where_and_since_when(world: World) -> None:
    world.record("queued-1", "queued")
    world.record("done-1", "dead", attempts=3)
    started = entry("queued-1", seconds_ago=42)
    world.beat("w1", [started, entry("done-1", thread="Thread-9"), entry("bare", thread="T")])

    shown = world.json("jobs", "show", "queued-1")
    finished = world.json("jobs", "show", "done-1")
    bare = world.json("jobs", "show", "bare")
    table = world.taskyard("jobs", "show", "queued-1")

    assert (shown["status"], shown["record_status"]) == ("running", "queued")
    assert (shown["worker_id"], shown["host"], shown["thread"]) == ("w1", "h1", "Thread-3")
    assert shown["started_at"] == started["started_at"]
    assert shown["running_seconds"] >= 42
    assert shown["args"] == {"tenant_id": 7, "n": 1}
    # A finished record wins over a beat that has not caught up yet
    assert finished["status"] == "dead" and "worker_id" not in finished
    assert (bare["status"], bare["record_status"], bare["actor"]) == ("running", None, "sync_feed")
    assert table.exit_code == 0 and "Thread-3" in table.stdout and "running" in table.stdout


def test_jobs_show_without_a_record_or_a_heartbeat_is_not_found(world: World) -> None:
    world.beat("gone", [entry("ghost")], age=3600)

    result = world.taskyard("jobs", "show", "ghost")

    assert result.exit_code == 1
    assert "no job record for message 'ghost'" in result.stderr


def test_a_record_a_live_worker_runs_reads_running_in_any_list(world: World) -> None:
    # (the running one updated last: the list reads past it to fill --limit)
    world.record("runs", "queued")
    world.record("waits", "queued", updated_ago=60)
    world.beat("w1", [entry("runs")])

    every = {j["message_id"]: j["status"] for j in world.json("jobs", "list")}
    queued = [j["message_id"] for j in world.json("jobs", "list", "--status", "queued")]
    one = world.json("jobs", "list", "--status", "queued", "--limit", "1")

    assert every == {"runs": "running", "waits": "queued"}
    assert queued == ["waits"]
    assert [j["message_id"] for j in one] == ["waits"]


def test_workers_shows_what_each_thread_runs(world: World) -> None:
    world.beat(
        "w1", [entry("m-1", thread="Thread-1"), entry("m-2", thread="Thread-2", seconds_ago=4000)]
    )
    world.beat("w2", [], host="h2")
    world.beat("gone", [entry("ghost")], age=3600, host="h3")

    listed = world.json("workers")
    every = world.json("workers", "--stale")
    table = world.taskyard("workers")
    stale_table = world.taskyard("workers", "--stale")

    running = {w["worker_id"]: [j["message_id"] for j in w["running"]] for w in listed}
    assert running == {"w1": ["m-2", "m-1"], "w2": []}
    [first] = [w for w in listed if w["worker_id"] == "w1"]
    assert first["running"][1]["thread"] == "Thread-1"
    assert first["running"][1]["tenant_id"] == 7
    # A silent worker's last report is kept in its row, but it runs nothing now
    [gone] = [w for w in every if w["worker_id"] == "gone"]
    assert [j["message_id"] for j in gone["running"]] == ["ghost"]
    assert table.exit_code == 0, table.stderr
    assert "running now (2)" in table.stdout
    line = next(line for line in table.stdout.splitlines() if "m-2" in line)
    for shown in ("h1", "4242", "Thread-2", "sync_feed", "7", "1h06m"):
        assert shown in line
    assert "ghost" not in stale_table.stdout


def test_workers_without_running_jobs_prints_only_the_workers(world: World) -> None:
    world.beat("w1", [])

    table = world.taskyard("workers")

    assert table.exit_code == 0
    assert "workers (1)" in table.stdout and "running now" not in table.stdout


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.04, "<0.1s"), (4.25, "4.2s"), (59.9, "59.9s"), (60, "1m00s"), (187, "3m07s"),
     (3600, "1h00m"), (7500, "2h05m"), (86400 * 3 + 3600 * 4 + 5, "3d04h")],
)  # fmt: skip
def test_durations_read_as_a_person_would_say_them(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown
