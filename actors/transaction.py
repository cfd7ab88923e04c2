"""`taskyard_transaction()`: a producer's own writes and its sends, committed together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
from dramatiq.broker import Broker
from sqlalchemy.orm import Session

from middleware.context import MessageContext, current_context, enter_context, leave_context
from middleware.runtime import runtime_of
from services.records import JobRecord


@contextmanager
def taskyard_transaction(broker: Broker | None = None) -> Iterator[Session]:
    """A session in one transaction; sends made inside are published only once it commits.

    Usage: `with taskyard_transaction() as session: session.add(...); actor.send(...)`.
    The sends become outbox rows and queued job records of the same transaction,
    so a rollback sends nothing and a crash after the commit loses nothing.
    """
    broker = broker or dramatiq.get_broker()
    runtime = runtime_of(broker)
    if runtime is None:
        raise RuntimeError("taskyard_transaction() needs a broker built by brokers.build_broker")
    db = runtime.engine
    if current_context() is not None:
        raise RuntimeError("taskyard_transaction() cannot be nested in a running actor or another")
    session = db.session_factory()
    ctx = MessageContext(message=None, session=session)
    token = enter_context(ctx)
    pending: list[JobRecord] = []
    try:
        with session.begin():
            yield session
            pending = db.write_held(session, ctx)
    finally:
        leave_context(token)
        session.close()
    db.publish(broker, pending)
