"""Celery 5 over the same RabbitMQ: threads pool, `acks_late`, the same job bodies.

Run as `celery -A bench.peers.celery_app worker --pool threads --concurrency 8 -Q <queue>`.
"""

from __future__ import annotations

import os

from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bench import bodies

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench.celery")
app = Celery("bench", broker=os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
engine = create_engine(
    os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
    pool_size=8,
)


@app.task(name="bench.noop")
def noop() -> None:
    """The no-op job."""
    bodies.noop()


@app.task(name="bench.write_row")
def write_row() -> None:
    """One ORM session inserts one row and commits."""
    with Session(engine) as session:
        bodies.write_row(session, "celery", commit=True)


@app.task(name="bench.probe")
def probe(sent_at: float) -> None:
    """The latency probe."""
    bodies.probe(sent_at)
