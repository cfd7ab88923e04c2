"""Bare Dramatiq: RabbitmqBroker with its default middleware, the same job bodies.

Run as `dramatiq --processes 1 --threads 8 bench.peers.dramatiq_app:broker`; the
queue comes from `BENCH_DRAMATIQ_QUEUE`, the database from `BENCH_DATABASE_URL`.
The broker is named, not installed as the global one: importing this module
(the harness, its tests) must not replace Taskyard's broker in that process.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bench import bodies

QUEUE = os.environ.get("BENCH_DRAMATIQ_QUEUE", "bench.dramatiq")
broker = RabbitmqBroker(url=os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
# One pool slot per worker thread, created on first use (nothing connects at import).
engine = create_engine(
    os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    pool_size=8,
)


@dramatiq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
def noop() -> None:
    """The no-op job."""
    bodies.noop()


@dramatiq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
def write_row() -> None:
    """One ORM session inserts one row and commits."""
    with Session(engine) as session:
        bodies.write_row(session, "dramatiq", commit=True)


@dramatiq.actor(queue_name=QUEUE, broker=broker, max_retries=0)
def probe(sent_at: float) -> None:
    """The latency probe."""
    bodies.probe(sent_at)
