"""Prometheus metrics and one log line per job outcome, for every message a worker runs."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_CANCELLED, JOB_EXPIRED, JOB_SKIPPED, Job
from middleware.metrics_labels import UNKNOWN_ACTOR, TenantLabels, queue_label
from middleware.metrics_server import (
    BEFORE_SCRAPE,
    command_dir,
    remove_stale_dirs,
    run_exposition_server,
)

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
# Jobs' metrics are written to the Prometheus files this often (and on shutdown).
FLUSH_EVERY_SECONDS = 1.0
# Label pairs remembered per process, of (actor, queue) names seen.
LABEL_CACHE_SIZE = 10_000
# Upper bounds as prometheus-client's Histogram keeps them (its last is +Inf).
DURATION_BOUNDS = (*DURATION_BUCKETS, math.inf)
QUEUE_BOUNDS = (*QUEUE_BUCKETS, math.inf)
COMMIT_BOUNDS = (*COMMIT_BUCKETS, math.inf)
# A pending value's metric (an `_Instruments` field) and label values.
_Key = tuple[str, tuple[str, ...]]
# The periodiq actor whose lateness is the scheduler lag.
SCHEDULER_TICK = "scheduler_tick"

# Outcomes; `duplicate` is a redelivered message whose job had already finished (a skip
# may also count as `expired`, its record's status: older than its max_age).
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

    A job's hooks only add to plain dicts in this process (counter and gauge
    deltas, histogram bucket counts and sums); a thread of this process writes
    them to the Prometheus metrics every `flush_every` seconds, on shutdown, and
    before an in-process scrape (`metrics_server.BEFORE_SCRAPE`). So a scrape
    may lag a job by up to `flush_every`; nothing is lost or approximated.
    Dead letters and the scheduler lag, which are rare, are written at once.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        queue_prefix: str = "",
        tenant_labels: int = 20,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
        flush_every: float = FLUSH_EVERY_SECONDS,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.outcome_logger = logging.getLogger("JobOutcome")
        self.session_factory = session_factory
        self.queue_prefix = queue_prefix
        self.tenants = TenantLabels(tenant_labels)
        self.registry = registry
        self.clock = clock
        self.flush_every = flush_every
        self.instruments: _Instruments | None = None
        self._started: dict[str, float] = {}
        self._delayed: set[str] = set()
        # Guards `_started`, `_delayed` and the pending deltas below.
        self._lock = threading.Lock()
        # Not yet written: counter and gauge deltas, and histograms' [sum, count per
        # bucket...], by (metric, labels).
        self._deltas: dict[_Key, float] = {}
        self._observed: dict[_Key, list[float]] = {}
        # One flush at a time, so that `flush()` returning means everything before it is written.
        self._flush_lock = threading.Lock()
        # (actor name, queue name) -> (actor label, queue label), for known actors.
        self._label_cache: dict[tuple[str, str], tuple[str, str]] = {}
        # Labelled children by (metric, labels): `labels()` costs a lock and a check per call.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Start the thread that writes the metrics out and beats the heartbeat."""
        self._beat()
        BEFORE_SCRAPE.append(self.flush)
        self._thread = threading.Thread(target=self._run, name="taskyard-metrics", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop the metrics thread (it writes out what it holds as it goes)."""
        self._stop.set()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Write out the last jobs' metrics, then mark this process dead for the merged view."""
        self.flush()
        if self.flush in BEFORE_SCRAPE:
            BEFORE_SCRAPE.remove(self.flush)
        if self.registry is None and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        now = time.monotonic()
        next_beat, next_flush = now + HEARTBEAT_EVERY_SECONDS, now + self.flush_every
        while not self._stop.wait(min(self.flush_every, HEARTBEAT_EVERY_SECONDS)):
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + self.flush_every
                self._flush_logged()
            if now >= next_beat:
                next_beat += HEARTBEAT_EVERY_SECONDS
                self._beat()
        self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:
            self.logger.exception("Could not write the metrics out")

    def _beat(self) -> None:
        if self.instruments is not None:
            self.instruments.heartbeat.set(self.clock())

    def flush(self) -> None:
        """Write every pending delta and observation to the Prometheus metrics."""
        with self._flush_lock:
            with self._lock:
                deltas, self._deltas = self._deltas, {}
                observed, self._observed = self._observed, {}
            if self.instruments is None:
                return
            for (metric, labels), delta in deltas.items():
                # The child is made even for a zero delta (a job started and finished
                # between two flushes), so that its series is in the scrape.
                child = self._child(metric, *labels)
                if delta:
                    child.inc(delta)
            for (metric, labels), sums in observed.items():
                _add_observed(self._child(metric, *labels), sums)

    def _child(self, metric: str, *labels: str) -> Any:
        """The child of `metric` for `labels` (bounded label sets: see metrics_labels)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            parent = getattr(self.instruments, metric)
            child = parent.labels(*labels) if labels else parent
            self._children[key] = child
        return child

    def _observe(
        self, key: tuple[str, tuple[str, ...]], bounds: tuple[float, ...], value: float
    ) -> None:
        """Add `value` to the pending histogram `key` (the caller holds `_lock`)."""
        sums = self._observed.get(key)
        if sums is None:
            sums = self._observed[key] = [0.0] * (len(bounds) + 1)
        sums[0] += value
        # Histogram.observe: the first bucket whose bound is >= the value (none for NaN).
        i = bisect_left(bounds, value)
        if i < len(bounds) and value <= bounds[i]:
            sums[i + 1] += 1

    def _labels(self, broker: Broker, message: MessageProxy) -> tuple[str, str]:
        return self._labels_of(broker, message.actor_name, message.queue_name)

    def _labels_of(self, broker: Broker, actor_name: str, queue_name: str) -> tuple[str, str]:
        key = (actor_name, queue_name)
        labels = self._label_cache.get(key)
        if labels is None:
            known = actor_name in broker.actors
            actor = actor_name if known else UNKNOWN_ACTOR
            labels = (actor, queue_label(queue_name, self.queue_prefix))
            # Actors are never undeclared; an unknown name may be declared later.
            if known and len(self._label_cache) < LABEL_CACHE_SIZE:
                self._label_cache[key] = labels
        return labels

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        """A delayed message held in memory is unacknowledged until it runs."""
        if self.instruments is None:
            return
        key = ("unacked", (self._labels(broker, message)[1],))
        with self._lock:
            self._delayed.add(message.message_id)
            self._deltas[key] = self._deltas.get(key, 0) + 1

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Start the job's timer; observe its time in queue and the scheduler lag."""
        if self.instruments is None:
            return
        now = self.clock()
        message_id, actor_name = message.message_id, message.actor_name
        options = message.options
        labels = self._labels_of(broker, actor_name, message.queue_name)
        sent_at = max(message.message_timestamp, int(options.get("eta", 0))) / 1000
        waited = max(0.0, now - sent_at)
        with self._lock:
            deltas = self._deltas  # read under the lock: a flush swaps it
            self._started[message_id] = now
            was_delayed = message_id in self._delayed
            if was_delayed:
                self._delayed.discard(message_id)
            else:
                key: _Key = ("unacked", labels[1:])
                deltas[key] = deltas.get(key, 0) + 1
            key = ("in_progress", labels)
            deltas[key] = deltas.get(key, 0) + 1
            if "retries" not in options:
                self._observe(("in_queue", labels), QUEUE_BOUNDS, waited)
        if actor_name == SCHEDULER_TICK:
            self.instruments.scheduler_lag.set(_lag(options.get("scheduled_at"), now, waited))

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
        if status in (JOB_SKIPPED, JOB_CANCELLED, JOB_EXPIRED):
            return status
        # No record (a stale tick outside a transaction) is a skip too.
        return SKIPPED if status is None else DUPLICATE

    def _finish(self, broker: Broker, message: MessageProxy, outcome: str, *, ran: bool) -> None:
        now = self.clock()
        message_id, actor_name, kwargs = message.message_id, message.actor_name, message.kwargs
        raw_tenant = kwargs.get("tenant_id") if isinstance(kwargs, dict) else None
        tenant_id = raw_tenant if type(raw_tenant) is int else None
        if self.instruments is None:
            with self._lock:
                started = self._started.pop(message_id, None)
            duration = now - started if started is not None else 0.0
        else:
            labels = self._labels_of(broker, actor_name, message.queue_name)
            tenant = self.tenants.count(tenant_id)
            with self._lock:
                deltas = self._deltas  # read under the lock: a flush swaps it
                started = self._started.pop(message_id, None)
                duration = now - started if started is not None else 0.0
                if started is not None:
                    key: _Key = ("in_progress", labels)
                    deltas[key] = deltas.get(key, 0) - 1
                    key = ("unacked", labels[1:])
                    deltas[key] = deltas.get(key, 0) - 1
                if ran:
                    self._observe(("duration", labels), DURATION_BOUNDS, duration)
                key = ("jobs", (*labels, outcome))
                deltas[key] = deltas.get(key, 0) + 1
                key = ("tenant_jobs", (tenant, outcome))
                deltas[key] = deltas.get(key, 0) + 1
        logger = self.outcome_logger
        if logger.isEnabledFor(logging.INFO):
            # What `logger.info` does, less its walk up the stack for the caller.
            record = logger.makeRecord(
                logger.name,
                logging.INFO,
                __file__,
                sys._getframe().f_lineno,
                "%s %s %s in %.3fs (tenant %s)",
                (actor_name, message_id, outcome, duration, tenant_id),
                None,
                "_finish",
                {
                    "message_id": message_id,
                    "tenant_id": tenant_id,
                    "actor": actor_name,
                    "duration_seconds": round(duration, 6),
                    "outcome": outcome,
                },
            )
            logger.handle(record)

    def _before_commit(self, session: Session) -> None:
        session.info["taskyard_commit_started"] = time.perf_counter()

    def _after_commit(self, session: Session) -> None:
        started = session.info.pop("taskyard_commit_started", None)
        if started is not None and self.instruments is not None:
            took = time.perf_counter() - started
            with self._lock:
                self._observe(("commit", ()), COMMIT_BOUNDS, took)


def _add_observed(histogram: Any, sums: list[float]) -> None:
    """Add pending [sum, count per bucket...] to a histogram (child), as `observe` each would.

    prometheus-client's Histogram keeps one value per bucket (`_buckets`, not
    cumulative) and its sum (`_sum`); `observe` adds to the sum and to one
    bucket, which is what this does, once per bucket instead of per observation.
    """
    histogram._sum.inc(sums[0])
    for bucket, count in zip(histogram._buckets, sums[1:], strict=True):
        if count:
            bucket.inc(count)


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
