"""`taskyard` run as an operator runs it: a subprocess, this run's database, exit codes, output."""

from __future__ import annotations

import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, make_url, pool, text
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import ensure_database, head_revision
from db.models import ITEM_FAILED, ITEM_PROCESSED, ITEM_REJECTED, Ingest, IngestItem, Job
from tests.integration.cli_harness import (
    COMMAND,
    REPO,
    as_json,
    assert_one_line_error,
    taskyard,
    unique,
)
from tests.support import private_database

pytestmark = pytest.mark.integration

UNREACHABLE_URL = "postgresql+psycopg2://postgres:s3cret-pw@127.0.0.1:1/taskyard"


@pytest.fixture(autouse=True)
def _database(migrated_database: str) -> None:
    """Every test here runs the CLI on this run's migrated database."""


@pytest.fixture
def scratch_url() -> Iterator[str]:
    """The URL of a uniquely named database that does not exist yet; dropped afterwards."""
    with private_database(migrated=False) as url:
        yield url


def test_tenant_create_prints_only_the_new_id() -> None:
    name = unique()

    result = taskyard("tenant", "create", name)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().isdigit()
    assert result.stdout == f"{result.stdout.strip()}\n"
    shown = as_json(taskyard("tenant", "show", result.stdout.strip(), "--json"))
    assert shown["name"] == name


def test_tenant_create_json_is_the_tenant() -> None:
    name = unique()

    created = as_json(taskyard("tenant", "create", name, "--json"))

    assert set(created) == {"id", "name", "status", "created_at"}
    assert isinstance(created["id"], int)
    assert (created["name"], created["status"]) == (name, "active")


def test_tenant_list_contains_a_new_tenant(make_tenant: Callable[[str], int]) -> None:
    tenant_id = make_tenant("cli-list")

    listed = as_json(taskyard("tenant", "list", "--json"))
    active = as_json(taskyard("tenant", "list", "--status", "active", "--json"))
    disabled = as_json(taskyard("tenant", "list", "--status", "disabled", "--json"))
    table = taskyard("tenant", "list")

    assert tenant_id in [t["id"] for t in listed]
    assert tenant_id in [t["id"] for t in active]
    assert tenant_id not in [t["id"] for t in disabled]
    assert table.returncode == 0
    assert "cli-list" in table.stdout


def test_disable_then_enable_round_trips(make_tenant: Callable[[str], int]) -> None:
    tenant_id = str(make_tenant("cli-status"))

    disabled = as_json(taskyard("tenant", "disable", tenant_id, "--json"))
    shown_disabled = as_json(taskyard("tenant", "show", tenant_id, "--json"))
    listed_disabled = as_json(taskyard("tenant", "list", "--status", "disabled", "--json"))
    enabled = taskyard("tenant", "enable", tenant_id)
    shown_enabled = as_json(taskyard("tenant", "show", tenant_id, "--json"))

    assert disabled["status"] == shown_disabled["status"] == "disabled"
    assert int(tenant_id) in [t["id"] for t in listed_disabled]
    assert enabled.returncode == 0 and "active" in enabled.stdout
    assert shown_enabled["status"] == "active"


def test_show_of_an_unknown_tenant_fails_with_one_line_naming_it() -> None:
    line = assert_one_line_error(taskyard("tenant", "show", "987654321"), 1)

    assert "987654321" in line


