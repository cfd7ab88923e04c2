"""`taskyard jobs list` reads with plain psycopg2, page for page what SQLAlchemy reads.

The quick read (cli/quick.py) and the console's read (`JobsOnSession`) run
the same statements (services/listing_sql.py); these tests walk every filter
through both, on a database of their own, and check that the command line
never imports SQLAlchemy when it can read quickly, and falls back when not.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from sqlalchemy import create_engine, insert, pool, text
from sqlalchemy.orm import Session

from cli.jobs import job_listing
from cli.quick import QuickReader, QuickUnavailable, read_quickly
from db.connect import libpq_url
from db.models import JOB_DEAD, JOB_QUEUED, JOB_RETRYING, JOB_SUCCEEDED, Job, Worker
from services.job_views import JOBS_LISTING
from services.jobs import JobsOnSession
from services.pagination import decode_cursor
from settings import load_settings
from tests.integration.cli_harness import assert_one_line_error, taskyard
from tests.support import private_database

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)
STALE_AFTER = dt.timedelta(seconds=30)
SYSTEM_QUEUE = "taskyard.system"
# A record that a live worker runs now (its heartbeat lists it), and one it runs with no
# record (sent around Taskyard, say).
RUNNING = str(uuid.uuid4())
RUNNING_UNRECORDED = str(uuid.uuid4())
# The filters walked, each through both readers, page by page.
FILTERS: list[dict[str, Any]] = [
    {},
    {"exclude_queue": SYSTEM_QUEUE},
    {"tenant_id": 1},
    {"tenant_id": 2, "status": JOB_SUCCEEDED},
    {"status": JOB_DEAD},
    {"status": JOB_QUEUED},
    {"status": JOB_RETRYING},
    {"actor": "sync"},
    {"tenant_id": 1, "actor": "walk"},
    {"since": NOW - dt.timedelta(minutes=90)},
    {"since": NOW - dt.timedelta(hours=5), "until": NOW - dt.timedelta(minutes=90)},
    {"error_contains": "100%"},
    {"error_contains": "A_B"},
    {"error_contains": "x/y"},
    {"error_contains": "TIMEOUT"},
    {"status": "running"},
    {"status": "running", "tenant_id": 1},
    {"status": "running", "actor": "nobody"},
]
# Filters under which the test data has no record: every other walk must find some.
EMPTY = [{"status": "running", "actor": "nobody"}]


def _records() -> list[dict[str, Any]]:
    """Two tenants' records over five hours: ties in time, errors with LIKE's characters."""
    rows: list[dict[str, Any]] = []
    errors = ["disk 100% full", "A_B failed", "path x/y", "Timeout talking to the API", None]
    for n in range(40):
        tenant = 1 + n % 2
        rows.append({
            "message_id": str(uuid.uuid4()), "tenant_id": tenant,
            "actor": ("walk", "sync", "ingest")[n % 3], "queue": f"tenant.{tenant}",
            "args": {"tenant_id": tenant, "n": n},
            "status": (JOB_QUEUED, JOB_SUCCEEDED, JOB_DEAD, JOB_RETRYING)[n % 4],
            "error": errors[n % 5], "attempts": n % 3,
            # Every fourth shares its time with the one before: the tie-break is tested.
            "created_at": NOW - dt.timedelta(minutes=7 * (n - n % 2)),
            "started_at": NOW - dt.timedelta(minutes=7 * n, seconds=3),
            "finished_at": NOW - dt.timedelta(minutes=7 * n) if n % 4 else None,
            "result": {"n": n} if n % 4 == 1 else None,
        })  # fmt: skip
    rows.append({
        "message_id": str(uuid.uuid4()), "tenant_id": None, "actor": "scheduler_tick",
        "queue": SYSTEM_QUEUE, "args": {}, "status": JOB_SUCCEEDED, "created_at": NOW,
    })  # fmt: skip
    rows.append({
        "message_id": RUNNING, "tenant_id": 1, "actor": "walk", "queue": "tenant.1",
        "args": {"tenant_id": 1}, "status": JOB_QUEUED, "created_at": NOW,
    })  # fmt: skip
    return rows


def _running_entry(message_id: str, actor: str, tenant_id: int | None) -> dict[str, Any]:
    return {
        "message_id": message_id, "actor": actor, "queue": f"tenant.{tenant_id}",
        "tenant_id": tenant_id, "thread": "Worker-1", "thread_id": 1,
        "started_at": (NOW - dt.timedelta(seconds=12)).isoformat(),
    }  # fmt: skip


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of this module's own, with the records above and one live worker."""
    with private_database() as url:
        engine = create_engine(url, poolclass=pool.NullPool)
        with Session(engine) as session, session.begin():
            session.execute(insert(Job), _records())
            session.execute(
                insert(Worker),
                [{
                    "worker_id": "host:1:1", "host": "host", "pid": 1, "queues": ["tenant.1"],
                    "threads": 2, "in_progress": 2, "started_at": NOW,
                    "heartbeat_at": dt.datetime.now(dt.UTC),
                    "running": [_running_entry(RUNNING, "walk", 1),
                                _running_entry(RUNNING_UNRECORDED, "sync", 2)],
                }],
            )  # fmt: skip
        engine.dispose()
        yield url


