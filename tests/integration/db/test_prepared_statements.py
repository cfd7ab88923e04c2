"""The job record's hot statements as PostgreSQL prepared statements, and without them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, Integer, String, bindparam, column, select, table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db.hot import HotStatement
from db.models import Job
from db.session import make_engine, make_session_factory
from middleware.db_session import DbSession
from middleware.outbox_rows import send_engine
from services import jobs
from services.job_control import record_queued
from services.records import JobRecord
from settings import Settings

pytestmark = pytest.mark.integration


@contextmanager
def engine_with(settings: Settings, *, prepared: bool) -> Iterator[Engine]:
    engine = make_engine(dataclasses.replace(settings, db_prepared_statements=prepared))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def prepared_engine(settings: Settings, migrated_database: str) -> Iterator[Engine]:
    with engine_with(settings, prepared=True) as engine:
        yield engine


@pytest.fixture
def plain_engine(settings: Settings, migrated_database: str) -> Iterator[Engine]:
    with engine_with(settings, prepared=False) as engine:
        yield engine


def run_a_job(
    factory: sessionmaker[Session], *, result: dict[str, object] | None = None
) -> tuple[str, list[str]]:
    """One job's record as a worker writes it; its id and the statements its connection prepared."""
    message_id = str(uuid.uuid4())
    now = dt.datetime.now(dt.UTC)
    with factory() as session, session.begin():
        done = jobs.finish(
            session,
            JobRecord(
                message_id=message_id,
                tenant_id=None,
                actor="prepared_test",
                queue="q",
                args={"n": 1, "s": "50% done"},
                enqueued_at=None,
                attempts=2,
                started_at=now,
                finished_at=now,
                result=result,
            ),
        )
        assert done.written is True
        names = session.scalars(text("SELECT name FROM pg_prepared_statements ORDER BY name"))
        return message_id, list(names)


def stored(factory: sessionmaker[Session], message_id: str) -> tuple[object, ...]:
    with factory() as session:
        job = session.scalars(select(Job).where(Job.message_id == message_id)).one()
        return (job.status, job.attempts, job.args, job.result, job.error, job.finished_at is None)


def test_the_record_is_prepared_once_per_connection_and_stores_what_the_plain_one_does(
    prepared_engine: Engine, plain_engine: Engine
) -> None:
    prepared, plain = make_session_factory(prepared_engine), make_session_factory(plain_engine)

    first, names = run_a_job(prepared, result={"rows": 3})
    second, names_again = run_a_job(prepared)
    plain_id, plain_names = run_a_job(plain, result={"rows": 3})

    # The record's one statement, prepared on the first job's connection and reused
    assert len(names) == 1 and all(name.startswith("taskyard_hot_") for name in names)
    assert names_again == names
    assert plain_names == []
    # And the rows are the same as the plain statements write (no result is SQL NULL)
    assert stored(prepared, first) == stored(plain, plain_id)
    assert stored(prepared, first) == (
        "succeeded",
        2,
        {"n": 1, "s": "50% done"},
        {"rows": 3},
        None,
        False,
    )
    assert stored(prepared, second)[3] is None


def test_a_statement_prepared_in_a_rolled_back_transaction_is_still_there(
    prepared_engine: Engine,
) -> None:
    factory = make_session_factory(prepared_engine)
    with factory() as session, session.begin():
        jobs.rehearse(session)
        session.rollback()

    _, names = run_a_job(factory)

    assert len(names) == 1


@pytest.fixture
def probe_table(prepared_engine: Engine) -> Iterator[str]:
    """A table of the probe's own, which a test may alter; its name."""
    name = f"prepared_probe_{uuid.uuid4().hex[:8]}"
    with prepared_engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {name} (id integer, label varchar(10))"))
        connection.execute(text(f"INSERT INTO {name} VALUES (1, 'one')"))
    yield name
    with prepared_engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {name}"))


@pytest.fixture
def probe(probe_table: str) -> HotStatement:
    """A hot statement reading the probe's table."""
    rows = table(probe_table, column("id", Integer), column("label", String(10)))
    return HotStatement(
        lambda dialect: select(rows.c.label).where(rows.c.id == bindparam("id", type_=Integer))
    )


