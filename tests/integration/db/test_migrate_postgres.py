"""Migrations on a real PostgreSQL database of their own, created and dropped by the test."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, make_url, pool, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

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
from db.models import DeadLetter
from services.dead_letters import DeadLetterFilter, _requeueable, count_requeueable
from services.partitions import include_name
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
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                # The jobs table's partitions are made at run time, not by migrations.
                "include_name": include_name,
            },
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


# (old result, what 0008 makes of it: result, result_dropped)
_OLD_RESULTS = {
    "wrapped": ({"value": 7}, 7, None),
    "dict": ({"changed": False}, {"changed": False}, None),
    "dict with value and more": ({"value": 1, "x": 2}, {"value": 1, "x": 2}, None),
    "unserializable": ({"unserializable": "set"}, None, "the result, of type set, is not JSON"),
    "truncated": (
        {"truncated": True, "bytes": 9000},
        None,
        "the result, 9000 bytes of JSON, is over the limit of 8192 bytes: return ids, not data",
    ),
    "truncated-looking dict": (
        {"truncated": False, "bytes": 1},
        {"truncated": False, "bytes": 1},
        None,
    ),
    "none": (None, None, None),
}


def test_0008_keeps_results_as_returned_and_says_why_one_was_not_kept(
    scratch_url: str, scratch_engine: Engine
) -> None:
    import json

    ensure_database(scratch_url)
    config = alembic_config(scratch_url)
    with scratch_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006_running")
        for name, (old, _, _) in _OLD_RESULTS.items():
            connection.execute(
                text(
                    "INSERT INTO jobs (message_id, actor, queue, args, status, attempts, result)"
                    " VALUES (:id, 'a', 'q', '{}', 'succeeded', 1, CAST(:result AS jsonb))"
                ),
                {"id": name, "result": json.dumps(old) if old is not None else None},
            )
    upgrade_to_head(scratch_url)
    with scratch_engine.connect() as connection:
        rows = {
            row.message_id: (row.result, row.result_dropped)
            for row in connection.execute(text("SELECT * FROM jobs"))
        }
    assert rows == {name: (new, dropped) for name, (_, new, dropped) in _OLD_RESULTS.items()}

    with scratch_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0006_running")
        back = dict(connection.execute(text("SELECT message_id, result FROM jobs")).all())
    assert back["wrapped"] == {"value": 7}
    assert back["dict"] == {"changed": False}
    assert back["truncated"] == {"truncated": True}


def test_0009_dates_every_existing_job_record_and_loses_none(
    scratch_url: str, scratch_engine: Engine
) -> None:
    # Given a database at 0006 holding job records, one of them without a send time
    ensure_database(scratch_url)
    config = alembic_config(scratch_url)
    with scratch_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006_running")
    with scratch_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, attempts,"
                " enqueued_at, updated_at) VALUES"
                " ('sent', 1, 'a', 'q', '{}', 'succeeded', 1,"
                "  '2026-01-02T03:04:05+00', '2026-01-02T03:05:00+00'),"
                " ('unsent', 1, 'a', 'q', '{}', 'queued', 0, NULL, '2026-02-01T00:00:00+00')"
            )
        )

    # When it is upgraded to head
    upgrade_to_head(scratch_url)

    # Then every record is there, dated by its send time (or its last write without one)
    with scratch_engine.connect() as connection:
        rows = dict(
            connection.execute(
                text("SELECT message_id, created_at FROM jobs ORDER BY message_id")
            ).all()
        )
    assert rows == {
        "sent": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "unsent": dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
    }
    # And a new record is dated when it is written
    with scratch_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, attempts)"
                " VALUES ('new', 1, 'a', 'q', '{}', 'queued', 0)"
            )
        )
        fresh = connection.execute(
            text(
                "SELECT now() - created_at < interval '1 minute' FROM jobs WHERE message_id = 'new'"
            )
        ).scalar_one()
    assert fresh is True


def test_0013_keeps_every_record_with_no_history_and_indexes_schedule_slots(
    scratch_url: str, scratch_engine: Engine
) -> None:
    # Given a database at 0012 holding job records, one sent by a schedule
    ensure_database(scratch_url)
    config = alembic_config(scratch_url)
    with scratch_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0012")
    with scratch_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, attempts,"
                " error, schedule_id, slot_at) VALUES"
                " ('failed', 1, 'a', 'q', '{}', 'dead', 3, 'Boom: last', NULL, NULL),"
                " ('scheduled', 1, 'a', 'q', '{}', 'succeeded', 1, NULL, 7,"
                "  '2026-01-02T03:04:00+00')"
            )
        )

    # When it is upgraded to head
    upgrade_to_head(scratch_url)

    # Then the records are all there, with no history (their earlier attempts were not kept)
    with scratch_engine.connect() as connection:
        rows = connection.execute(
            text("SELECT message_id, error, attempt_history FROM jobs ORDER BY message_id")
        ).all()
        indexes = connection.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_schedule_slot'")
        ).scalars()
        definition = next(iter(indexes), "")
    assert [tuple(row) for row in rows] == [
        ("failed", "Boom: last", None),
        ("scheduled", None, None),
    ]
    assert "(schedule_id, slot_at)" in definition and "schedule_id IS NOT NULL" in definition

    # And it goes back to 0012 without them
    with scratch_engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0012")
        columns = connection.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'")
        ).scalars()
        assert "attempt_history" not in set(columns)


def _status_indexes(engine: Engine) -> dict[str, tuple[str, bool, int]]:
    """Each status index of `jobs`: its definition, whether valid, its partitions' indexes."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT c.relname, pg_get_indexdef(c.oid), x.indisvalid,"
                " (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid)"
                " FROM pg_class c JOIN pg_index x ON x.indexrelid = c.oid"
                " WHERE c.relname IN ('ix_jobs_status_created_at',"
                "                     'ix_jobs_tenant_id_status_created_at')"
            )
        ).all()
    return {name: (definition, valid, children) for name, definition, valid, children in rows}


