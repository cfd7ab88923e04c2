"""Migrations on a SQLite file: upgrade to head, and the schema check that guards start-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, inspect, text

from db.migrate import (
    SchemaBehind,
    alembic_config,
    check_schema,
    current_revision,
    ensure_database,
    head_revision,
    upgrade_to_head,
)

TABLES = {
    "tenants",
    "resources",
    "ingests",
    "ingest_items",
    "jobs",
    "outbox",
    "dead_letters",
    "cancel_requests",
    "schedules",
    "schedule_runs",
    "workers",
    "locker_entries",
    "job_groups",
    "job_group_members",
    "job_group_completions",
    "integrations",
    "github_members",
    "github_repositories",
    "web_users",
}

# The newest revision: a new migration changes it here, once.
HEAD = "0016"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'taskyard.sqlite3'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """An engine on `sqlite_url`, disposed after the test."""
    engine = create_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_upgrade_to_head_creates_every_table_in_a_new_sqlite_file(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    head = upgrade_to_head(sqlite_url)

    assert head == head_revision() == HEAD
    assert current_revision(sqlite_engine) == head
    assert set(inspect(sqlite_engine).get_table_names()) == TABLES | {"alembic_version"}
    check_schema(sqlite_engine)


def test_upgrade_to_head_twice_changes_nothing(sqlite_url: str, sqlite_engine: Engine) -> None:
    upgrade_to_head(sqlite_url)

    assert upgrade_to_head(sqlite_url) == head_revision()
    check_schema(sqlite_engine)


def test_server_defaults_fill_timestamps_on_sqlite(sqlite_url: str, sqlite_engine: Engine) -> None:
    upgrade_to_head(sqlite_url)

    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO tenants (name, status) VALUES ('acme', 'active')"))
        row = connection.execute(text("SELECT id, created_at, updated_at FROM tenants")).one()

    assert row.id == 1
    assert row.created_at is not None
    assert row.updated_at is not None


def test_check_schema_raises_when_the_sqlite_database_is_empty(sqlite_engine: Engine) -> None:
    with pytest.raises(SchemaBehind, match="no Taskyard tables") as raised:
        check_schema(sqlite_engine)

    assert "taskyard migrate" in str(raised.value)
    assert f"'{HEAD}'" in str(raised.value)


def test_check_schema_raises_after_a_downgrade_to_base(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    upgrade_to_head(sqlite_url)
    command.downgrade(alembic_config(sqlite_url), "base")

    assert current_revision(sqlite_engine) is None
    assert not TABLES & set(inspect(sqlite_engine).get_table_names())
    with pytest.raises(SchemaBehind, match="taskyard migrate"):
        check_schema(sqlite_engine)


def test_check_schema_names_a_revision_this_code_does_not_know(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    upgrade_to_head(sqlite_url)
    with sqlite_engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))

    with pytest.raises(SchemaBehind, match="'9999_future', which this code does not know"):
        check_schema(sqlite_engine)


def test_migrations_run_on_a_connection_passed_in_the_config(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    config = alembic_config(sqlite_url)
    with sqlite_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    check_schema(sqlite_engine)


def test_ensure_database_does_nothing_for_sqlite(sqlite_url: str) -> None:
    assert ensure_database(sqlite_url) is False
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


def test_alembic_config_keeps_a_percent_escaped_password_intact() -> None:
    url = "postgresql+psycopg2://taskyard:p%40ss%25word@db.example:5432/taskyard"

    config = alembic_config(url)

    assert config.get_main_option("sqlalchemy.url") == url


def test_0006_gives_workers_a_running_list_that_defaults_to_empty_and_takes_it_back(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    upgrade_to_head(sqlite_url)
    with sqlite_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO workers (worker_id, kind, host, pid, queues, threads, in_progress,"
                " started_at, heartbeat_at) VALUES ('w', 'worker', 'h', 1, '[]', 1, 0,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        assert connection.scalar(text("SELECT running FROM workers")) == "[]"

    command.downgrade(alembic_config(sqlite_url), "0005_deliveries")

    columns = {c["name"] for c in inspect(sqlite_engine).get_columns("workers")}
    assert "running" not in columns and "in_progress" in columns
    assert upgrade_to_head(sqlite_url) == HEAD


def test_the_revision_files_give_alembics_head() -> None:
    from db.migrate import head_from_files, head_revision

    assert head_from_files() == head_revision()


def test_a_schema_at_the_head_is_checked_without_importing_alembic(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'head.db'}"
    upgrade_to_head(url)
    code = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from db.migrate import check_schema\n"
        f"check_schema(create_engine({url!r}))\n"
        "print('alembic' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