def read_probe(engine: Engine, probe: HotStatement) -> tuple[str, int, int]:
    """The probe's label, the server connection it ran on, and what that has prepared."""
    with engine.connect() as connection:
        label = probe.execute(connection, {"id": 1}).scalar_one()
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        count = connection.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
        return label, pid, count


def test_a_statement_gone_from_the_server_fails_once_then_the_pool_runs_unprepared(
    prepared_engine: Engine, probe: HotStatement, caplog: pytest.LogCaptureFixture
) -> None:
    _, pid, count = read_probe(prepared_engine, probe)
    # Someone (a pooler's other client, DISCARD ALL) drops the connection's statements.
    with prepared_engine.connect() as connection:
        connection.execute(text("DEALLOCATE ALL"))
        connection.commit()

    with pytest.raises(DBAPIError, match="does not exist"):
        read_probe(prepared_engine, probe)
    label, new_pid, new_count = read_probe(prepared_engine, probe)

    assert count == 1
    # A new server connection, and nothing prepared on it: this pool runs plain SQL now
    assert (label, new_count) == ("one", 0) and new_pid != pid
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "TASKYARD_DB_PREPARED_STATEMENTS=false" in warnings[0]


def test_a_statement_another_client_prepared_on_the_server_connection_is_a_pooler_too(
    prepared_engine: Engine, probe: HotStatement
) -> None:
    # Behind a pooler, this client's next server connection may be one on which
    # another client prepared the same statement: PREPARE says it exists.
    read_probe(prepared_engine, probe)
    with prepared_engine.connect() as connection:
        connection.info.clear()  # this client never prepared anything here

    with pytest.raises(DBAPIError, match="already exists"):
        read_probe(prepared_engine, probe)

    assert read_probe(prepared_engine, probe)[::2] == ("one", 0)


def test_a_migration_that_changes_what_a_statement_returns_costs_one_failure(
    prepared_engine: Engine, probe: HotStatement, probe_table: str
) -> None:
    _, pid, _ = read_probe(prepared_engine, probe)
    with prepared_engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE {probe_table} ALTER COLUMN label TYPE text"))

    with pytest.raises(DBAPIError, match="cached plan must not change result type"):
        read_probe(prepared_engine, probe)
    label, new_pid, count = read_probe(prepared_engine, probe)

    # Prepared afresh on a new connection: still prepared, as the pool lost nothing to a pooler
    assert (label, count) == ("one", 1) and new_pid != pid


@pytest.mark.parametrize("prepared", [True, False])
def test_a_sends_queued_record_follows_the_setting_on_the_send_engine(
    settings: Settings, migrated_database: str, prepared: bool
) -> None:
    # The queued record's CASE has a NULL branch: a parameter no type PostgreSQL
    # could infer, so the statement is prepared with its types declared.
    with engine_with(settings, prepared=prepared) as engine:
        sends = send_engine(engine)
        message_id = str(uuid.uuid4())
        try:
            with sends.connect() as connection:
                statuses = record_queued(
                    connection,
                    [
                        JobRecord(
                            message_id=message_id,
                            actor="prepared_test",
                            queue="q",
                            tenant_id=987_654_321,
                            args={"tenant_id": 987_654_321},
                            enqueued_at=dt.datetime.now(dt.UTC),
                            schedule_id=None,
                            slot_at=None,
                        )
                    ],
                )
                count = connection.execute(text("SELECT count(*) FROM pg_prepared_statements"))
                prepared_here = count.scalar()
        finally:
            sends.dispose()

        assert prepared_here == (1 if prepared else 0)
        assert statuses == {message_id: "dead"}
        assert stored(make_session_factory(engine), message_id)[0] == "dead"


def test_the_warm_up_prepares_the_record_on_every_connection_it_opens(
    prepared_engine: Engine,
) -> None:
    factory = make_session_factory(prepared_engine)
    assert DbSession(session_factory=factory).warm_up(3) == 3

    # The three pooled connections, held at once so the pool hands out each of them
    held = [prepared_engine.connect() for _ in range(3)]
    try:
        counts = [
            c.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar() for c in held
        ]
    finally:
        for connection in held:
            connection.close()

    assert counts == [1, 1, 1]
