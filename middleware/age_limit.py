"""Drops a message older than its max_age before it runs: recorded `expired`, never run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import current_millis, q_name
from dramatiq.middleware import AgeLimit, SkipMessage
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_EXPIRED
from middleware.actor_options import check_actor_options
from middleware.db_session import KEPT_AS_DEAD_LETTER
from middleware.retry_policy import attempt_of
from services import jobs
from services.dead_letters import record_dead_letter

# The options this middleware reads (milliseconds since the message was sent, as Dramatiq's).
AGE_OPTIONS = ("max_age",)
# The dead letter's reason.
EXPIRED = "expired"
# Dramatiq's words for the skip: its Results middleware stores them as the message's failure.
SKIP_TEXT = "Message age limit exceeded"


class JobAgeLimit(AgeLimit):
    """Dramatiq's AgeLimit with Taskyard's records: an expired job is final and never runs.

    A subclass of Dramatiq's, so `broker.add_middleware(m, before=AgeLimit)`
    finds it; first in the stack, where Dramatiq's default stack has it.  The
    age counts from the send (`message_timestamp`), retries and delays
    included, as Dramatiq counts it.  The expired message is failed as
    Dramatiq fails it (nacked to RabbitMQ's dead-letter queue); its record
    and its dead letter are written here, in one transaction.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        tenant_of: Callable[[MessageProxy], int | None] = lambda message: None,
        max_age: int | None = None,
        clock: Callable[[], int] = current_millis,
    ) -> None:
        super().__init__(max_age=max_age)
        self.logger = logging.getLogger(type(self).__name__)
        self.session_factory = session_factory
        # The tenant a dead letter is credited to (DeadLetters.tenant_of).
        self.tenant_of = tenant_of
        self.clock = clock

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Refuse, at declaration, a max_age that is not a whole number of milliseconds in range."""
        check_actor_options(actor.actor_name, actor.options, AGE_OPTIONS)

    def max_age_of(self, broker: Broker, message: MessageProxy) -> int | None:
        """The message's max_age: its option, its actor's, or the default (None: no limit)."""
        if message.options.get("max_age"):
            return int(message.options["max_age"])
        actor = broker.actors.get(message.actor_name)
        found = actor.options.get("max_age") if actor is not None else None
        return int(found) if found else self.max_age

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Skip and fail a message older than its max_age, its record `expired` and kept."""
        max_age = self.max_age_of(broker, message)
        if not max_age:
            return
        age = self.clock() - message.message_timestamp
        if age < max_age:
            return
        extra = {"message_id": message.message_id, "actor": message.actor_name}
        error = f"expired: {age} ms after it was sent, over its max_age of {max_age} ms; not run"
        skip = SkipMessage(SKIP_TEXT)
        try:
            with self.session_factory.begin() as session:
                queue = q_name(message.queue_name)
                jobs.mark_not_run(
                    session,
                    message.message_id,
                    actor=message.actor_name,
                    queue=queue,
                    status=JOB_EXPIRED,
                    error=error,
                )
                record_dead_letter(
                    session,
                    message_id=message.message_id,
                    queue=queue,
                    reason=EXPIRED,
                    error=error,
                    traceback=None,
                    attempts=attempt_of(message) - 1,
                    actor=message.actor_name,
                    tenant_id=self.tenant_of(message),
                    message=message.asdict(),
                    replace=False,
                )
        except Exception:
            # DeadLetters.before_nack tries to keep it again; the record stays as it was.
            self.logger.error(
                "Could not record %s %s expired; not run", *extra.values(), exc_info=True
            )
        else:
            setattr(skip, KEPT_AS_DEAD_LETTER, message.message_id)
        self.logger.warning(
            "%s %s expired (%d ms after it was sent, max_age %d ms); not run",
            message.actor_name,
            message.message_id,
            age,
            max_age,
            extra=extra,
        )
        message.fail()
        raise skip