def _migrate(
    scratch_url: str, scratch_engine: Engine, revision: str, *, down: bool = False
) -> None:
    """Move the scratch database up (creating it) or down to `revision`, each migration in
    its own transaction (not the test's: some build their indexes outside one)."""
    ensure_database(scratch_url)
    config = alembic_config(scratch_url)
    with scratch_engine.connect() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)
        connection.commit()


def test_0015_makes_the_status_indexes_partial_on_every_partition_and_loses_no_record(
    scratch_url: str, scratch_engine: Engine
) -> None:
    # Given a database at 0014 holding records in a day's partition and in the default one
    _migrate(scratch_url, scratch_engine, "0014")
    with scratch_engine.begin() as connection:
        partitions = connection.execute(
            text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'jobs'::regclass")
        ).scalar_one()
        connection.execute(
            text(
                "INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, attempts)"
                " VALUES (:today, 1, 'a', 'q', '{}', 'dead', 3),"
                " (:ok, 1, 'a', 'q', '{}', 'succeeded', 1),"
                " ('not-a-uuid', 2, 'a', 'q', '{}', 'queued', 0)"
            ),
            {"today": str(uuid.uuid4()), "ok": str(uuid.uuid4())},
        )
    assert partitions >= 2
    full = _status_indexes(scratch_engine)
    assert all("WHERE" not in definition for definition, _, _ in full.values()), full

    # When it is upgraded to head
    upgrade_to_head(scratch_url)

    # Then both status indexes leave the succeeded records out, valid, on every partition
    partial = _status_indexes(scratch_engine)
    assert set(partial) == set(full)
    for definition, valid, children in partial.values():
        assert "WHERE ((status)::text <> 'succeeded'::text)" in definition, definition
        assert valid and children == partitions
    with scratch_engine.connect() as connection:
        statuses = connection.execute(text("SELECT status FROM jobs ORDER BY status")).scalars()
        assert list(statuses) == ["dead", "queued", "succeeded"]
        # And a listing of dead records reads the partial index
        connection.execute(text("SET enable_seqscan = off"))
        plan = "\n".join(
            connection.execute(
                text("EXPLAIN SELECT * FROM jobs WHERE status = 'dead' ORDER BY created_at DESC")
            ).scalars()
        )
    assert "status_created_at" in plan, plan

    # And it goes back to 0014: whole indexes again
    _migrate(scratch_url, scratch_engine, "0014", down=True)
    restored = _status_indexes(scratch_engine)
    for definition, valid, children in restored.values():
        assert "WHERE" not in definition and valid and children == partitions, restored


def test_0016_indexes_exactly_the_waiting_dead_letters_and_their_count_reads_only_it(
    scratch_url: str, scratch_engine: Engine
) -> None:
    # Given a database at 0015 holding a waiting, a requeued and an undecodable dead letter
    _migrate(scratch_url, scratch_engine, "0015")
    with scratch_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO dead_letters (message_id, queue, reason, attempts, tenant_id, "
                "message, raw_body, requeued_at) VALUES "
                "('waiting', 'q', 'r', 1, 7, '{}', NULL, NULL), "
                "('requeued', 'q', 'r', 1, 7, '{}', NULL, now()), "
                "('undecodable', 'q', 'r', 1, 7, NULL, 'x', NULL)"
            )
        )

    # When it is upgraded to head
    upgrade_to_head(scratch_url)

    # Then the new index is valid and holds the waiting letter alone; no letter is lost
    with scratch_engine.connect() as connection:
        valid = connection.execute(
            text(
                "SELECT indisvalid FROM pg_index "
                "WHERE indexrelid = 'ix_dead_letters_waiting'::regclass"
            )
        ).scalar_one()
        ids = connection.execute(text("SELECT message_id FROM dead_letters ORDER BY 1")).scalars()
        assert valid and list(ids) == ["requeued", "undecodable", "waiting"]
        # And the overview's counts (all tenants, and one) read it alone
        connection.execute(text("SET enable_seqscan = off"))
        connection.execute(text("SET enable_bitmapscan = off"))
        session = Session(bind=connection)
        for tenant_id in (None, 7):
            assert count_requeueable(session, DeadLetterFilter(tenant_id=tenant_id)) == 1
        plans = []
        for tenant_id in (None, 7):
            # The statement count_requeueable sends, explained.
            query = select(func.count()).select_from(DeadLetter)
            query = query.where(*_requeueable(DeadLetterFilter(tenant_id=tenant_id)))
            sql = str(query.compile(connection, compile_kwargs={"literal_binds": True}))
            plans.append("\n".join(connection.execute(text(f"EXPLAIN {sql}")).scalars()))
    for plan in plans:
        assert "ix_dead_letters_waiting" in plan, plan

    # And it goes back to 0015 without it
    _migrate(scratch_url, scratch_engine, "0015", down=True)
    with scratch_engine.connect() as connection:
        gone = connection.execute(text("SELECT to_regclass('ix_dead_letters_waiting')")).scalar()
    assert gone is None
