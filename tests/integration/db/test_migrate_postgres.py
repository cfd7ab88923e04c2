"""Migrations on a real PostgreSQL database of their own, created and dropped by the test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, make_url, pool, text
from sqlalchemy.engine import URL

import db.models  # noqa: F401  (importing it registers the tables on Base.metadata)
from db.base import Base
from db.migrate import (
    SchemaBehind,
    alembic_config,
    check_schema,
    current_revision,
    ensure_database,
    head_revision,
    upgrade_to_head,
)
from settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def server_url(settings: Settings) -> URL:
    """This run's PostgreSQL server, as a URL without a database."""
    return make_url(settings.database_url).set(database=None)


def _url(server_url: URL, name: str) -> str:
    return server_url.set(database=name).render_as_string(hide_password=False)


def _drop_database(server_url: URL, name: str) -> None:
    server = create_engine(
        server_url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
    )
    try:
        with server.connect() as connection:
            quoted = server.dialect.identifier_preparer.quote_identifier(name)
            connection.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        server.dispose()


def _unique_name(suffix: str = "") -> str:
    return f"taskyard_test_mig_{uuid.uuid4().hex[:8]}{suffix}"


@pytest.fixture
def scratch_url(server_url: URL) -> Iterator[str]:
    """The URL of a uniquely named database that does not exist yet; dropped afterwards."""
    name = _unique_name()
    try:
        yield _url(server_url, name)
    finally:
        _drop_database(server_url, name)


@pytest.fixture
def scratch_engine(scratch_url: str) -> Iterator[Engine]:
    """An engine on `scratch_url`, disposed (before the drop) after the test."""
    engine = create_engine(scratch_url, poolclass=pool.NullPool)
    yield engine
    engine.dispose()


def test_ensure_database_creates_a_missing_database_only_once(scratch_url: str) -> None:
    assert ensure_database(scratch_url) is True
    assert ensure_database(scratch_url) is False


def test_ensure_database_quotes_a_name_that_needs_it(server_url: URL) -> None:
    name = _unique_name('-Odd "name"')
    try:
        assert ensure_database(_url(server_url, name)) is True
        assert ensure_database(_url(server_url, name)) is False
    finally:
        _drop_database(server_url, name)


def test_upgrade_to_head_matches_the_models_exactly(
    scratch_url: str, scratch_engine: Engine
) -> None:
    head = upgrade_to_head(scratch_url)

    assert head == head_revision()
    assert current_revision(scratch_engine) == head
    with scratch_engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    check_schema(scratch_engine)


def test_upgrade_to_head_twice_changes_nothing(scratch_url: str, scratch_engine: Engine) -> None:
    upgrade_to_head(scratch_url)

    assert upgrade_to_head(scratch_url) == head_revision()
    check_schema(scratch_engine)


def test_check_schema_raises_after_a_downgrade_to_base(
    scratch_url: str, scratch_engine: Engine
) -> None:
    upgrade_to_head(scratch_url)
    config = alembic_config(scratch_url)
    with scratch_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")

    assert current_revision(scratch_engine) is None
    with pytest.raises(SchemaBehind, match="no Taskyard tables") as raised:
        check_schema(scratch_engine)
    assert "taskyard migrate" in str(raised.value)


def test_check_schema_raises_when_the_database_does_not_exist(scratch_engine: Engine) -> None:
    with pytest.raises(SchemaBehind, match="does not exist") as raised:
        check_schema(scratch_engine)

    assert "taskyard migrate" in str(raised.value)
    assert str(scratch_engine.url.database) in str(raised.value)


def test_0006_gives_workers_a_jsonb_running_list_that_defaults_to_empty(
    scratch_url: str, scratch_engine: Engine
) -> None:
    upgrade_to_head(scratch_url)
    with scratch_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO workers (worker_id, kind, host, pid, queues, threads,"
                " in_progress, started_at, heartbeat_at)"
                " VALUES ('w', 'worker', 'h', 1, '[]', 1, 0, now(), now())"
            )
        )
        row = connection.execute(
            text("SELECT running, jsonb_typeof(running) AS kind FROM workers")
        ).one()

    assert (row.running, row.kind) == ([], "array")