@pytest.mark.parametrize(
    "args",
    [
        ("tenant", "show", "abc"),
        ("tenant", "show", "0"),
        ("tenant", "list", "--status", "paused"),
        ("jobs", "list", "--status", "nope"),
        ("jobs", "list", "--limit", "0"),
        ("no-such-command",),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = taskyard(*args)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_tenant_create_with_an_invalid_name_fails(name: str) -> None:
    line = assert_one_line_error(taskyard("tenant", "create", name), 1)

    assert "tenant name" in line


def test_tenant_create_with_a_taken_name_fails() -> None:
    name = unique()
    assert taskyard("tenant", "create", name).returncode == 0

    line = assert_one_line_error(taskyard("tenant", "create", name), 1)

    assert "already exists" in line


def test_ingest_show_of_an_unknown_ingest_fails() -> None:
    line = assert_one_line_error(taskyard("ingest", "show", "987654321"), 1)

    assert "ingest 987654321" in line


def test_ingest_show_reports_counts_and_problem_items(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    # Given an ingest of three items: one processed, one rejected, one failed
    tenant_id = make_tenant("cli-ingest")
    with sessions.begin() as session:
        ingest = Ingest(
            tenant_id=tenant_id,
            source_url="https://feeds.example/items.json",
            status="completed",
            fetched=3,
            valid=2,
            rejected=1,
            processed=1,
            failed=1,
        )
        session.add(ingest)
        session.flush()
        for position, status, error in [
            (0, ITEM_PROCESSED, None),
            (1, ITEM_REJECTED, "name: missing data"),
            (2, ITEM_FAILED, "database said no"),
        ]:
            session.add(
                IngestItem(
                    tenant_id=tenant_id,
                    ingest_id=ingest.id,
                    position=position,
                    resource_id=f"r{position}",
                    status=status,
                    error=error,
                )
            )
        ingest_id = str(ingest.id)

    # When it is shown, as JSON, as a table, and for another tenant
    summary = as_json(taskyard("ingest", "show", ingest_id, "--json"))
    table = taskyard("ingest", "show", ingest_id, "--tenant", str(tenant_id))
    other = taskyard("ingest", "show", ingest_id, "--tenant", str(make_tenant("cli-other")))

    # Then the counts and the problem items are there, and another tenant sees nothing
    assert (summary["fetched"], summary["rejected"], summary["failed"]) == (3, 1, 1)
    assert summary["items_rejected"] == [
        {"position": 1, "resource_id": "r1", "error": "name: missing data"}
    ]
    assert [item["resource_id"] for item in summary["items_failed"]] == ["r2"]
    assert table.returncode == 0, table.stderr
    assert "name: missing data" in table.stdout and "database said no" in table.stdout
    assert "for tenant" in assert_one_line_error(other, 1)


def test_jobs_show_of_an_unknown_message_fails() -> None:
    line = assert_one_line_error(taskyard("jobs", "show", "no-such-message"), 1)

    assert "no-such-message" in line


def test_jobs_show_and_list_read_the_job_record(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session]
) -> None:
    tenant_id = make_tenant("cli-jobs")
    message_id = str(uuid.uuid4())
    with sessions.begin() as session:
        session.add(
            Job(
                message_id=message_id,
                tenant_id=tenant_id,
                actor="ingest_resources",
                queue="tenant.x",
                args={"tenant_id": tenant_id},
                status="dead",
                attempts=3,
                error="FetchRefused: 404",
            )
        )

    shown = as_json(taskyard("jobs", "show", message_id, "--json"))
    listed = as_json(taskyard("jobs", "list", "--tenant", str(tenant_id), "--json"))
    dead = as_json(taskyard("jobs", "list", "--status", "dead", "--actor", "nope", "--json"))
    table = taskyard("jobs", "list", "--tenant", str(tenant_id))

    assert (shown["status"], shown["attempts"], shown["error"]) == ("dead", 3, "FetchRefused: 404")
    assert [job["message_id"] for job in listed] == [message_id]
    assert dead == []
    assert table.returncode == 0 and message_id in table.stdout


def test_an_unreachable_database_exits_3_without_the_password() -> None:
    for args in (("tenant", "list"), ("migrate",)):
        line = assert_one_line_error(taskyard(*args, DATABASE_URL=UNREACHABLE_URL), 3)

        assert "cannot reach the database" in line
        assert "127.0.0.1:1" in line
        assert "s3cret-pw" not in line


def test_a_database_that_does_not_exist_says_to_migrate(scratch_url: str) -> None:
    line = assert_one_line_error(taskyard("tenant", "list", DATABASE_URL=scratch_url), 1)

    assert "taskyard migrate" in line


def test_an_empty_database_says_to_migrate(scratch_url: str) -> None:
    ensure_database(scratch_url)

    line = assert_one_line_error(taskyard("tenant", "show", "1", DATABASE_URL=scratch_url), 1)

    assert "taskyard migrate" in line


def test_a_missing_table_at_the_head_revision_says_to_migrate(scratch_url: str) -> None:
    # Given a database that claims the head revision but has no tables (a botched restore)
    ensure_database(scratch_url)
    engine = create_engine(scratch_url, poolclass=pool.NullPool)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num varchar(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": head_revision()})
    engine.dispose()

    line = assert_one_line_error(taskyard("tenant", "list", DATABASE_URL=scratch_url), 1)

    assert 'relation "tenants" does not exist' in line
    assert "taskyard migrate" in line


def test_migrate_creates_a_fresh_database_and_reports_its_revision(scratch_url: str) -> None:
    first = as_json(taskyard("migrate", "--json", DATABASE_URL=scratch_url))
    again = taskyard("migrate", DATABASE_URL=scratch_url)
    tenants = as_json(taskyard("tenant", "list", "--json", DATABASE_URL=scratch_url))

    assert first["revision"] == head_revision()
    assert first["database"] == make_url(scratch_url).database
    assert first["created"] is True
    assert again.returncode == 0, again.stderr
    assert f"is at revision {head_revision()}" in again.stdout
    assert tenants == []


def test_an_invalid_setting_is_one_line_naming_the_variable() -> None:
    line = assert_one_line_error(taskyard("tenant", "list", DATABASE_URL="mysql://db/x"), 1)

    assert "DATABASE_URL" in line


def test_debug_shows_the_traceback_then_the_error() -> None:
    result = taskyard("--debug", "tenant", "show", "987654321")

    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "UnknownTenant" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: tenant 987654321")


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_a_reader_that_stops_reading_leaves_the_command_successful(
    make_tenant: Callable[[str], int], json_flag: list[str]
) -> None:
    # Given a listing with something to print
    make_tenant("piped")
    # When its reader exits without reading (as `| grep -q` does once it has its line)
    command = " ".join(shlex.quote(part) for part in [*COMMAND, "tenant", "list", *json_flag])
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | true"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    # Then the command succeeded, with nothing on stderr (as ripgrep and fd, not exit 1)
    assert (result.returncode, result.stderr) == (0, "")
