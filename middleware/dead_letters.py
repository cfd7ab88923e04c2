"""Every dead-lettered message kept in the database: nacked messages and refused bodies alike."""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name, xq_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware
from sqlalchemy.orm import Session, sessionmaker

from middleware.db_session import describe_error
from middleware.retry_policy import attempt_of
from services.dead_letters import record_dead_letter

# A refused body up to this size is read (as JSON only) for its id, actor and tenant.
MAX_PEEK_BYTES = 1024 * 1024


def _tenant_id(kwargs: Any) -> int | None:
    value = kwargs.get("tenant_id") if isinstance(kwargs, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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

    def __init__(self, *, session_factory: sessionmaker[Session]) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.session_factory = session_factory

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Keep a nacked message that has no dead letter yet; never stops the nack."""
        exc: BaseException | None = getattr(message, "_exception", None)
        unknown_actor = isinstance(exc, ActorNotFound)
        reason = "unknown_actor" if unknown_actor else "failed"
        tenant_id = _tenant_id(message.kwargs)
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
        """Keep a body the consumer refused (for the broker's `on_poison`); never raises."""
        peeked = _peek(body)
        claimed = peeked.get("message_id")
        actor = peeked.get("actor_name")
        fields: dict[str, Any] = {
            "queue": queue,
            "reason": reason,
            "traceback": None,
            "attempts": 0,
            "actor": actor if isinstance(actor, str) else None,
            "tenant_id": _tenant_id(peeked.get("kwargs")),
            "raw_body": body,
        }
        usable = isinstance(claimed, str) and 0 < len(claimed) <= 64 and claimed.isprintable()
        message_id = claimed if usable else None
        try:
            with self.session_factory.begin() as session:
                kept = message_id is not None and record_dead_letter(
                    session, message_id=message_id, error=error, replace=False, **fields
                )
                if not kept:
                    if message_id is not None:
                        error = f"{error} (its message id {message_id!r} was already taken)"
                    message_id = str(uuid.uuid4())
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
