"""Plain `@dramatiq.actor` actors on Taskyard's broker: run by the engine, like Taskyard's own.

Code coming from Dramatiq declares its actors with `@dramatiq.actor`.  On
Taskyard's broker such an actor is adopted when it is declared: a worker
runs each of its messages through the engine (`DbSession.run`), so it gets
what every job gets: its job record from send to final state, the DB session
(`current_session()`) in one transaction committed with the record, sends
held until that commit, the retry policy and dead letters; and its messages
get Taskyard's time-ordered ids (`services.message_ids`).  Its `send()`
goes through the outbox (`middleware.runtime.recorded_enqueue`).  It keeps
Dramatiq's calling convention (positional arguments, no schema) and runs for
no tenant: its callbacks and pipeline stages stay among plain actors.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from dramatiq import Actor, Message

from middleware.actor_options import is_taskyard
from middleware.results import added_results
from services.message_ids import new_message_id

if TYPE_CHECKING:
    from middleware.db_session import DbSession

# Set on the function that runs an adopted actor's messages through the engine.
_ADOPTED = "taskyard_adopted"


def is_adopted(actor: Actor[Any, Any]) -> bool:
    """Whether a plain actor's messages run through the engine (it was declared on Taskyard's)."""
    return bool(getattr(actor.fn, _ADOPTED, False))


def prefix_queue(actor: Actor[Any, Any], queue_prefix: str) -> None:
    """Put a plain actor's queue under `TASKYARD_QUEUE_PREFIX`, as every Taskyard queue is.

    Before the broker declares it: two deployments (or test runs) that share
    a RabbitMQ vhost under different prefixes never consume each other's
    `default` queue.
    """
    if queue_prefix and not is_taskyard(actor) and not actor.queue_name.startswith(queue_prefix):
        actor.queue_name = f"{queue_prefix}{actor.queue_name}"


def adopt(actor: Actor[Any, Any], engine: DbSession) -> None:
    """Run a plain actor's messages through `engine`; Taskyard's actors already are.

    The actor's function is wrapped, not its class: a custom `actor_class`
    keeps its own behaviour.  Called directly (not by a worker for one of its
    messages) the actor runs its function as it is.
    """
    if is_taskyard(actor) or is_adopted(actor):
        return
    fn = actor.fn

    @functools.wraps(fn)
    def run_as_job(*args: Any, **kwargs: Any) -> Any:
        message = engine.incoming()
        if message is None or message.actor_name != actor.actor_name:
            return fn(*args, **kwargs)
        returned = engine.run(actor.broker, message, lambda: fn(*args, **kwargs))
        # As a Taskyard actor's: the result is on the record, which Taskyard's backend
        # reads; Dramatiq's worker gets it only for a Results middleware added by hand.
        return returned if added_results(actor.broker) is not None else None

    setattr(run_as_job, _ADOPTED, True)
    actor.fn = run_as_job
    build = actor.message_with_options

    @functools.wraps(build)
    def message_with_options(*args: Any, **kwargs: Any) -> Message[Any]:
        message = build(*args, **kwargs)
        # Its id carries its send time: its record's partition (services.message_ids).
        return message.copy(message_id=new_message_id(message.message_timestamp))

    actor.message_with_options = message_with_options  # type: ignore[method-assign]
