"""`jobs show` lists a job's attempts; `jobs list` and `dead-letters list` take --until.

On a SQLite file and click's runner: nothing else running.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from cli import main
from db.migrate import upgrade_to_head
from db.models import DeadLetter, Job
from db.session import make_engine, make_session_factory
from services.dead_letters import record_dead_letter
from services.jobs import record_failure
from services.records import JobRecord
from settings import Settings

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class World:
    """A migrated SQLite file and the command line pointed at it."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        upgrade_to_head(self.url)
        self.sessions = make_session_factory(make_engine(Settings(database_url=self.url)))

    def taskyard(self, *args: str) -> Result:
        return CliRunner().invoke(main, list(args), env={"DATABASE_URL": self.url})

    def json(self, *args: str) -> Any:
        result = self.taskyard(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


def test_jobs_show_lists_each_attempt_with_its_error_redacted(tmp_path: Path) -> None:
    world = World(tmp_path / "a.db")
    record = JobRecord("m-1", 7, "sync_feed", "tenant.7", {"tenant_id": 7}, None)
    with world.sessions.begin() as session:
        for attempt in (1, 2):
            record.attempts = attempt
            error = f"FetchFailed: #{attempt} at https://ops:s3cret@feed.example/x"
            record_failure(session, record, error=error, dead=attempt == 2)

    shown = world.json("jobs", "show", "m-1")

    assert [(a["attempt"], a["outcome"], a["error_class"]) for a in shown["attempt_history"]] == [
        (1, "retrying", "FetchFailed"),
        (2, "dead", "FetchFailed"),
    ]
    assert shown["attempts_not_kept"] == 0
    assert "s3cret" not in json.dumps(shown)
    text = world.taskyard("jobs", "show", "m-1")
    assert text.exit_code == 0 and "attempts (2)" in text.stdout and "#2 at" in text.stdout
    assert "s3cret" not in text.stdout


def test_until_ends_the_range_and_pages_stay_inside_it(tmp_path: Path) -> None:
    world = World(tmp_path / "b.db")
    with world.sessions.begin() as session:
        for day in range(4):
            session.add(
                Job(
                    message_id=f"job-{day}", tenant_id=7, actor="sync_feed", queue="tenant.7",
                    args={}, status="succeeded", attempts=1,
                    created_at=T0 + dt.timedelta(days=day),
                )
            )  # fmt: skip
            record_dead_letter(
                session, message_id=f"dl-{day}", queue="tenant.7", reason="r", error="E",
                traceback="tb", attempts=1, actor="sync_feed", tenant_id=7, message=None,
            )  # fmt: skip
            session.flush()
            letter = session.get(DeadLetter, f"dl-{day}")
            assert letter is not None
            letter.created_at = T0 + dt.timedelta(days=day)
    since, until = T0.isoformat(), (T0 + dt.timedelta(days=3)).isoformat()

    first = world.json("jobs", "list", "--since", since, "--until", until, "--limit", "2")
    rest = world.json(
        "jobs", "list", "--since", since, "--until", until, "--after", first[-1]["cursor"]
    )
    letters = world.json("dead-letters", "list", "--until", until)

    assert [j["message_id"] for j in first + rest] == ["job-2", "job-1", "job-0"]
    assert [d["message_id"] for d in letters] == ["dl-2", "dl-1", "dl-0"]
    backwards = world.taskyard("jobs", "list", "--since", until, "--until", since)
    assert backwards.exit_code != 0 and "--until" in backwards.output
    assert "Traceback" not in backwards.output
    bad = world.taskyard("dead-letters", "list", "--until", "soon")
    assert bad.exit_code == 2 and "'soon'" in bad.output
