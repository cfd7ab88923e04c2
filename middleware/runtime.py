"""Taskyard's engine as one object: built once per broker, called by the actors and middleware.

`brokers.build_runtime` builds it (settings, the database engine and its
sessions, the worker's state, tenant routing, the outbox and its publisher,
the retry policy, the engine that runs a job and writes its record, dead
letters) and wires each part to the parts it uses when it is built: no
middleware looks another up at runtime.  The broker carries it
(`runtime_of(broker)`), which is how the actor class reaches it.

The middleware's order is stated here as constraints (`ORDER`), and checked
when the broker is built (`check_order`): a list that breaks one refuses to
build, naming the rule and why it holds.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dramatiq import Message
from dramatiq.broker import Broker
from dramatiq.middleware import GroupCallbacks, Middleware
from dramatiq.worker import ConsumerThread
from sqlalchemy.orm import Session, sessionmaker

from transport.rabbitmq import PUBLISH_ATTRIBUTE, publish_now

if TYPE_CHECKING:
    from middleware.db_session import DbSession
    from middleware.dead_letters import DeadLetters
    from middleware.groups import GroupCompletion
    from middleware.outbox import Outbox
    from middleware.retry_policy import RetryPolicy
    from middleware.tenant_routing import TenantRouting
    from middleware.worker_state import WorkerState
    from settings import Settings

logger = logging.getLogger("Runtime")

# Where the broker keeps its runtime.
_ATTRIBUTE = "taskyard_runtime"


@dataclass(frozen=True)
class Runtime:
    """Everything a Taskyard message meets, built once and wired together."""

    settings: Settings
    session_factory: sessionmaker[Session]
    state: WorkerState
    routing: TenantRouting
    outbox: Outbox
    policy: RetryPolicy
    engine: DbSession
    dead_letters: DeadLetters
    groups: GroupCompletion
    # Every middleware, in the order the broker runs their before-hooks.
    middleware: tuple[Middleware, ...]

    def attach(self, broker: Broker) -> None:
        """Make this the runtime of `broker` (the actor class finds it there)."""
        check_order(self.middleware)
        setattr(broker, _ATTRIBUTE, self)
        # Dramatiq's public send goes through the outbox here (`recorded_enqueue`);
        # what has its record already is published with the broker's own (`publish_now`).
        setattr(broker, PUBLISH_ATTRIBUTE, broker.enqueue)
        broker.enqueue = functools.partial(recorded_enqueue, broker)  # type: ignore[method-assign]
        _keep_own_group_callbacks(broker)

    def send(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Send `message` as `actor.send()` does: refused at once, or recorded and published.

        Raises `RouteRefused` for a message that would be refused where it is
        going (the consumer's check, made at send), and whatever the outbox's
        `submit` raises (`UnknownTenant`, `SendFailed`, `PriorityRefused`, ...).
        """
        # Imported here: tenant_routing imports what imports this module.
        from middleware.tenant_routing import RouteRefused

        refused = self.engine.refusal(broker, message)
        if refused is not None:
            raise RouteRefused(refused)
        self.outbox.submit(broker, message, delay)


def recorded_enqueue(
    broker: Broker, message: Message[Any], *, delay: int | float | None = None
) -> Message[Any]:
    """`broker.enqueue` on a broker with Taskyard's runtime: the job's record, then the publish.

    Dramatiq's own sends call `broker.enqueue`: a plain actor's `send()`,
    `pipeline.run()` (its first stage), `group.run()` (its members), Dramatiq
    middleware added by the user.  Each becomes a job as `actor.send()` makes
    one: its queued record and outbox row commit together (or are held for
    the transaction open on this thread), then it is published.

    Published as it is, with no record written: a message for an actor this
    process does not declare (only the worker that runs it knows its actor;
    its record is written there), and any enqueue from a worker's consumer
    thread, which runs no actor's code: that is Dramatiq's worker moving a
    due delayed message (a delayed send, a retry) to its queue, whose record
    exists already.
    """
    runtime = runtime_of(broker)
    if (
        runtime is None
        or message.actor_name not in broker.actors
        or isinstance(threading.current_thread(), ConsumerThread)
    ):
        return publish_now(broker, message, delay=None if delay is None else int(delay))
    runtime.send(broker, message, None if delay is None else int(delay))
    return message


