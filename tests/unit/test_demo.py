"""`taskyard demo` as a user runs it: a subprocess with only Python, SQLite and the stub broker."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from demo import missed_slot_cron
from services.cron import parse_cron
from services.schedule_slots import CATCH_UP_GRACE, next_slot, plan_slots
from services.schedules import CATCH_UP_LATEST
from tests.support import REPO


def _run_demo(tmp_path: Path) -> dict[str, Any]:
    # No BROKER_URL or DATABASE_URL: whatever the caller's shell has, the demo uses its own.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    # A port of its own: a developer's worker may hold the default one.
    env["TASKYARD_METRICS_PORT"] = "0"
    env["BROKER_URL"] = "amqp://guest:guest@127.0.0.1:1/"
    env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/nothing"
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--json", "--dir", str(tmp_path / "demo")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_demo_runs_every_kind_of_outcome_on_sqlite_and_the_stub_broker(tmp_path: Path) -> None:
    result = _run_demo(tmp_path)

    assert result["finished"] is True
    records = result["records"]
    by_actor_status = {(r["actor"], r["status"]) for r in records}
    assert ("scheduler_tick", "succeeded") in by_actor_status
    direct = [r for r in records if r["actor"] == "ingest_resources" and r["schedule_id"] is None]
    assert sorted(r["status"] for r in direct) == ["dead", "succeeded"]
    dead = next(r for r in direct if r["status"] == "dead")
    assert "404" in dead["error"] and "missing.json" in dead["error"]
    assert dead["attempts"] == 1
    # The tick caught up on the schedule's missed slot and sent its job, which ran.
    scheduled = [r for r in records if r["schedule_id"] is not None]
    assert [r["status"] for r in scheduled] == ["succeeded"]
    assert scheduled[0]["slot_at"] is not None
    # The sample feed answers 503 once: whichever of its two ingests (the one sent
    # directly, the schedule's) asked first was retried, then succeeded.
    of_feed = [r for r in direct if r["status"] == "succeeded"] + scheduled
    assert sorted(r["attempts"] for r in of_feed) == [1, 2]
    ingest = result["ingest"]
    assert (ingest["fetched"], ingest["valid"], ingest["rejected"], ingest["processed"]) == (
        12,
        8,
        4,
        8,
    )
    assert ingest["status"] == "completed"
    # 8 items from each of the two feed ingests that succeeded.
    assert sum(1 for r in records if r["actor"] == "process_resource") == 16
    assert sum(1 for r in records if r["actor"] == "notify_webhook") == 3
    assert result["jobs"]["succeeded"] == len(records) - 1
    # Each finished ingest notified the tenant's webhook, signed with its key.
    assert sorted(h["event"] for h in result["webhooks"]) == [
        "ingest.completed",
        "ingest.completed",
        "ingest.failed",
    ]
    assert all(h["signature_valid"] for h in result["webhooks"])
    # The demo's own /metrics counted the same outcomes as the job records.
    assert result["metrics"] == {
        "succeeded": result["jobs"]["succeeded"],
        "dead": 1,
        "retried": 1,
    }
    assert (tmp_path / "demo" / "taskyard-demo.db").exists()


@pytest.mark.parametrize("second", [0, 31, 59])
@pytest.mark.parametrize("tick_delay", [dt.timedelta(0), dt.timedelta(seconds=40)])
def test_the_demos_schedule_catches_up_exactly_one_slot_at_any_time_of_day(
    second: int, tick_delay: dt.timedelta
) -> None:
    # An @hourly schedule made "two hours ago" caught up two slots when the demo
    # ran within the grace after a full hour (its latest slot was late, not missed).
    for minute in range(60):
        now = dt.datetime(2026, 12, 6, 7, minute, second, tzinfo=dt.UTC)
        cron = parse_cron(missed_slot_cron(now))
        first = next_slot(cron, "UTC", after=now - dt.timedelta(hours=2))
        assert first is not None
        plan = plan_slots(
            cron, "UTC", next_slot_at=first, now=now + tick_delay, catch_up=CATCH_UP_LATEST
        )
        assert len(plan.run) == 1, (now, plan.run)
        assert now + tick_delay - plan.run[0] > CATCH_UP_GRACE
