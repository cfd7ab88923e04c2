"""Times in the command line: UTC to the second in tables, full ISO 8601 in --json.

One helper (`cli.render.shown_time`) and one duration form (`cli.render.duration`),
on a SQLite file and click's runner.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import main
from cli.render import TIMES_NOTE, duration, shown_time
from db.migrate import upgrade_to_head
from db.models import Job, Tenant
from db.session import make_engine, make_session_factory
from settings import Settings

STARTED = dt.datetime(2026, 5, 4, 13, 2, 11, 654321, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2026-05-04T13:02:11.654321+00:00", "2026-05-04 13:02:11"),
        ("2026-05-04T15:02:11.5+02:00", "2026-05-04 13:02:11"),
        ("2026-05-04T13:02:11.999", "2026-05-04 13:02:11"),
        (STARTED, "2026-05-04 13:02:11"),
        ("not a time", None),
        (1714827731, None),
    ],
)
def test_a_time_is_shown_in_utc_to_the_second(value: object, shown: str | None) -> None:
    assert shown_time(value) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.04, "<0.1s"),
        (0.05, "0.1s"),
        (1.23, "1.2s"),
        (59.96, "1m00s"),
        (184, "3m04s"),
        (2 * 3600 + 5 * 60 + 59, "2h05m"),
        (3 * 86400 + 4 * 3600, "3d04h"),
        (-0.3, "<0.1s"),
    ],
)
def test_a_duration_is_shown_for_a_person(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'times.db'}"
    upgrade_to_head(url)
    engine = make_engine(Settings(database_url=url))
    with make_session_factory(engine).begin() as session:
        session.add(Tenant(id=7, name="acme"))
        session.add(
            Job(
                message_id="m-finished",
                tenant_id=7,
                actor="sync_feed",
                queue="tenant.7",
                args={"tenant_id": 7},
                status="succeeded",
                attempts=1,
                enqueued_at=STARTED - dt.timedelta(seconds=1),
                started_at=STARTED,
                finished_at=STARTED + dt.timedelta(seconds=184, microseconds=100),
            )
        )
    engine.dispose()
    return url


def _taskyard(database: str, *args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env={"DATABASE_URL": database})
    assert result.exit_code == 0, result.output
    return result


def test_jobs_show_gives_seconds_in_utc_and_the_duration(database: str) -> None:
    out = _taskyard(database, "jobs", "show", "m-finished").stdout
    assert "2026-05-04 13:02:11" in out and "2026-05-04 13:05:15" in out
    assert ".654321" not in out and "+00:00" not in out
    assert "3m04s" in out and TIMES_NOTE in out


def test_jobs_list_gives_seconds_in_utc_and_the_duration(database: str) -> None:
    out = _taskyard(database, "jobs", "list").stdout
    assert "2026-05-04 13:05:15" in out and "3m04s" in out and TIMES_NOTE in out
    assert ".000100" not in out


def test_json_keeps_full_iso_times_and_the_duration_in_seconds(database: str) -> None:
    [listed] = json.loads(_taskyard(database, "jobs", "list", "--json").stdout)
    shown = json.loads(_taskyard(database, "jobs", "show", "m-finished", "--json").stdout)
    for info in (listed, shown):
        # (SQLite gives the moment without its offset; PostgreSQL with it)
        assert info["started_at"].startswith("2026-05-04T13:02:11.654321")
        assert info["duration_seconds"] == pytest.approx(184.0001)
        assert "duration" not in info


def test_other_listings_show_times_the_same_way(database: str) -> None:
    out = _taskyard(database, "tenant", "list").stdout
    assert TIMES_NOTE in out
    created = [line for line in out.splitlines() if "acme" in line]
    assert created and "." not in created[0].split("acme")[1], created