def _keep_own_group_callbacks(broker: Broker) -> None:
    """Make `broker.add_middleware` ignore any GroupCallbacks but Taskyard's, with an INFO line.

    Taskyard tracks groups in PostgreSQL; a second GroupCallbacks (Dramatiq's,
    with a Redis backend) would count the members again and could send the
    callbacks a second time, or first, if placed before Taskyard's.
    """
    add = broker.add_middleware

    def add_middleware(
        middleware: Middleware, *, before: type | None = None, after: type | None = None
    ) -> None:
        if isinstance(middleware, GroupCallbacks) and not getattr(
            middleware, "taskyard_groups", False
        ):
            logger.info(
                "%s not added: Taskyard tracks groups and their completion callbacks in "
                "PostgreSQL itself",
                type(middleware).__name__,
            )
            return
        add(middleware, before=before, after=after)

    # An attribute of this broker only: its class and other brokers are left alone.
    setattr(broker, "add_middleware", add_middleware)  # noqa: B010


def runtime_of(broker: Broker) -> Runtime | None:
    """The runtime a broker was built with; None for a broker built without Taskyard's."""
    found: Runtime | None = getattr(broker, _ATTRIBUTE, None)
    return found


@dataclass(frozen=True)
class Rule:
    """Middleware `first` runs its before-hooks before `then` (after-hooks: the reverse)."""

    first: str
    then: str
    why: str


# Middleware named by class name: the order constraints of Taskyard's stack.
ORDER = (
    Rule("JobAgeLimit", "DbSession", "an expired message is recorded and never reaches the engine"),
    Rule(
        "JobAgeLimit",
        "FrozenHeap",
        "first, as Dramatiq's AgeLimit is: add_middleware(before=/after=AgeLimit) places as there",
    ),
    Rule("FrozenHeap", "Metrics", "its after_worker_boot freezes the heap once all have booted"),
    Rule(
        "Metrics",
        "DbSession",
        "its after-hooks run last and count the outcome the engine and policy decided",
    ),
    Rule("TimeLimit", "DbSession", "its timer covers the job's whole run, record included"),
    Rule(
        "JobShutdownNotifications",
        "DbSession",
        "an interrupted attempt is rolled back and recorded by the engine",
    ),
    Rule(
        "ConsumerMultiplexing",
        "TenantRouting",
        "the consumer is replaced before routing declares the tenants' queues",
    ),
    Rule("DeadLetters", "RetryPolicy", "no later before_nack may skip keeping a nacked message"),
    Rule("Heartbeat", "DbSession", "a job shows as running for its whole run"),
    Rule("PeriodiqMiddleware", "DbSession", "a stale tick is dropped before the engine runs it"),
    Rule("TenantRouting", "DbSession", "the worker serves its queues before jobs run"),
    Rule("DbSession", "RetryPolicy", "the policy's after-hook sees what the engine decided"),
    Rule(
        "FollowUps",
        "RetryPolicy",
        "a plain actor's on_failure waits for the policy to give up (its after-hook runs first)",
    ),
)


def check_order(middleware: tuple[Middleware, ...] | list[Middleware]) -> None:
    """Raise ValueError when `middleware` breaks one of `ORDER`'s rules."""
    position: dict[str, int] = {}
    for index, item in enumerate(middleware):
        position.setdefault(type(item).__name__, index)
    for rule in ORDER:
        first, then = position.get(rule.first), position.get(rule.then)
        if first is not None and then is not None and first > then:
            raise ValueError(f"middleware {rule.first} must come before {rule.then}: {rule.why}")
