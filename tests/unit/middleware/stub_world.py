"""A stub broker wired like production on a fresh SQLite database, tenant 1, a running worker.

Shared by the unit tests of the middleware that need whole messages to run
(the DB session, metrics, the outbox), each of which adds its own views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.orm import Session, sessionmaker

from brokers import build_broker
from db.migrate import upgrade_to_head
from middleware import DbSession
from middleware.db_session import find_middleware
from services.tenants import create_tenant
from settings import Settings


@contextmanager
def stub_world(
    tmp_path: Path,
    *,
    max_attempts: int = 3,
    prepare: Callable[[StubBroker], None] = lambda broker: None,
) -> Iterator[tuple[StubBroker, Worker, sessionmaker[Session], Settings]]:
    """The broker, its started worker, the session factory and the settings.

    `prepare` adjusts the middleware before the worker starts.
    """
    url = f"sqlite:///{tmp_path / 'taskyard.sqlite3'}"
    upgrade_to_head(url)
    settings = Settings(
        broker_url="stub://",
        database_url=url,
        min_backoff_ms=1,
        max_backoff_ms=5,
        max_attempts=max_attempts,
    )
    broker = build_broker(settings)
    assert isinstance(broker, StubBroker)
    prepare(broker)
    db = find_middleware(broker, DbSession)
    assert db is not None
    with db.session_factory.begin() as session:
        create_tenant(session, "acme")
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        yield broker, worker, db.session_factory, settings
    finally:
        worker.stop()
        broker.close()


def drain(broker: StubBroker, worker: Worker, *, rounds: int = 3) -> None:
    """Run every queued message, retries (and short delays) included, to completion."""
    for _ in range(rounds):
        for queue in [q for q in broker.queues if not q.endswith((".DQ", ".XQ"))]:
            broker.join(queue, fail_fast=False, timeout=10_000)
        worker.join()
