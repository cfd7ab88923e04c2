"""Builds Taskyard's broker from settings, with its middleware in one visible order."""

from __future__ import annotations

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware, TimeLimit
from periodiq import PeriodiqMiddleware
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import check_schema
from db.session import make_engine, make_session_factory
from middleware import DbSession, RetryPolicy, TenantRouting
from middleware.consumer import ConsumerMultiplexing
from middleware.dead_letters import DeadLetters
from middleware.frozen_heap import FrozenHeap
from middleware.heartbeat import Heartbeat
from middleware.metrics import Metrics
from middleware.outbox import Outbox
from middleware.rabbitmq import DEFAULT_MAX_ETA_AHEAD_MS, TaskyardRabbitmqBroker
from services.tenants import served_tenant_ids
from settings import Settings, load_settings

# periodiq drops a tick older than this; the scheduler catches up on missed
# slots itself, so a stale tick is safe to drop.
TICK_SKIP_DELAY_SECONDS = 30


def build_middleware(
    settings: Settings, session_factory: sessionmaker[Session]
) -> list[Middleware]:
    """Every message's middleware, in execution order (after-hooks run in reverse)."""

    def list_tenants() -> list[int]:
        with session_factory() as session:
            return served_tenant_ids(session)

    engine = session_factory.kw["bind"]
    routing = TenantRouting(
        queue_prefix=settings.queue_prefix,
        pinned=settings.tenants,
        refresh_seconds=settings.tenant_refresh_seconds,
        list_tenants=list_tenants,
    )
    return [
        # Freezes the booted process's objects out of the full GC passes that stop every
        # job; first, so its after_worker_boot runs last, once everything has booted.
        FrozenHeap(),
        # Prometheus metrics and one log line per job outcome; first of the message
        # hooks, so its after-hooks run last and see the outcome the retry policy and
        # the DB session decided.
        Metrics(
            session_factory=session_factory,
            queue_prefix=settings.queue_prefix,
            tenant_labels=settings.metrics_tenant_labels,
            log_format=settings.log_format,
        ),
        # Interrupts a runaway actor; its timer covers everything below.
        TimeLimit(),
        # Consumes every queue of a worker over one connection and thread, not one
        # each (1,000 tenants are 2,000 queues); only replaces the worker's consumers
        # at boot, and does nothing on the stub broker.
        ConsumerMultiplexing(),
        # Keeps every message the worker nacks in the database (RabbitMQ's dead-letter
        # queue drops it after 7 days); early, so no later before_nack can skip it.
        DeadLetters(session_factory=session_factory, tenant_of_queue=routing.tenant_of_queue),
        # Writes this worker's `workers` row every few seconds (`taskyard workers`, `health`).
        Heartbeat(session_factory=session_factory, interval_seconds=settings.heartbeat_seconds),
        # Drops stale scheduler ticks before any session is opened for them.
        PeriodiqMiddleware(skip_delay=TICK_SKIP_DELAY_SECONDS),
        # Chooses the tenant's queue on send and the queues a worker serves.
        routing,
        # Runs the actor in one transaction with its job record; needs the
        # routing above to check the tenant, and the policy below to record
        # whether a failure will be retried.
        DbSession(session_factory=session_factory, check_schema=lambda: check_schema(engine)),
        # Records every send as a queued job; writes a transaction's sends to the outbox
        # (published after the commit) and parks long delays there; its sweeper thread
        # publishes what is due.  No message hooks: DbSession and RetryPolicy call it.
        Outbox(
            session_factory=session_factory, delay_max_seconds=settings.broker_delay_max_seconds
        ),
        # Last, so its after-hook runs first: re-enqueues a retry or fails the message.
        RetryPolicy(
            max_attempts=settings.max_attempts,
            min_backoff_ms=settings.min_backoff_ms,
            max_backoff_ms=settings.max_backoff_ms,
        ),
    ]


def build_broker(settings: Settings) -> Broker:
    """A RabbitMQ broker with publisher confirms, or the in-process one for `stub://`."""
    session_factory = make_session_factory(make_engine(settings))
    middleware = build_middleware(settings, session_factory)
    broker: Broker
    if settings.uses_stub_broker:
        broker = StubBroker(middleware=middleware)
    else:
        dead_letters = next(m for m in middleware if isinstance(m, DeadLetters))
        routing = next(m for m in middleware if isinstance(m, TenantRouting))
        rabbitmq = TaskyardRabbitmqBroker(
            url=settings.broker_url,
            confirm_delivery=True,
            middleware=middleware,
            on_poison=dead_letters.record_poison,
        )
        # Every delivery is checked against the actor it names before it becomes a job.
        rabbitmq.route_check = lambda message: routing.refusal(
            rabbitmq.actors.get(message.actor_name), message
        )
        # A delay queue's eta is never further out than the outbox's threshold (and
        # clock skew between hosts); anything longer waits in the outbox.
        rabbitmq.max_eta_ahead_ms = max(
            DEFAULT_MAX_ETA_AHEAD_MS, int(settings.broker_delay_max_seconds * 1000) + 300_000
        )
        broker = rabbitmq
    return broker


settings = load_settings()
broker = build_broker(settings)
dramatiq.set_broker(broker)
