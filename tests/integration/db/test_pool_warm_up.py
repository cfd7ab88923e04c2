"""A worker opens its pool's connections before its consumers start, and leaves no record behind."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest
from sqlalchemy import Engine, QueuePool, func, select

from db.models import Job
from db.session import make_engine, make_session_factory
from middleware.db_session import DbSession
from services import jobs
from settings import Settings

pytestmark = pytest.mark.integration


def test_warm_up_leaves_a_warm_connection_per_thread_and_no_rows(
    settings: Settings, migrated_database: str
) -> None:
    engine = make_engine(settings)
    try:
        factory = make_session_factory(engine)
        assert _idle(engine) == 0
        assert DbSession(session_factory=factory).warm_up(3) == 3
        # Three distinct connections wait in the pool for the first jobs.
        assert _idle(engine) == 3
        # Its rehearsed records were rolled back (other tests' records may be there).
        with factory() as session:
            rehearsed = select(func.count()).select_from(Job).where(Job.actor == jobs.REHEARSAL)
            assert session.scalar(rehearsed) == 0
    finally:
        engine.dispose()


def test_warm_up_stops_at_what_the_pool_keeps(settings: Settings, migrated_database: str) -> None:
    engine = make_engine(settings)
    try:
        factory = make_session_factory(engine)
        kept = cast(QueuePool, engine.pool).size()
        assert DbSession(session_factory=factory).warm_up(kept + 5) == kept
        assert _idle(engine) == kept
    finally:
        engine.dispose()


def test_a_database_that_refuses_is_logged_not_fatal(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 1: the connect fails, and the worker boots anyway.
    unreachable = "postgresql+psycopg2://postgres@127.0.0.1:1/nothing"
    engine = make_engine(dataclasses.replace(settings, database_url=unreachable))
    try:
        factory = make_session_factory(engine)
        assert DbSession(session_factory=factory).warm_up(2) == 0
        assert "Could not warm the database pool" in caplog.text
    finally:
        engine.dispose()


def _idle(engine: Engine) -> int:
    """How many connections wait in the pool."""
    return cast(QueuePool, engine.pool).checkedin()
