"""procrastinate 3 on PostgreSQL: the same job bodies, jobs kept in PostgreSQL, no RabbitMQ.

Run as `procrastinate --app=bench.peers.procrastinate_app.app worker --concurrency 8`.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bench import bodies

QUEUE = os.environ.get("BENCH_PROCRASTINATE_QUEUE", "bench_procrastinate")
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
app = App(connector=PsycopgConnector(conninfo=DATABASE_URL.replace("+psycopg2", "")))
engine = create_engine(DATABASE_URL, pool_size=8)


@app.task(name="bench.noop", queue=QUEUE)
def noop() -> None:
    """The no-op job."""
    bodies.noop()


@app.task(name="bench.write_row", queue=QUEUE)
def write_row() -> None:
    """One ORM session inserts one row and commits."""
    with Session(engine) as session:
        bodies.write_row(session, "procrastinate", commit=True)


@app.task(name="bench.probe", queue=QUEUE)
def probe(sent_at: float) -> None:
    """The latency probe."""
    bodies.probe(sent_at)
