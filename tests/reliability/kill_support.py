"""A rig for the worker-kill, SIGTERM and poison scenarios: shared RabbitMQ, reliability database.

Each scenario gets its own tenant, queue prefix (deleted after) and signal
directory; its workers load `tests.reliability.kill_actors` besides `actors`,
and its effects land in `rel_effects`, one row per run of `record_effect`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
from dramatiq import Message
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

import brokers
from db.models import Job, Tenant
from middleware.db_session import find_middleware
from middleware.outbox import find_outbox
from middleware.tenant_routing import TenantRouting
from services.tenants import create_tenant
from settings import Settings
from tests.reliability.kill_actors import record_effect
from tests.support import WorkerProcess, queue_family, worker_env

KILL_MODULE = "tests.reliability.kill_actors"
# The advisory lock the commit-time trigger waits for while the test holds it.
COMMIT_LOCK_KEY = 781_020_001

EFFECTS_DDL = [
    """CREATE TABLE IF NOT EXISTS rel_effects (
        id bigserial PRIMARY KEY,
        message_id text NOT NULL,
        key text NOT NULL,
        pause text NOT NULL,
        at timestamptz NOT NULL DEFAULT now()
    )""",
    f"""CREATE OR REPLACE FUNCTION rel_wait_at_commit() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({COMMIT_LOCK_KEY});
        RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS rel_wait_at_commit ON rel_effects",
    """CREATE CONSTRAINT TRIGGER rel_wait_at_commit AFTER INSERT ON rel_effects
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.pause = 'commit')
        EXECUTE FUNCTION rel_wait_at_commit()""",
]


class Rig:
    """One scenario's tenant, queue prefix, producer, workers and counts."""

    def __init__(
        self, database_url: str, settings: Settings, tmp_path: Path, queue_type: str = "classic"
    ) -> None:
        self.database_url = database_url
        self.queue_type = queue_type
        self.engine = create_engine(database_url)
        with self.engine.begin() as conn:
            for statement in EFFECTS_DDL:
                conn.execute(text(statement))
        self.prefix = f"k{uuid.uuid4().hex[:8]}."
        with Session(self.engine) as session, session.begin():
            self.tenant_id = create_tenant(session, f"kill-{uuid.uuid4().hex[:8]}").id
        self.broker_url = settings.broker_url
        self.tmp_path = tmp_path
        self.signal_dir = tmp_path / "signals"
        self.signal_dir.mkdir()
        self.producer = brokers.build_broker(
            dataclasses.replace(
                settings, database_url=database_url, queue_prefix=self.prefix, queue_type=queue_type
            )
        )
        outbox, routing = find_outbox(self.producer), find_middleware(self.producer, TenantRouting)
        assert outbox is not None and routing is not None
        self.outbox, self.routing = outbox, routing
        self.producer.declare_actor(record_effect)
        self.queue = routing.queue_for(self.tenant_id)
        self.workers: list[WorkerProcess] = []
        self.sent: list[str] = []

    def start_worker(
        self,
        name: str,
        threads: int = 4,
        options: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """A ready worker serving only this rig's tenant (`extra_env`: more settings)."""
        settings = {
            "DATABASE_URL": self.database_url,
            "BROKER_URL": self.broker_url,
            "TASKYARD_QUEUE_PREFIX": self.prefix,
            "TASKYARD_QUEUE_TYPE": self.queue_type,
            "TASKYARD_TENANTS": str(self.tenant_id),
            "TASKYARD_METRICS_PORT": "0",
        }
        env = worker_env(**(settings | dict(extra_env or {})))
        worker = WorkerProcess(
            self.tmp_path / f"{name}.log",
            env,
            threads=threads,
            modules=[KILL_MODULE],
            options=options,
        )
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def send(self, key: str, **kwargs: Any) -> Message[Any]:
        """Send one `record_effect` job (through the outbox, as a producer does)."""
        full = {"tenant_id": self.tenant_id, "key": key, "signal_dir": str(self.signal_dir)}
        message = record_effect.message_with_options(kwargs=full | kwargs)
        message = message.copy(queue_name=self.queue)
        self.outbox.send(self.producer, message, None)
        self.sent.append(message.message_id)
        return message

    def marker(self, key: str, moment: str) -> bool:
        """Whether a worker has reached `moment` for `key`."""
        return (self.signal_dir / f"{key}.{moment}").exists()

    def statuses(self) -> dict[str, int]:
        """How many of this rig's jobs are in each status."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(Job.status, func.count())
                .where(Job.tenant_id == self.tenant_id)
                .group_by(Job.status)
            )
            return {status: int(count) for status, count in rows}

    def effects(self) -> dict[str, int]:
        """How many effect rows each of this rig's messages wrote."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT message_id, count(*) FROM rel_effects"
                    " WHERE message_id = ANY(:ids) GROUP BY message_id"
                ),
                {"ids": self.sent},
            )
            return {message_id: int(count) for message_id, count in rows}

    def job(self, message_id: str) -> Job:
        """The job record of one message."""
        with Session(self.engine) as session:
            record = session.get(Job, message_id)
        assert record is not None, message_id
        return record

    def all_succeeded(self) -> bool:
        """Whether every job sent has succeeded."""
        return self.statuses() == {"succeeded": len(self.sent)}

    def assert_exactly_once(self) -> None:
        """Jobs sent = succeeded (none dead here), every record final, every effect once."""
        assert self.statuses() == {"succeeded": len(self.sent)}
        effects = self.effects()
        assert set(effects) == set(self.sent)
        assert {m: n for m, n in effects.items() if n != 1} == {}

    def close(self) -> None:
        """Stop the workers, close the producer, delete the rig's queues."""
        for worker in self.workers:
            worker.stop()
        self.producer.close()
        for engine in (self.outbox.session_factory.kw["bind"], self.outbox.sends):
            engine.dispose()
        # Any node of a multi-node BROKER_URL that answers.
        nodes = [pika.URLParameters(url) for url in self.broker_url.split(";")]
        connection = pika.BlockingConnection(nodes)
        channel = connection.channel()
        # Every tenant's, not only the rig's: the producer's sweeper publishes whatever the
        # shared database's outbox holds, so other tenants' queues appear under its prefix.
        with Session(self.engine) as session:
            tenants = list(session.scalars(select(Tenant.id)))
        names = [self.routing.system_queue, *(self.routing.queue_for(t) for t in tenants)]
        for queue in queue_family(names):
            channel.queue_delete(queue)
        connection.close()
        self.engine.dispose()


@contextmanager
def open_rig(
    database_url: str, settings: Settings, tmp_path: Path, queue_type: str = "classic"
) -> Iterator[Rig]:
    """A scenario's rig on the shared RabbitMQ and the reliability database; closed after."""
    made = Rig(database_url, settings, tmp_path, queue_type)
    try:
        yield made
    finally:
        made.close()
