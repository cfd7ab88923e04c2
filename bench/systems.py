"""The systems measured: how each one's worker starts and how the harness sends it jobs.

Taskyard and the peers share one interface, so every scenario runs each of them
the same way, in the same run.  Import this only after `BenchEnv.export()`:
Taskyard reads its settings when its broker module is imported.
"""

from __future__ import annotations

import abc
import datetime as dt
import signal
from collections.abc import Sequence
from typing import Any

from sqlalchemy import create_engine, delete, func, select, text
from sqlalchemy.orm import Session

# Each side's actors are declared on their own broker (the bare Dramatiq peer's
# is never installed as the global one).
from bench.peers import celery_app, dramatiq_app, procrastinate_app  # isort: skip
import brokers  # isort: skip
from bench import taskyard_actors  # isort: skip
from bench.bodies import BenchBase, BenchRow
from bench.env import BIN, BenchEnv, BenchError, Worker
from db.migrate import upgrade_to_head
from db.models import JOB_SUCCEEDED, Job, OutboxMessage
from services.message_ids import id_floor
from services.tenants import create_tenant
from transport.rabbitmq import TaskyardRabbitmqBroker

DRAMATIQ_READY = "Worker process is ready for action."
KINDS = ("noop", "write_row", "probe")
# Messages per `send_many` call when the harness queues a backlog.
BULK_CHUNK = 500


class System(abc.ABC):
    """One system under test."""

    name = ""
    ready = ""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env

    @abc.abstractmethod
    def argv(self, processes: int) -> list[str]:
        """The worker's command line."""

    stop_signal = signal.SIGTERM

    def launch(self, tag: str, processes: int = 1, env: dict[str, str] | None = None) -> Worker:
        """Start a worker's command and return at once (`start` also waits until it is ready)."""
        return Worker(
            self.env,
            self.argv(processes),
            env or {},
            f"{self.name}-{tag}",
            stop_signal=self.stop_signal,
        )

    def start(
        self,
        tag: str,
        processes: int = 1,
        env: dict[str, str] | None = None,
        *,
        settle: bool = False,
    ) -> Worker:
        """Start a worker; return once it is ready (`settle`: and its processes are quiet).

        Only a worker with nothing queued can settle: one draining a backlog is busy.
        """
        worker = self.launch(tag, processes, env)
        worker.wait_ready(self.ready)
        if settle:
            worker.wait_settled()
        return worker

    @abc.abstractmethod
    def send(self, kind: str, count: int, **kwargs: Any) -> None:
        """Send `count` jobs of `kind`."""

    def settle_sends(self, timeout: float = 10.0) -> None:
        """Return once what this process sent is in RabbitMQ (or PostgreSQL's queue).

        Nothing to wait for where a send returns once its message is there; a
        system that publishes after its send returns waits for its confirms.
        """
        return None

    def reset(self) -> None:
        """Empty the queues and the bench table before a run."""
        with Session(engine_of(self.env)) as session:
            session.execute(delete(BenchRow))
            session.commit()

    def queues(self) -> list[str]:
        """The RabbitMQ queues this system uses (deleted when the run ends)."""
        return []


class Taskyard(System):
    """`dramatiq actors` with every middleware on, against its own database and queues."""

    name = "taskyard"
    ready = DRAMATIQ_READY

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.tenants: list[int] = []
        self._added = 0
        # Records with lower ids (minted earlier) survive `reset`: the pre-filled table.
        self.kept_below: str | None = None

    def keep_records(self) -> None:
        """Make `reset` keep every record already in `jobs` (the run's pre-fill)."""
        self.kept_below = id_floor(dt.datetime.now(dt.UTC))

    def setup(self) -> None:
        """Migrate the bench database, create the bench table and one tenant."""
        upgrade_to_head(self.env.database_url)
        BenchBase.metadata.create_all(engine_of(self.env))
        self.tenants = self.add_tenants(2)

    def add_tenants(self, count: int) -> list[int]:
        """Create `count` active tenants; return their ids."""
        with Session(engine_of(self.env)) as session, session.begin():
            first = self._added
            names = [f"bench-{self.env.run_id}-{first + i}" for i in range(count)]
            ids = [create_tenant(session, name).id for name in names]
        self._added += count
        return ids

    def argv(self, processes: int) -> list[str]:
        return [
            str(BIN / "dramatiq"),
            "actors",
            "bench.taskyard_actors",
            "--processes",
            str(processes),
            "--threads",
            "8",
        ]

    def settle_sends(self, timeout: float = 10.0) -> None:
        """`send()` returns at its commit; its publisher thread publishes after: wait for it."""
        broker = brokers.broker
        if not isinstance(broker, TaskyardRabbitmqBroker):
            return  # the in-process broker: a send is in its queue when it returns
        if not broker.publisher.settle(timeout):
            raise BenchError(f"Taskyard's sends were not confirmed by RabbitMQ in {timeout:.0f} s")

    def send(self, kind: str, count: int, tenant: int | None = None, **kwargs: Any) -> None:
        """One `send()` for a single job (as the latency probes are sent); `send_many` for more.

        Queueing a backlog is set-up, not what is measured: bulk sends keep the
        issue's sizes (A's 10,000 for fairness, 100,000 for memory) affordable.
        """
        actor = getattr(taskyard_actors, f"bench_{kind}")
        tenant_id = tenant or self.tenants[0]
        if count == 1:
            actor.send(tenant_id=tenant_id, **kwargs)
            return
        for start in range(0, count, BULK_CHUNK):
            actor.send_many([{"tenant_id": tenant_id, **kwargs}] * min(BULK_CHUNK, count - start))

    def reset(self) -> None:
        super().reset()
        with Session(engine_of(self.env)) as session:
            jobs = delete(Job)
            if self.kept_below is not None:
                # Ids are time-ordered: the bench's own records are the newest, in today's
                # partition, found by the primary key.
                jobs = jobs.where(Job.message_id >= self.kept_below)
            session.execute(jobs)
            session.execute(delete(OutboxMessage))
            session.commit()
        self.env.purge_queues(self.queues())

    def succeeded(self) -> int:
        """How many of the bench's job records (not the pre-fill's) say succeeded."""
        with Session(engine_of(self.env)) as session:
            query = select(func.count()).select_from(Job).where(Job.status == JOB_SUCCEEDED)
            if self.kept_below is not None:
                query = query.where(Job.message_id >= self.kept_below)
            return int(session.scalar(query) or 0)

    def queues(self) -> list[str]:
        s = brokers.settings
        with Session(engine_of(self.env)) as session:
            ids = list(session.scalars(text("SELECT id FROM tenants")))
        return [s.system_queue] + [s.tenant_queue(t) for t in ids]


