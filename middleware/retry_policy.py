"""Which failures are retried, when, and how a message that gives up is dead-lettered."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import marshmallow
import requests
import sqlalchemy.exc
from dramatiq import Message
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from middleware.outbox import Outbox
from services.errors import PermanentError, TransientError

# Set on a message whose failure the policy has acted on (re-enqueued or failed).
ACTED = "taskyard_failure_acted_on"
# SQLSTATEs worth another attempt: serialization failure and deadlock.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

# One table, in order: the first matching row decides.  Anything that matches
# no row is treated as transient (an unforeseen bug gets its few attempts).
PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentError,
    marshmallow.ValidationError,
    TypeError,
)
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    requests.ConnectionError,
    requests.Timeout,
    ConnectionError,
    TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    dramatiq.Retry,
)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a failed attempt: retry after `delay_ms`, or give up with `reason`."""

    retry: bool
    delay_ms: int
    reason: str


def outcome_of(decision: Decision, attempt: int) -> str:
    """What became of a failed attempt, for its error text: the one place that says so.

    Errors say what happened, never what happens next: a transient error's
    text would otherwise promise a retry on the attempt that gave up.
    """
    if decision.retry:
        return f"[attempt {attempt} failed; retrying in {decision.delay_ms / 1000:.1f} s]"
    if decision.reason == "max_attempts_exceeded":
        return f"[attempt {attempt} was the last; gave up: max_attempts_exceeded]"
    return ""


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    return getattr(orig, "pgcode", None)


def reason_of(exc: BaseException) -> str:
    """A short, stable name for why a message gave up."""
    if isinstance(exc, PermanentError):
        return exc.reason
    if isinstance(exc, marshmallow.ValidationError):
        return "invalid_input"
    if isinstance(exc, TypeError):
        return "invalid_arguments"
    return "max_attempts_exceeded"


