"""The job record's hot statements as PostgreSQL prepared statements, and without them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job
from db.session import make_engine, make_session_factory
from middleware.db_session import DbSession
from services import jobs
from services.job_control import QueuedJob, record_queued
from settings import Settings

pytestmark = pytest.mark.integration


def engine_with(settings: Settings, *, prepared: bool) -> Iterator[Engine]:
    engine = make_engine(dataclasses.replace(settings, db_prepared_statements=prepared))
    yield engine
    engine.dispose()


@pytest.fixture
def prepared_engine(settings: Settings, migrated_database: str) -> Iterator[Engine]:
    yield from engine_with(settings, prepared=True)


@pytest.fixture
def plain_engine(settings: Settings, migrated_database: str) -> Iterator[Engine]:
    yield from engine_with(settings, prepared=False)


def run_a_job(
    factory: sessionmaker[Session], *, result: dict[str, object] | None = None
) -> tuple[str, list[str]]:
    """One job's record as a worker writes it; its id and the statements its connection prepared."""
    message_id = str(uuid.uuid4())
    with factory() as session, session.begin():
        attempt = jobs.begin_attempt(
            session,
            message_id,
            actor="prepared_test",
            queue="q",
            tenant_id=None,
            args={"n": 1, "s": "50% done"},
            attempt=2,
            enqueued_at=None,
        )
        assert attempt.run is True
        jobs.mark_succeeded(session, message_id, attempt=2, result=result)
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

    # The upsert and the final update, prepared on the first job's connection and reused
    assert len(names) == 2 and all(name.startswith("taskyard_hot_") for name in names)
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

    assert len(names) == 2


def test_a_statement_gone_from_the_server_fails_one_attempt_then_the_pool_reconnects(
    prepared_engine: Engine,
) -> None:
    factory = make_session_factory(prepared_engine)
    run_a_job(factory)
    # Someone (a pooler, DISCARD ALL) drops the connection's prepared statements.
    with prepared_engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        connection.execute(text("DEALLOCATE ALL"))
        connection.commit()

    with pytest.raises(DBAPIError, match="does not exist"):
        run_a_job(factory)
    message_id, names = run_a_job(factory)

    with factory() as session:
        new_pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
    assert new_pid != pid
    assert len(names) == 2
    assert stored(factory, message_id)[0] == "succeeded"


def test_the_queued_record_with_a_null_branch_is_prepared_and_marks_an_unknown_tenant_dead(
    prepared_engine: Engine,
) -> None:
    # Its CASE's NULL branch gives a parameter no type PostgreSQL could infer.
    factory = make_session_factory(prepared_engine)
    message_id = str(uuid.uuid4())
    with prepared_engine.connect() as connection:
        statuses = record_queued(
            connection,
            [
                QueuedJob(
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
        names = list(connection.execute(text("SELECT name FROM pg_prepared_statements")).scalars())
        connection.commit()

    assert len(names) == 1
    assert statuses == {message_id: "dead"}
    assert stored(factory, message_id)[0] == "dead"


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

    assert counts == [2, 2, 2]
