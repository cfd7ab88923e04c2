"""`jobs list` leaves the system jobs (a scheduler tick a minute) out unless asked for them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import main
from db.migrate import upgrade_to_head
from db.models import Job
from db.session import make_engine, make_session_factory
from settings import Settings


def test_system_jobs_are_hidden_unless_asked_for(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade_to_head(url)
    sessions = make_session_factory(make_engine(Settings(database_url=url)))
    with sessions.begin() as session:
        session.add_all(
            [
                Job(
                    message_id="m-tick",
                    tenant_id=None,
                    actor="scheduler_tick",
                    queue="taskyard.system",
                    args={},
                    status="succeeded",
                    attempts=1,
                ),
                Job(
                    message_id="m-job",
                    tenant_id=None,
                    actor="ingest_resources",
                    queue="tenant.7",
                    args={},
                    status="succeeded",
                    attempts=1,
                ),
            ]
        )

    def listed(*args: str) -> list[str]:
        result = CliRunner().invoke(
            main,
            ["jobs", "list", "--json", *args],
            env={"DATABASE_URL": url, "TASKYARD_QUEUE_PREFIX": ""},
        )
        assert result.exit_code == 0, result.stderr
        return sorted(job["actor"] for job in json.loads(result.stdout))

    assert listed() == ["ingest_resources"]
    assert listed("--system") == ["ingest_resources", "scheduler_tick"]
    assert listed("--actor", "scheduler_tick") == ["scheduler_tick"]
