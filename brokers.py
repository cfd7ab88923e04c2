"""Builds Taskyard's broker from settings, with its middleware in one visible order."""

from __future__ import annotations

# First: in a worker or the scheduler, the log settings apply before the libraries below log.
from middleware import log_setup  # isort: skip

import datetime as dt

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, TimeLimit
from dramatiq.results import ResultBackend
from periodiq import PeriodiqMiddleware
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import check_schema
from db.session import make_engine, make_session_factory
from middleware import DbSession, RetryPolicy, TenantRouting
from middleware.age_limit import JobAgeLimit
from middleware.dead_letters import DeadLetters
from middleware.follow_ups import FollowUps
from middleware.frozen_heap import FrozenHeap
from middleware.groups import GroupCompletion
from middleware.heartbeat import Heartbeat
from middleware.metrics import Metrics
from middleware.outbox import Outbox
from middleware.results import JobResults, TaskyardResults, results_backend_of
from middleware.runtime import Runtime
from middleware.shutdown import JobShutdownNotifications
from middleware.worker_state import StateSnapshot, WorkerState
from services.job_control import cancel_requests_since
from services.tenants import served_tenant_ids, tenant_statuses
from settings import Settings
from transport.consumer import ConsumerMultiplexing
from transport.hooks import HookDispatch
from transport.rabbitmq import DEFAULT_MAX_ETA_AHEAD_MS, TaskyardRabbitmqBroker

# periodiq drops a tick older than this; the scheduler catches up on missed
# slots itself, so a stale tick is safe to drop.
TICK_SKIP_DELAY_SECONDS = 30


def build_runtime(settings: Settings, session_factory: sessionmaker[Session]) -> Runtime:
    """Taskyard's engine, built once: each part is handed the parts it uses.

    Its middleware are listed in execution order (after-hooks run in reverse);
    `middleware.runtime.ORDER` states the order's constraints, checked when
    the runtime is attached to its broker.
    """

    def list_tenants() -> list[int]:
        with session_factory() as session:
            return served_tenant_ids(session)

    def read_state(since: dt.datetime | None) -> StateSnapshot:
        with session_factory() as session:
            return StateSnapshot(tenant_statuses(session), cancel_requests_since(session, since))

    engine = session_factory.kw["bind"]
    state = WorkerState(read_state)
    routing = TenantRouting(
        queue_prefix=settings.queue_prefix,
        pinned=settings.tenants,
        refresh_seconds=settings.tenant_refresh_seconds,
        list_tenants=list_tenants,
        state=state,
    )
    dead_letters = DeadLetters(
        session_factory=session_factory, tenant_of_queue=routing.tenant_of_queue
    )
    # Records every send as a queued job; writes a transaction's sends to the outbox
    # (published after the commit) and parks long delays there; its sweeper thread
    # publishes what is due.  No message hooks: the engine and the policy call it.
    outbox = Outbox(
        session_factory=session_factory, delay_max_seconds=settings.broker_delay_max_seconds
    )
    # Decides about a failure (retry with backoff, or give up) and carries it out.
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        min_backoff_ms=settings.min_backoff_ms,
        max_backoff_ms=settings.max_backoff_ms,
        outbox=outbox,
    )
    # Callbacks and pipelines: a Taskyard job's follow-ups, held in its transaction.
    follow_ups = FollowUps(outbox=outbox)
    # Groups with completion callbacks: created in PostgreSQL by group.run(), completed by
    # the engine once their last member has committed (the outbox's sweeper: after a crash).
    groups = GroupCompletion(outbox=outbox, follow_ups=follow_ups)
    # Runs the actor and writes its record: one statement after the body.
    engine_middleware = DbSession(
        session_factory=session_factory,
        check_schema=lambda: check_schema(engine),
        state=state,
        routing=routing,
        policy=policy,
        outbox=outbox,
        follow_ups=follow_ups,
        groups=groups,
        group_commit_linger_seconds=settings.group_commit_linger_ms / 1000,
    )
    middleware: tuple[Middleware, ...] = (
        # Fails a message older than its max_age before anything starts for it: its job
        # recorded expired, never run.  First, where Dramatiq's default stack has AgeLimit,
        # so add_middleware(m, before=AgeLimit / after=AgeLimit) places m as in Dramatiq.
        JobAgeLimit(session_factory=session_factory, tenant_of=dead_letters.tenant_of),
        # Freezes the booted process's objects out of the full GC passes that stop every
        # job; first of those with boot hooks, so its after_worker_boot runs last, once
        # everything has booted.
        FrozenHeap(),
        # In a worker process, logging never waits for the pipe to Dramatiq's main
        # process; its after_worker_shutdown writes out every other's last lines.
        log_setup.WorkerLogging(settings),
        # Prometheus metrics and one log line per job outcome; first of the message
        # hooks, so its after-hooks run last and see the outcome the retry policy and
        # the DB session decided.
        Metrics(
            session_factory=session_factory,
            queue_prefix=settings.queue_prefix,
            tenant_labels=settings.metrics_tenant_labels,
        ),
        # Interrupts a runaway actor; its timer covers everything below.
        TimeLimit(),
        # Interrupts an actor declared with notify_shutdown=True when its worker is told to
        # stop; the engine rolls the attempt back and records it as a failed one.
        JobShutdownNotifications(),
        # Consumes every queue of a worker over one connection and thread, not one
        # each (1,000 tenants are 2,000 queues); only replaces the worker's consumers
        # at boot, and does nothing on the stub broker.
        # Also holds each process's unacknowledged messages to TASKYARD_PREFETCH and runs the
        # tenants' jobs in fair shares (TASKYARD_TENANT_WEIGHTS), not first-in first-out.
        ConsumerMultiplexing(
            keep_queue=routing.still_served,
            tenant_of_queue=routing.tenant_of_queue,
            prefetch=settings.prefetch,
            tenant_weights=dict(settings.tenant_weights),
        ),
        # Keeps every message the worker nacks in the database (RabbitMQ's dead-letter
        # queue drops it after 7 days); early, so no later before_nack can skip it.
        dead_letters,
        # Writes this worker's `workers` row every few seconds (`taskyard workers`, `health`).
        Heartbeat(
            session_factory=session_factory,
            interval_seconds=settings.heartbeat_seconds,
            check_schema=lambda: check_schema(engine),
            host=settings.hostname,
        ),
        # Drops stale scheduler ticks before any session is opened for them.
        PeriodiqMiddleware(skip_delay=TICK_SKIP_DELAY_SECONDS),
        # Chooses the tenant's queue on send and the queues a worker serves.
        routing,
        # The engine: runs the actor, writes its record, records and acts on a failure.
        engine_middleware,
        # Its sweeper thread publishes what is due; its publisher, what was sent.
        outbox,
        # Sends a plain Dramatiq actor's callbacks and next stage, once the policy has decided.
        follow_ups,
        # What group.run() looks for (Dramatiq's GroupCallbacks); its after-hook does nothing.
        groups,
        # Last, so its after-hook runs first: acts on a failure the engine did not run.
        policy,
        # Dramatiq's result backend for producers: `message.get_result()` reads the job's
        # record (the engine keeps the result there); its hooks store nothing.
        TaskyardResults(backend=JobResults(engine), retention_days=settings.job_retention_days),
    )
    return Runtime(
        settings=settings,
        session_factory=session_factory,
        state=state,
        routing=routing,
        outbox=outbox,
        policy=policy,
        engine=engine_middleware,
        dead_letters=dead_letters,
        groups=groups,
        middleware=middleware,
    )