def _walk(read: Any, filters: dict[str, Any], limit: int = 3) -> list[dict[str, Any]]:
    """Every page of a listing, following each page's last cursor."""
    pages: list[dict[str, Any]] = []
    after = None
    while True:
        found = read(limit=limit, after=after, **filters)
        pages += found
        if len(found) < limit or "cursor" not in found[-1]:
            return pages
        after = decode_cursor(JOBS_LISTING, found[-1]["cursor"])


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_the_quick_read_walks_every_page_as_sqlalchemy_does(
    database: str, filters: dict[str, Any]
) -> None:
    # Given the same database read through SQLAlchemy and through plain psycopg2
    engine = create_engine(database, poolclass=pool.NullPool)
    connection = psycopg2.connect(libpq_url(database))
    try:
        with Session(engine) as session:
            on_session = JobsOnSession(session)
            through_sqlalchemy = _walk(
                lambda **kw: job_listing(on_session, stale_after=STALE_AFTER, **kw), filters
            )
        quick = QuickReader(connection)
        # When both walk every page of the listing with these filters
        quickly = _walk(lambda **kw: job_listing(quick, stale_after=STALE_AFTER, **kw), filters)
    finally:
        connection.close()
        engine.dispose()

    # Then they find the same records, in the same order, with the same fields (times,
    # JSON, cursors, running marks): running_seconds aside, which is read at each call
    def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k != "running_seconds"} for row in rows]

    assert comparable(quickly) == comparable(through_sqlalchemy)
    assert bool(quickly) == (filters not in EMPTY), quickly


def test_jobs_list_reads_without_sqlalchemy_and_marks_what_runs(database: str) -> None:
    # Given the command line pointed at the database, in a process of its own
    program = (
        "import sys\n"
        "from cli import main\n"
        "try:\n"
        "    main(['jobs', 'list', '--tenant', '1', '--json'], standalone_mode=False)\n"
        "finally:\n"
        "    print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'),"
        " file=sys.stderr)\n"
    )
    # When it lists a tenant's jobs
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "DATABASE_URL": database},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it printed them, the one a live worker runs marked running, without SQLAlchemy
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert len(listed) == 21 and all(job["tenant_id"] == 1 for job in listed)
    assert [job["status"] for job in listed if job["message_id"] == RUNNING] == ["running"]
    assert "loaded: []" in result.stderr


def test_a_schema_behind_is_read_the_usual_way_and_explained() -> None:
    # Given a database whose schema is one revision behind this code's
    with private_database() as url:
        engine = create_engine(url, poolclass=pool.NullPool)
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0013'"))
        engine.dispose()
        # Then the quick read declines it
        with pytest.raises(QuickUnavailable, match="not at revision"):
            read_quickly(load_settings({"DATABASE_URL": url}), lambda reader: reader.page())
        # And `jobs list`, read the usual way, says what to do
        message = assert_one_line_error(taskyard("jobs", "list", DATABASE_URL=url), 1)
    assert "0013" in message and "taskyard migrate" in message


def test_a_database_that_is_not_postgresql_is_never_read_quickly(tmp_path: Any) -> None:
    settings = load_settings({"DATABASE_URL": f"sqlite:///{tmp_path}/demo.db"})
    with pytest.raises(QuickUnavailable, match="not PostgreSQL"):
        read_quickly(settings, lambda reader: reader.page())
