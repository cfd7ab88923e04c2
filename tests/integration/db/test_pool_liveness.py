"""The pool replaces a connection the server closed, without a ping per checkout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from db.session import closed_by_server, make_engine
from settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(migrated_database: str) -> Iterator[Engine]:
    """A separate engine that can end other sessions' backends."""
    engine = create_engine(migrated_database, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(admin: Engine, engine: Engine, pid: int) -> None:
    """End backend `pid` and wait until its pooled connection has heard of it."""
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    pooled = engine.pool._pool.queue[0].dbapi_connection  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while not closed_by_server(pooled):
        assert time.monotonic() < deadline, "the terminated backend's socket never said so"
        time.sleep(0.01)


def test_a_connection_the_server_closed_is_replaced_at_checkout(
    settings: Settings, migrated_database: str, admin: Engine
) -> None:
    engine = make_engine(settings)
    try:
        before = _backend_pid(engine)
        _terminate(admin, engine, before)
        # The first statement after the server went away runs on a fresh connection.
        after = _backend_pid(engine)
        assert after != before
    finally:
        engine.dispose()


def test_without_the_check_the_dead_connection_fails_the_first_statement(
    migrated_database: str, admin: Engine
) -> None:
    # The same sequence on a plain pool: what the checkout check saves a job from.
    engine = create_engine(migrated_database, pool_size=1)
    try:
        _terminate(admin, engine, _backend_pid(engine))
        with pytest.raises(OperationalError):
            _backend_pid(engine)
    finally:
        engine.dispose()


def test_a_healthy_idle_connection_is_kept(settings: Settings, migrated_database: str) -> None:
    engine = make_engine(settings)
    try:
        first = _backend_pid(engine)
        pooled = engine.pool._pool.queue[0].dbapi_connection  # type: ignore[attr-defined]
        assert not closed_by_server(pooled)
        assert _backend_pid(engine) == first
    finally:
        engine.dispose()
