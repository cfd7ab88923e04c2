"""Shared fixtures: one database and one queue prefix per test run, so runs never collide."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

# TASKYARD_* variables of the developer's shell must not change what the tests see,
# except the test suite's own knobs (they are not settings).
TEST_KNOBS = frozenset({"TASKYARD_LOAD_JOBS", "TASKYARD_CLUSTER_JOBS", "TASKYARD_SECURITY_SEED"})
for _name in [n for n in os.environ if n.startswith("TASKYARD_") and n not in TEST_KNOBS]:
    del os.environ[_name]

from tests.support import (  # noqa: E402  (after the clean-up)
    PG_SERVER_URL,
    delete_queues,
    queues_named,
    require_servers,
)

RUN_ID = uuid.uuid4().hex[:10]
TEST_DATABASE = f"taskyard_test_{RUN_ID}"
os.environ["DATABASE_URL"] = f"{PG_SERVER_URL}/{TEST_DATABASE}"
os.environ["BROKER_URL"] = os.environ.get("BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F"
os.environ["TASKYARD_QUEUE_PREFIX"] = f"t{RUN_ID}."
# Every test server listens on 127.0.0.1, which the outbound URL guard refuses by default.
os.environ["TASKYARD_HTTP_ALLOW_PRIVATE"] = "true"
# One locker key for the whole run, so that any worker of the run can read any tenant's secrets.
os.environ["TASKYARD_SECRET_KEYS"] = Fernet.generate_key().decode()

from sqlalchemy import Engine, create_engine, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from db.migrate import upgrade_to_head  # noqa: E402
from db.session import make_engine  # noqa: E402
from settings import Settings, load_settings  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def delete_run_queues() -> Iterator[None]:
    """At the end of the run, every queue under its prefix is deleted from the shared RabbitMQ.

    Tests and the workers they start declare queues under prefixes of their own beneath
    the run's (a worker serving every tenant of the run's database declares three
    queues a tenant): left behind, a day of CI runs leaves tens of thousands of queues.
    """
    yield
    prefix = os.environ["TASKYARD_QUEUE_PREFIX"]
    try:
        names = queues_named(prefix)
        if names:
            delete_queues(os.environ["BROKER_URL"], names)
    except Exception:  # the run's outcome is its tests'; a clean-up problem is only reported
        logging.getLogger(__name__).warning("Could not delete the run's queues", exc_info=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """This run's settings: its own database and queue prefix."""
    return load_settings()


@pytest.fixture(scope="session")
def migrated_database(settings: Settings) -> Iterator[str]:
    """This run's PostgreSQL database at head; dropped when the run ends."""
    require_servers()
    upgrade_to_head(settings.database_url)
    yield settings.database_url
    admin = create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DATABASE}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def engine(settings: Settings, migrated_database: str) -> Iterator[Engine]:
    """An engine on this run's migrated database."""
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A factory of sessions that really commit (for integration tests)."""
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def db_session(engine: Engine) -> Iterator[Session]:
    """A session whose commits are savepoints: everything is rolled back after the test."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()