def decide(
    exc: BaseException,
    attempt: int,
    *,
    max_attempts: int,
    min_backoff_ms: int,
    max_backoff_ms: int,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry or give up after `attempt` (1-based) failed with `exc`: backoff with full jitter."""
    permanent = isinstance(exc, PERMANENT_TYPES) and _sqlstate(exc) not in RETRYABLE_SQLSTATES
    if permanent:
        return Decision(retry=False, delay_ms=0, reason=reason_of(exc))
    if attempt >= max_attempts:
        return Decision(retry=False, delay_ms=0, reason="max_attempts_exceeded")
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, dramatiq.Retry) and exc.delay is not None:
        retry_after = exc.delay / 1000
    if isinstance(retry_after, int | float) and retry_after >= 0:
        return Decision(retry=True, delay_ms=int(retry_after * 1000), reason="retry_after")
    ceiling = min(max_backoff_ms, min_backoff_ms * 2 ** (attempt - 1))
    return Decision(retry=True, delay_ms=int(rand() * ceiling), reason="backoff")


class RetryPolicy(Middleware):
    """Retries transient failures with backoff; dead-letters permanent ones and the last attempt.

    The engine (`DbSession`) asks for the decision, records it, and has it
    carried out (`act`) in the same place; the after-hook acts only for a
    message the engine did not run.
    """

    # `throws` is read by Dramatiq's worker only to choose its log level; we log ourselves.
    actor_options = {"max_attempts", "min_backoff", "max_backoff", "throws"}

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        min_backoff_ms: int = 1_000,
        max_backoff_ms: int = 300_000,
        outbox: Outbox | None = None,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.max_attempts = max_attempts
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        # Where a long backoff waits, and a retry RabbitMQ refused.
        self.outbox = outbox

    def _option(
        self, broker: Broker, message: Message[Any] | MessageProxy, name: str, default: int
    ) -> int:
        if name in message.options:
            return int(message.options[name])
        actor = broker.get_actor(message.actor_name)
        return int(actor.options.get(name, default))

    def decide(
        self, broker: Broker, message: Message[Any] | MessageProxy, exc: BaseException
    ) -> Decision:
        """Decide about a failed attempt of `message` (nothing is done yet: see `act`)."""
        return decide(
            exc,
            attempt_of(message),
            max_attempts=self._option(broker, message, "max_attempts", self.max_attempts),
            min_backoff_ms=self._option(broker, message, "min_backoff", self.min_backoff_ms),
            max_backoff_ms=self._option(broker, message, "max_backoff", self.max_backoff_ms),
        )

    def attempts_allowed(self, broker: Broker, message: Message[Any] | MessageProxy) -> int:
        """How many times `message`'s actor may run: its option, its actor's, or the default."""
        return self._option(broker, message, "max_attempts", self.max_attempts)

    def unrecorded(
        self,
        broker: Broker,
        message: Message[Any] | MessageProxy,
        *,
        rand: Callable[[], float] = random.random,
    ) -> Decision:
        """Decide about a failure that could not be recorded (the database is away): retry.

        The backoff grows with every such delivery, as any retry's does; the
        message carries its attempt count on, so once its attempts are spent it
        comes back only to be recorded dead, never to run its actor again.
        """
        attempt = attempt_of(message)
        min_backoff = self._option(broker, message, "min_backoff", self.min_backoff_ms)
        max_backoff = self._option(broker, message, "max_backoff", self.max_backoff_ms)
        ceiling = min(max_backoff, min_backoff * 2 ** min(attempt - 1, 40))
        # Half to all of the ceiling: a wait that grows even with the jitter.
        return Decision(True, int(ceiling * (1 + rand()) / 2), "record_failed")

    def _keep_unsent_retry(
        self,
        broker: Broker,
        message: MessageProxy,
        retried: Message[Any],
        delay: int | None,
        error: Exception,
    ) -> None:
        """Park a retry that could not be published in the outbox; failing that, nack it."""
        outbox = self.outbox
        if outbox is not None and outbox.park(broker, retried, delay):
            self.logger.warning(
                "Could not publish the retry of %s %s (%s); it waits in the outbox",
                message.actor_name,
                message.message_id,
                error,
            )
            return
        self.logger.error(
            "Could not publish or park the retry of %s %s (%s); nacked, not acknowledged",
            message.actor_name,
            message.message_id,
            error,
        )
        message.fail()

    def act(
        self, broker: Broker, message: MessageProxy, exception: BaseException, decision: Decision
    ) -> None:
        """Carry a decision out: re-enqueue the retry with its delay, or fail the message.

        The engine calls this once it has recorded the failure, so the decision
        is made and acted on in one place; a failed message is nacked by the
        worker, and RabbitMQ dead-letters it.
        """
        setattr(message, ACTED, True)
        extra = {"message_id": message.message_id, "actor": message.actor_name}
        attempt = attempt_of(message)
        if decision.retry:
            self.logger.warning(
                "%s %s attempt %d failed (%s: %s); retrying in %.1fs",
                message.actor_name,
                message.message_id,
                attempt,
                type(exception).__name__,
                exception,
                decision.delay_ms / 1000,
                extra=extra,
            )
            retried = message.copy(options={"retries": attempt})
            outbox = self.outbox
            delay = decision.delay_ms or None
            try:
                if outbox is not None:  # a long backoff waits in the outbox, not in worker memory
                    outbox.retry(broker, retried, delay)
                else:
                    broker.enqueue(retried, delay=delay)
            except Exception as exc:
                # RabbitMQ refused or could not take the retry (an outage, a memory
                # alarm): acknowledging the message now would lose the job.
                self._keep_unsent_retry(broker, message, retried, delay, exc)
            return
        self.logger.error(
            "%s %s gave up after attempt %d (%s)",
            message.actor_name,
            message.message_id,
            attempt,
            decision.reason,
            exc_info=exception,
            extra=extra,
        )
        message.fail()  # a MessageProxy: the worker nacks it, RabbitMQ dead-letters it

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Act on a failure the engine did not (an actor that is not Taskyard's)."""
        if exception is None or getattr(message, ACTED, False):
            return
        if broker.get_actor(message.actor_name) is None:  # pragma: no cover
            return
        self.act(broker, message, exception, self.decide(broker, message, exception))


def attempt_of(message: Message[Any] | MessageProxy) -> int:
    """This delivery's attempt number, 1 for the first."""
    return int(message.options.get("retries", 0)) + 1
