"""Prometheus metrics and one log line per job outcome, for every message a worker runs."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_CANCELLED, JOB_SKIPPED, Job
from middleware.metrics_labels import UNKNOWN_ACTOR, TenantLabels, queue_label
from middleware.metrics_logging import use_json_logs
from middleware.metrics_server import command_dir, remove_stale_dirs, run_exposition_server

# Seconds: from a few milliseconds (a quick upsert) to the longest job (15 minutes).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
)  # fmt: skip
# Seconds waiting in RabbitMQ: from an idle worker (ms) to a backlog of an hour.
QUEUE_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
)  # fmt: skip
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HEARTBEAT_EVERY_SECONDS = 5.0
# The periodiq actor whose lateness is the scheduler lag.
SCHEDULER_TICK = "scheduler_tick"

# Outcomes; `duplicate` is a redelivered message whose job had already finished.
SUCCEEDED, RETRIED, DEAD, SKIPPED, CANCELLED, DUPLICATE = (
    "succeeded",
    "retried",
    "dead",
    "skipped",
    "cancelled",
    "duplicate",
)


@dataclass
class _Instruments:
    """The metric objects of one process (created once, after the multiprocess directory)."""

    jobs: Any
    tenant_jobs: Any
    duration: Any
    in_queue: Any
    in_progress: Any
    unacked: Any
    dead_letters: Any
    commit: Any
    heartbeat: Any
    scheduler_lag: Any


def make_instruments(registry: Any) -> _Instruments:
    """Create every per-process metric in `registry`."""
    from prometheus_client import Counter, Gauge, Histogram

    aq = ["actor", "queue"]
    return _Instruments(
        jobs=Counter(
            "taskyard_jobs_total", "Job attempts finished, by outcome.", [*aq, "outcome"],
            registry=registry,
        ),
        tenant_jobs=Counter(
            "taskyard_tenant_jobs_total",
            "Job attempts finished per tenant (top tenants, the rest as `other`), by outcome.",
            ["tenant", "outcome"], registry=registry,
        ),
        duration=Histogram(
            "taskyard_job_duration_seconds", "Time the actor ran.", aq,
            buckets=DURATION_BUCKETS, registry=registry,
        ),
        in_queue=Histogram(
            "taskyard_job_queue_time_seconds",
            "Time from send (or its delay's end) to the start of a job's first attempt.", aq,
            buckets=QUEUE_BUCKETS, registry=registry,
        ),
        in_progress=Gauge(
            "taskyard_jobs_in_progress", "Jobs running now.", aq,
            multiprocess_mode="livesum", registry=registry,
        ),
        unacked=Gauge(
            "taskyard_queue_messages_unacked",
            "Messages this host's worker processes hold unacknowledged (running or delayed).",
            ["queue"], multiprocess_mode="livesum", registry=registry,
        ),
        dead_letters=Counter(
            "taskyard_dead_letters_total", "Messages dead-lettered (nacked).", aq,
            registry=registry,
        ),
        commit=Histogram(
            "taskyard_db_commit_seconds", "Time to commit a worker's transaction (with its flush).",
            buckets=COMMIT_BUCKETS, registry=registry,
        ),
        heartbeat=Gauge(
            "taskyard_worker_heartbeat_timestamp_seconds",
            "Unix time of the oldest heartbeat among this host's live worker processes.",
            multiprocess_mode="livemin", registry=registry,
        ),
        scheduler_lag=Gauge(
            "taskyard_scheduler_lag_seconds",
            "How late the last scheduler tick started, after its cron slot (or its send).",
            multiprocess_mode="mostrecent", registry=registry,
        ),
    )  # fmt: skip


class Metrics(Middleware):
    """Counts every job outcome, times jobs and commits, and logs one line per outcome.

    First in the list, so its after-hooks run last: the retry policy has
    already failed a message that gives up, and the DB session has already
    recorded a skip, when the outcome is counted.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        queue_prefix: str = "",
        tenant_labels: int = 20,
        log_format: str = "text",
        registry: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.outcome_logger = logging.getLogger("JobOutcome")
        self.session_factory = session_factory
        self.queue_prefix = queue_prefix
        self.tenants = TenantLabels(tenant_labels)
        self.log_format = log_format
        self.registry = registry
        self.clock = clock
        self.instruments: _Instruments | None = None
        self._started: dict[str, float] = {}
        self._delayed: set[str] = set()
        self._lock = threading.Lock()
        # Labelled children by (metric, labels): `labels()` costs a lock and a check per call.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._stop = threading.Event()
        event.listen(session_factory, "before_commit", self._before_commit)
        event.listen(session_factory, "after_commit", self._after_commit)

    @property
    def forks(self) -> list[Callable[[], int]]:
        """The exposition server, one per `dramatiq actors` command (not with a given registry)."""
        return [] if self.registry is not None else [run_exposition_server]

    def after_process_boot(self, broker: Broker) -> None:
        """Create the metrics, in the command's multiprocess directory unless given a registry."""
        registry = self.registry
        if registry is None:
            import prometheus_client
            from prometheus_client import values

            remove_stale_dirs()
            directory = command_dir()
            directory.mkdir(parents=True, exist_ok=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
            # Chosen when prometheus-client is imported; choose again now the directory is set.
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
            registry = prometheus_client.CollectorRegistry()
        self.instruments = make_instruments(registry)

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Switch this process's log lines to JSON when asked."""
        if self.log_format == "json":
            use_json_logs()

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Start the heartbeat thread of this process."""
        self._beat()
        threading.Thread(target=self._heartbeat, name="taskyard-metrics", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Mark this process dead, so its live gauges leave the merged view."""
        if self.registry is None and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_SECONDS):
            self._beat()

    def _beat(self) -> None:
        if self.instruments is not None:
            self.instruments.heartbeat.set(self.clock())

    def _child(self, metric: str, *labels: str) -> Any:
        """The child of `metric` for `labels` (bounded label sets: see metrics_labels)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = getattr(self.instruments, metric).labels(*labels)
            self._children[key] = child
        return child

    def _labels(self, broker: Broker, message: MessageProxy) -> tuple[str, str]:
        actor = message.actor_name if message.actor_name in broker.actors else UNKNOWN_ACTOR
        return actor, queue_label(message.queue_name, self.queue_prefix)

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        """A delayed message held in memory is unacknowledged until it runs."""
        if self.instruments is None:
            return
        with self._lock:
            self._delayed.add(message.message_id)
        self.instruments.unacked.labels(self._labels(broker, message)[1]).inc()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Start the job's timer; observe its time in queue and the scheduler lag."""
        if self.instruments is None:
            return
        now = self.clock()
        actor, queue = self._labels(broker, message)
        with self._lock:
            self._started[message.message_id] = now
            was_delayed = message.message_id in self._delayed
            self._delayed.discard(message.message_id)
        if not was_delayed:
            self._child("unacked", queue).inc()
        self._child("in_progress", actor, queue).inc()
        sent_at = max(message.message_timestamp, int(message.options.get("eta", 0))) / 1000
        waited = max(0.0, now - sent_at)
        if "retries" not in message.options:
            self._child("in_queue", actor, queue).observe(waited)
        if message.actor_name == SCHEDULER_TICK:
            self.instruments.scheduler_lag.set(
                _lag(message.options.get("scheduled_at"), now, waited)
            )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Count the attempt's outcome: succeeded, retried, or dead (the policy failed it)."""
        outcome = SUCCEEDED if exception is None else DEAD if message.failed else RETRIED
        self._finish(broker, message, outcome, ran=True)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Count a skip as its record says: skipped, cancelled, or a duplicate of a finished job."""
        self._finish(broker, message, self._skip_outcome(message.message_id), ran=False)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Count a dead-lettered message."""
        if self.instruments is not None:
            self._child("dead_letters", *self._labels(broker, message)).inc()

    def after_refuse_message(self, broker: Broker, queue_name: str, reason: str) -> None:
        """Count a body the consumer refused (never decoded, so its actor is unknown)."""
        if self.instruments is not None:
            queue = queue_label(queue_name, self.queue_prefix)
            self._child("dead_letters", UNKNOWN_ACTOR, queue).inc()

    def _skip_outcome(self, message_id: str) -> str:
        try:
            with self.session_factory() as session:
                status = session.scalar(select(Job.status).where(Job.message_id == message_id))
        except Exception:
            self.logger.warning("Could not read the record of %s", message_id, exc_info=True)
            return SKIPPED
        if status in (JOB_SKIPPED, JOB_CANCELLED):
            return status
        # No record (a stale tick outside a transaction) is a skip too.
        return SKIPPED if status is None else DUPLICATE

    def _finish(self, broker: Broker, message: MessageProxy, outcome: str, *, ran: bool) -> None:
        now = self.clock()
        actor, queue = self._labels(broker, message)
        with self._lock:
            started = self._started.pop(message.message_id, None)
        duration = now - started if started is not None else 0.0
        raw_tenant = message.kwargs.get("tenant_id") if isinstance(message.kwargs, dict) else None
        tenant_id = raw_tenant if type(raw_tenant) is int else None
        if self.instruments is not None:
            if started is not None:
                self._child("in_progress", actor, queue).dec()
                self._child("unacked", queue).dec()
            if ran:
                self._child("duration", actor, queue).observe(duration)
            self._child("jobs", actor, queue, outcome).inc()
            self._child("tenant_jobs", self.tenants.count(tenant_id), outcome).inc()
        self.outcome_logger.info(
            "%s %s %s in %.3fs (tenant %s)",
            message.actor_name,
            message.message_id,
            outcome,
            duration,
            tenant_id,
            extra={
                "message_id": message.message_id,
                "tenant_id": tenant_id,
                "actor": message.actor_name,
                "duration_seconds": round(duration, 6),
                "outcome": outcome,
            },
        )

    def _before_commit(self, session: Session) -> None:
        session.info["taskyard_commit_started"] = time.perf_counter()

    def _after_commit(self, session: Session) -> None:
        started = session.info.pop("taskyard_commit_started", None)
        if started is not None and self.instruments is not None:
            self.instruments.commit.observe(time.perf_counter() - started)


def _lag(scheduled_at: Any, now: float, waited: float) -> float:
    """Seconds since the tick's cron slot (periodiq's `scheduled_at`), else since its send."""
    if isinstance(scheduled_at, str):
        try:
            slot = dt.datetime.fromisoformat(scheduled_at)
        except ValueError:
            return waited
        if slot.tzinfo is not None:
            return max(0.0, now - slot.timestamp())
    return waited