class BareDramatiq(System):
    """Dramatiq's RabbitmqBroker with its default middleware."""

    name = "dramatiq"
    ready = DRAMATIQ_READY

    def argv(self, processes: int) -> list[str]:
        return [
            str(BIN / "dramatiq"),
            "bench.peers.dramatiq_app:broker",
            "--processes",
            str(processes),
            "--threads",
            "8",
        ]

    def send(self, kind: str, count: int, **kwargs: Any) -> None:
        actor = getattr(dramatiq_app, kind)
        for _ in range(count):
            actor.send(**kwargs)

    def reset(self) -> None:
        super().reset()
        self.env.purge_queues(self.queues())

    def queues(self) -> list[str]:
        return [dramatiq_app.QUEUE]


class Celery(System):
    """Celery 5: threads pool, concurrency 8, acks_late, the same RabbitMQ."""

    name = "celery"
    ready = "ready."
    # Its warm shutdown waits for a heartbeat-less connection; every job is done by then.
    stop_signal = signal.SIGQUIT

    def argv(self, processes: int) -> list[str]:
        return [
            str(BIN / "celery"),
            "-A",
            "bench.peers.celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "8",
            "-Q",
            celery_app.QUEUE,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]

    def send(self, kind: str, count: int, **kwargs: Any) -> None:
        task = getattr(celery_app, kind)
        with celery_app.app.producer_or_acquire() as producer:
            for _ in range(count):
                task.apply_async(kwargs=kwargs, queue=celery_app.QUEUE, producer=producer)

    def reset(self) -> None:
        super().reset()
        self.env.purge_queues(self.queues())

    def queues(self) -> list[str]:
        return [celery_app.QUEUE]


class Procrastinate(System):
    """procrastinate 3: jobs in PostgreSQL (LISTEN/NOTIFY), concurrency 8."""

    name = "procrastinate"
    ready = "Starting worker"

    def setup(self) -> None:
        """Apply procrastinate's schema to the bench database."""
        with procrastinate_app.app.open():
            procrastinate_app.app.schema_manager.apply_schema()

    def argv(self, processes: int) -> list[str]:
        return [
            str(BIN / "procrastinate"),
            "--verbose",
            "--app=bench.peers.procrastinate_app.app",
            "worker",
            "--concurrency",
            "8",
            "--queues",
            procrastinate_app.QUEUE,
        ]

    def send(self, kind: str, count: int, **kwargs: Any) -> None:
        task = getattr(procrastinate_app, kind)
        with procrastinate_app.app.open():
            for _ in range(count):
                task.defer(**kwargs)

    def reset(self) -> None:
        super().reset()
        with Session(engine_of(self.env)) as session:
            session.execute(text("DELETE FROM procrastinate_jobs"))
            session.commit()


_engines: dict[str, Any] = {}


def engine_of(env: BenchEnv) -> Any:
    """One engine per bench database, for the harness's own queries."""
    if env.database_url not in _engines:
        _engines[env.database_url] = create_engine(env.database_url)
    return _engines[env.database_url]


def all_queues(systems: Sequence[System]) -> list[str]:
    """Every RabbitMQ queue the systems used."""
    return [q for system in systems for q in system.queues()]


__all__ = ["KINDS", "BareDramatiq", "Celery", "Procrastinate", "System", "Taskyard", "all_queues"]
