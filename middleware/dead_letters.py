"""Every dead-lettered message kept in the database: nacked messages and refused bodies alike."""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name, xq_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware
from sqlalchemy.orm import Session, sessionmaker

from middleware.db_session import KEPT_AS_DEAD_LETTER
from middleware.retry_policy import attempt_of
from services.dead_letters import record_dead_letter
from services.errors import describe_error, valid_tenant_id

# Refusals whose message is kept whole, so it can be requeued once a worker knows its
# actor (a deploy in progress).  Any other refused body is kept as evidence only: a
# body on the wrong queue or naming another tenant is not work to hand back to anyone.
REQUEUEABLE_REFUSALS = frozenset({"unknown_actor"})

# A refused body up to this size is read (as JSON only) for its id, actor and tenant.
MAX_PEEK_BYTES = 1024 * 1024


def _peek(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_PEEK_BYTES:
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


class DeadLetters(Middleware):
    """Keeps every message the worker nacks, and every body its consumer refuses, as a dead letter.

    The DB session middleware records a failed job's dead letter itself, with
    its traceback, in the failure's transaction; this keeps the rest (an unknown
    actor, a failure outside the actor's transaction, a body that cannot be
    decoded), because RabbitMQ's dead-letter queues drop messages after 7 days.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        tenant_of_queue: Callable[[str], int | None] = lambda queue_name: None,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.session_factory = session_factory
        self.tenant_of_queue = tenant_of_queue

    def tenant_of(self, message: MessageProxy) -> int | None:
        """The tenant a nacked message is credited to: the one it names, if on that one's queue.

        A message that names one tenant on another's queue (or on the system
        queue) is nobody's: crediting the named tenant would let traffic on one
        queue write into another tenant's dead-letter list.
        """
        named = message.kwargs.get("tenant_id")
        on_queue = self.tenant_of_queue(message.queue_name)
        return named if valid_tenant_id(named) and named == on_queue else None

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Keep a nacked message that has no dead letter yet; never stops the nack."""
        exc: BaseException | None = getattr(message, "_exception", None)
        if exc is not None and getattr(exc, KEPT_AS_DEAD_LETTER, None) is not None:
            return  # kept by the engine with the failure, under the id it chose
        unknown_actor = isinstance(exc, ActorNotFound)
        reason = "unknown_actor" if unknown_actor else "failed"
        tenant_id = self.tenant_of(message)
        extra = {"message_id": message.message_id, "actor": message.actor_name}
        try:
            with self.session_factory.begin() as session:
                kept = record_dead_letter(
                    session,
                    message_id=message.message_id,
                    queue=q_name(message.queue_name),
                    reason=reason,
                    error=describe_error(exc) if exc else "failed without an exception",
                    traceback="".join(traceback.format_exception(exc)) if exc else None,
                    # An unknown actor was never run this time.
                    attempts=attempt_of(message) - (1 if unknown_actor else 0),
                    actor=message.actor_name,
                    tenant_id=tenant_id,
                    message=message.asdict(),
                    replace=False,
                )
        except Exception:
            self.logger.error(
                "Could not keep %s %s as a dead letter; it goes only to RabbitMQ's %s, "
                "which drops it after 7 days",
                message.actor_name,
                message.message_id,
                xq_name(message.queue_name),
                exc_info=True,
                extra=extra | {"tenant_id": tenant_id},
            )
            return
        if kept:
            self.logger.info(
                "%s %s kept as a dead letter (%s)",
                message.actor_name,
                message.message_id,
                reason,
                extra=extra | {"tenant_id": tenant_id},
            )

    def record_poison(self, queue: str, body: bytes, reason: str, error: str) -> None:
        """Keep a body the consumer refused (for the broker's `on_poison`); never raises.

        Credited to no tenant and kept under a new id, whatever the body claims.
        """
        peeked = _peek(body)
        claimed = peeked.get("message_id")
        actor = peeked.get("actor_name")
        fields: dict[str, Any] = {
            "queue": queue,
            "reason": reason,
            "traceback": None,
            "attempts": 0,
            "actor": actor if isinstance(actor, str) else None,
            # A refused body is credited to no tenant, whatever it claims: it was not
            # routed by Taskyard, so nothing says which tenant (if any) sent it.
            "tenant_id": None,
            "raw_body": body,
            # Only a body the consumer decoded and found well formed (its queue, its
            # fields) can be requeued; it goes back to the queue it arrived on.
            "message": peeked if reason in REQUEUEABLE_REFUSALS else None,
        }
        # Kept under an id of its own: the id a refused body claims is untrusted, and
        # using it would let a crafted body squat another job's dead letter.
        message_id = str(uuid.uuid4())
        if isinstance(claimed, str) and claimed:
            error = f"{error} (the body claims message id {claimed[:64]!r})"
        try:
            with self.session_factory.begin() as session:
                record_dead_letter(session, message_id=message_id, error=error, **fields)
        except Exception:
            self.logger.error(
                "Could not keep a refused message (%s) from %s; it goes only to RabbitMQ's %s, "
                "which drops it after 7 days",
                reason,
                queue,
                xq_name(queue),
                exc_info=True,
            )
            return
        self.logger.warning(
            "Refused a message on %s (%s: %s); kept as dead letter %s",
            queue,
            reason,
            error[:200],
            message_id,
            extra={"message_id": message_id, "tenant_id": fields["tenant_id"]},
        )
