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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from middleware.db_session import DbSession
    from middleware.dead_letters import DeadLetters
    from middleware.outbox import Outbox
    from middleware.retry_policy import RetryPolicy
    from middleware.tenant_routing import TenantRouting
    from middleware.worker_state import WorkerState
    from settings import Settings

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
    # Every middleware, in the order the broker runs their before-hooks.
    middleware: tuple[Middleware, ...]

    def attach(self, broker: Broker) -> None:
        """Make this the runtime of `broker` (the actor class finds it there)."""
        check_order(self.middleware)
        setattr(broker, _ATTRIBUTE, self)


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