def build_middleware(
    settings: Settings, session_factory: sessionmaker[Session]
) -> list[Middleware]:
    """Every message's middleware, in execution order (after-hooks run in reverse)."""
    return list(build_runtime(settings, session_factory).middleware)


class TaskyardStubBroker(HookDispatch, StubBroker):
    """Dramatiq's in-process broker (`stub://`), reading results as Taskyard's broker does.

    Like Taskyard's RabbitMQ broker, it calls a middleware's hook only where the
    middleware defines it (transport/hooks.py)."""

    def get_results_backend(self) -> ResultBackend:
        """A `Results` backend added by hand, else the job records (`results_backend_of`)."""
        return results_backend_of(self)


def build_broker(settings: Settings) -> Broker:
    """A RabbitMQ broker with publisher confirms, or the in-process one for `stub://`."""
    runtime = build_runtime(settings, make_session_factory(make_engine(settings)))
    middleware = list(runtime.middleware)
    broker: Broker
    if settings.uses_stub_broker:
        broker = TaskyardStubBroker(middleware=middleware)
    else:
        rabbitmq = TaskyardRabbitmqBroker(
            url=settings.broker_url,
            queue_type=settings.queue_type,
            confirm_delivery=True,
            middleware=middleware,
            on_poison=runtime.dead_letters.record_poison,
        )
        # Every delivery is checked against the actor it names before it becomes a job,
        # and its callbacks and pipeline stages against the job's tenant.
        rabbitmq.route_check = lambda message: runtime.engine.refusal(rabbitmq, message)
        # A delay queue's eta is never further out than the outbox's threshold (and
        # clock skew between hosts); anything longer waits in the outbox.
        rabbitmq.max_eta_ahead_ms = max(
            DEFAULT_MAX_ETA_AHEAD_MS, int(settings.broker_delay_max_seconds * 1000) + 300_000
        )
        broker = rabbitmq
    runtime.attach(broker)
    return broker


settings = log_setup.load_settings_or_exit()
broker = build_broker(settings)
dramatiq.set_broker(broker)
