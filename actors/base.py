"""The project's actor class: keyword arguments, tenant routing, held sends, one transaction."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast

import dramatiq
import marshmallow
import sqlalchemy.exc
from dramatiq import Message

from middleware import scheduler_probe
from middleware.actor_options import check_message_options
from middleware.age_limit import AGE_OPTIONS
from middleware.context import current_context, current_message, current_session
from middleware.outbox import Outbox
from middleware.results import added_results
from middleware.retry_policy import RETRY_OPTIONS
from middleware.runtime import runtime_of
from services.errors import InvalidArguments, SendFailed, valid_tenant_id
from services.job_control import is_cancel_requested
from services.message_ids import new_message_id
from settings import tenant_queue_name

logger = logging.getLogger(__name__)

__all__ = ["InvalidArguments", "TaskyardActor", "cancel_requested", "taskyard_actor"]

# The option periodiq's scheduler sets on every tick it sends.
PERIODIQ_OPTION = "scheduled_at"
# Message options checked when a message is built, as the consumer checks them on arrival.
CHECKED_AT_SEND = (*RETRY_OPTIONS, *AGE_OPTIONS, "notify_shutdown")


class TaskyardActor(dramatiq.Actor[Any, Any]):
    """A Dramatiq actor that routes by tenant, checks its arguments, runs in one transaction."""

    def message_with_options(
        self, *, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Message[Any]:
        """Build a message, on the tenant's queue when the actor is tenant-scoped.

        Raises `InvalidArguments` for arguments the actor does not take, and
        `OptionRefused` for a retry or age option no message may carry.
        """
        if args:
            raise InvalidArguments(
                f"{self.actor_name} takes keyword arguments only (got {len(args)} positional)"
            )
        kwargs = dict(kwargs or {})
        self.check_arguments(kwargs)
        check_message_options(self.actor_name, options, CHECKED_AT_SEND)
        # Its id carries its send time: its record's partition (services.message_ids).
        message = super().message_with_options(kwargs=kwargs, **options)
        message = message.copy(message_id=new_message_id(message.message_timestamp))
        if not self.options.get("tenant_scoped"):
            return message
        tenant_id = kwargs["tenant_id"]
        runtime = runtime_of(self.broker)
        queue = (
            runtime.routing.queue_for(tenant_id) if runtime else tenant_queue_name("", tenant_id)
        )
        return message.copy(queue_name=queue)

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: timedelta | int | None = None,
        **options: Any,
    ) -> Message[Any]:
        """Record the job as queued and publish it; in a transaction, once that commits.

        Raises `UnknownTenant` (and records the job dead) for a tenant that does
        not exist.  A delay over the outbox's threshold waits in the database.
        """
        if isinstance(delay, timedelta):
            delay = int(delay.total_seconds() * 1000)
        message = self.message_with_options(args=args, kwargs=kwargs, **options)
        outbox = self._outbox()
        if outbox is None:  # a broker built without Taskyard's runtime: plain Dramatiq
            return self.broker.enqueue(message, delay=delay)
        if (
            current_context() is None
            and PERIODIQ_OPTION in options
            and self.options.get("periodic")
        ):
            self._send_tick(message, delay)
        else:
            outbox.submit(self.broker, message, delay)
        return message

    def _send_tick(self, message: Message[Any], delay: int | None) -> None:
        """Send periodiq's tick; one that cannot be sent is logged and dropped, never raised.

        periodiq exits on any exception from a send, so a RabbitMQ outage at the
        top of a minute would stop all scheduling for good; the next tick
        catches up on the slots this one missed.
        """
        outbox = self._outbox()
        assert outbox is not None
        try:
            outbox.send(self.broker, message, delay)
        except Exception as exc:
            scheduler_probe.PROBE.note_send(f"{type(exc).__name__}: {exc}"[:300])
            logger.error(
                "Could not send the %s tick scheduled at %s (%s: %s); the next tick catches up",
                self.actor_name,
                message.options[PERIODIQ_OPTION],
                type(exc).__name__,
                exc,
                extra={"message_id": message.message_id, "actor": self.actor_name},
            )
        else:
            scheduler_probe.PROBE.note_send()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the actor: in the message's transaction when a worker runs it."""
        runtime = runtime_of(self.broker)
        db = runtime.engine if runtime is not None else None
        message = db.incoming() if db is not None else None
        if db is None or message is None or message.actor_name != self.actor_name:
            return self.fn(*args, **self._validated(kwargs))
        returned = db.run(self.broker, message, lambda: self.fn(*args, **self._validated(kwargs)))
        # The result is on the job record, which Taskyard's result backend reads; Dramatiq's
        # worker gets it only for a Results middleware added by hand, which stores it itself.
        return returned if added_results(self.broker) is not None else None

    def _outbox(self) -> Outbox | None:
        runtime = runtime_of(self.broker)
        return runtime.outbox if runtime is not None else None

    def check_arguments(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments as the actor takes them, or `InvalidArguments` saying what is wrong.

        The one check of an actor's arguments: `send()` runs it before anything
        is recorded or published, and the worker runs it again on what arrives,
        before the actor's code, with the same schema and the same strictness
        (an argument the schema does not know is refused on both sides).
        """
        if self.options.get("tenant_scoped") and not valid_tenant_id(kwargs.get("tenant_id")):
            raise InvalidArguments(
                f"{self.actor_name} needs tenant_id, a positive integer "
                f"(got {kwargs.get('tenant_id')!r})"
            )
        schema: type[marshmallow.Schema] | None = self.options.get("schema")
        if schema is None:
            try:
                _signature(self.fn).bind(**kwargs)
            except TypeError as exc:
                raise InvalidArguments(f"{self.actor_name}: invalid arguments: {exc}") from None
            return kwargs
        try:
            loaded: dict[str, Any] = _schema(schema).load(kwargs)
        except marshmallow.ValidationError as exc:
            raise InvalidArguments(
                f"{self.actor_name}: invalid arguments: {exc.messages}"
            ) from None
        return loaded

    def _validated(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return self.check_arguments(kwargs)

    def send_many(
        self, kwargs_list: Sequence[dict[str, Any]], *, delay: timedelta | int | None = None
    ) -> list[Message[Any]]:
        """Send many messages in one call: one transaction for their records, one publish burst.

        Every message is checked first (`InvalidArguments` names the first bad
        one by its index, and nothing is sent); then the records and outbox rows
        are written in one commit and the messages published with pipelined
        confirms.  Inside a Taskyard transaction they are held like any send.
        """
        messages = []
        for index, kwargs in enumerate(kwargs_list):
            try:
                messages.append(self.message_with_options(kwargs=kwargs))
            except InvalidArguments as exc:
                raise InvalidArguments(f"message {index}: {exc}") from None
        if isinstance(delay, timedelta):
            delay = int(delay.total_seconds() * 1000)
        outbox = self._outbox()
        if outbox is None:
            return [self.broker.enqueue(message, delay=delay) for message in messages]
        ctx = current_context()
        if ctx is not None and ctx.holding:
            return [self._send_message(message, delay) for message in messages]
        # Imported here: actors.transaction imports this module.
        from actors.transaction import taskyard_transaction

        try:
            with taskyard_transaction(self.broker):
                return [self._send_message(message, delay) for message in messages]
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            # As send(): no PostgreSQL, no send (nothing was published).
            first = messages[0].message_id if messages else "(none)"
            raise SendFailed(self.actor_name, first, exc, more=len(messages) - 1) from exc

    def _send_message(self, message: Message[Any], delay: int | None) -> Message[Any]:
        ctx, outbox = current_context(), self._outbox()
        if ctx is None or outbox is None:
            raise RuntimeError("_send_message needs a Taskyard transaction")
        outbox.hold(self.broker, ctx, message, delay)
        return message


# Schema instances are stateless once built and safe to share between threads;
# building one per message cost a tenth of a millisecond.
@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


@functools.cache
def _schema(schema: type[marshmallow.Schema]) -> marshmallow.Schema:
    return schema(unknown=marshmallow.RAISE)


def taskyard_actor(
    *,
    name: str,
    tenant_scoped: bool = True,
    broker: dramatiq.Broker | None = None,
    **options: Any,
) -> Callable[[Callable[..., Any]], TaskyardActor]:
    """Declare a Taskyard actor (on the global broker unless told); tenant-scoped ones route."""
    broker = broker or dramatiq.get_broker()
    runtime = runtime_of(broker)
    system_queue = runtime.routing.system_queue if runtime else "taskyard.system"
    decorator = dramatiq.actor(
        actor_name=name,
        actor_class=TaskyardActor,
        broker=broker,
        queue_name=system_queue,
        tenant_scoped=tenant_scoped,
        **options,
    )
    return cast(Callable[[Callable[..., Any]], TaskyardActor], decorator)


def cancel_requested() -> bool:
    """Whether cancelling the running job was asked for; a long actor may check and stop.

    Reads through the actor's own session: PostgreSQL's READ COMMITTED takes a
    fresh snapshot per statement, so a request committed meanwhile is seen and
    no second connection is needed.
    """
    return is_cancel_requested(current_session(), current_message().message_id)
