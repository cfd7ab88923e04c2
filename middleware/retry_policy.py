"""Which failures are retried, when, and how a message that gives up is dead-lettered."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import marshmallow
import requests
import sqlalchemy.exc
from dramatiq import Message
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from middleware.actor_options import check_actor_options
from middleware.outbox import Outbox
from services.errors import PermanentError, TransientError
from transport.rabbitmq import MAX_ATTEMPTS_CAP, publish_now

# Set on a message whose failure the policy has acted on (re-enqueued or failed).
ACTED = "taskyard_failure_acted_on"
# SQLSTATEs worth another attempt: serialization failure and deadlock.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# Why a message gave up because its retries ran out (Dramatiq's on_retry_exhausted fires).
MAX_ATTEMPTS_EXCEEDED = "max_attempts_exceeded"
RETRY_WHEN_DECLINED = "retry_when_declined"
EXHAUSTED = frozenset({MAX_ATTEMPTS_EXCEEDED, RETRY_WHEN_DECLINED})
# Why a message gave up because its exception is one its actor `throws`: never retried.
THROWN = "throws"
# The options the policy reads: Taskyard's and Dramatiq's Retries middleware's.
RETRY_OPTIONS = (
    "max_attempts",
    "max_retries",
    "min_backoff",
    "max_backoff",
    "throws",
    "retry_when",
    "on_retry_exhausted",
)
# Dramatiq's retry_when: (retries so far, the exception) -> whether to retry.
RetryWhen = Callable[[int, BaseException], bool]
# The worker's own line for a failure, which the policy has logged already (see _LoggedOnce).
_WORKER_FAILURE_LINE = "Failed to process message"

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
    if decision.reason == MAX_ATTEMPTS_EXCEEDED:
        return f"[attempt {attempt} was the last; gave up: max_attempts_exceeded]"
    if decision.reason == RETRY_WHEN_DECLINED:
        return f"[attempt {attempt} failed; its actor's retry_when declined another]"
    if decision.reason == THROWN:
        return f"[attempt {attempt} raised an exception its actor throws; not retried]"
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
    return MAX_ATTEMPTS_EXCEEDED


def attempts_limit(options: Mapping[str, Any]) -> int | None:
    """The attempts `options` (a message's or an actor's) allow: max_attempts or max_retries+1."""
    if options.get("max_attempts") is not None:
        return int(options["max_attempts"])
    if options.get("max_retries") is not None:
        return int(options["max_retries"]) + 1
    return None


def decide(
    exc: BaseException,
    attempt: int,
    *,
    max_attempts: int,
    min_backoff_ms: int,
    max_backoff_ms: int,
    throws: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    retry_when: RetryWhen | None = None,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry or give up after `attempt` (1-based) failed with `exc`: backoff with full jitter.

    In order: an exception the actor `throws` is never retried; a permanent
    one (the table above) neither; then the actor's `retry_when`, asked
    (retries so far, exception) as Dramatiq asks it, replaces the attempt
    limit, though no job gets more than `MAX_ATTEMPTS_CAP` attempts.
    """
    if throws and isinstance(exc, throws):
        return Decision(retry=False, delay_ms=0, reason=THROWN)
    permanent = isinstance(exc, PERMANENT_TYPES) and _sqlstate(exc) not in RETRYABLE_SQLSTATES
    if permanent:
        return Decision(retry=False, delay_ms=0, reason=reason_of(exc))
    if retry_when is not None and attempt < MAX_ATTEMPTS_CAP:
        if not retry_when(attempt - 1, exc):
            return Decision(retry=False, delay_ms=0, reason=RETRY_WHEN_DECLINED)
    elif attempt >= min(max_attempts, MAX_ATTEMPTS_CAP):
        return Decision(retry=False, delay_ms=0, reason=MAX_ATTEMPTS_EXCEEDED)
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

    actor_options = set(RETRY_OPTIONS)

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
        _LoggedOnce.install()

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Refuse, at declaration, a retry option Taskyard cannot honour (`OptionRefused`)."""
        check_actor_options(actor.actor_name, actor.options, RETRY_OPTIONS)

    def _option(
        self, broker: Broker, message: Message[Any] | MessageProxy, name: str, default: int
    ) -> int:
        if name in message.options:
            return int(message.options[name])
        actor = broker.get_actor(message.actor_name)
        return int(actor.options.get(name, default))

    def _retry_when(self, actor: dramatiq.Actor[Any, Any]) -> RetryWhen | None:
        retry_when: RetryWhen | None = actor.options.get("retry_when")
        if retry_when is None:
            return None

        def asked(retries: int, exc: BaseException) -> bool:
            try:
                return bool(retry_when(retries, exc))
            except Exception:
                # The actor's own code, in the middle of recording a failure: a bug
                # there gives the message up (kept as a dead letter), never loses it.
                self.logger.exception("retry_when of %s raised; not retried", actor.actor_name)
                return False

        return asked

    def decide(
        self, broker: Broker, message: Message[Any] | MessageProxy, exc: BaseException
    ) -> Decision:
        """Decide about a failed attempt of `message` (nothing is done yet: see `act`)."""
        actor = broker.get_actor(message.actor_name)
        return decide(
            exc,
            attempt_of(message),
            max_attempts=self.attempts_allowed(broker, message),
            min_backoff_ms=self._option(broker, message, "min_backoff", self.min_backoff_ms),
            max_backoff_ms=self._option(broker, message, "max_backoff", self.max_backoff_ms),
            throws=actor.options.get("throws"),
            retry_when=self._retry_when(actor),
        )

    def attempts_allowed(self, broker: Broker, message: Message[Any] | MessageProxy) -> int:
        """How many times `message`'s actor may run: the message's limit, its actor's, the default.

        A limit is `max_attempts`, or Dramatiq's `max_retries` plus one; an actor
        with `retry_when` may run up to `MAX_ATTEMPTS_CAP` times, its function
        deciding.
        """
        limit = attempts_limit(message.options)
        if limit is not None:
            return limit
        actor = broker.get_actor(message.actor_name)
        if actor.options.get("retry_when") is not None:
            return MAX_ATTEMPTS_CAP
        limit = attempts_limit(actor.options)
        return limit if limit is not None else self.max_attempts

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
                    publish_now(broker, retried, delay=delay)
            except Exception as exc:
                # RabbitMQ refused or could not take the retry (an outage, a memory
                # alarm): acknowledging the message now would lose the job.
                self._keep_unsent_retry(broker, message, retried, delay, exc)
            return
        if decision.reason == THROWN:
            # As Dramatiq's Retries: an exception the actor throws is expected, said at INFO.
            self.logger.info(
                "%s %s attempt %d raised %s, which its actor throws; not retried",
                message.actor_name,
                message.message_id,
                attempt,
                type(exception).__name__,
                extra=extra,
            )
        else:
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
        if decision.reason in EXHAUSTED:
            self._send_exhausted(broker, message, attempt)

    def _send_exhausted(self, broker: Broker, message: MessageProxy, attempt: int) -> None:
        """Send the actor's `on_retry_exhausted` its message, as Dramatiq's Retries sends it.

        Sent once the failure is recorded, outside its transaction (as Dramatiq
        sends it after the nack): recorded and published through the outbox,
        never lost once this returns; a send that fails is logged.
        """
        target_name = broker.get_actor(message.actor_name).options.get("on_retry_exhausted")
        if not target_name:
            return
        extra = {"message_id": message.message_id, "actor": message.actor_name}
        retries, max_retries = attempt - 1, self.attempts_allowed(broker, message) - 1
        try:
            target = broker.get_actor(target_name)
            if "tenant_scoped" in target.options:
                # A Taskyard actor takes keyword arguments only; a tenant-scoped one runs
                # for the failed job's tenant (its route was checked before it ran).
                kwargs: dict[str, Any] = {
                    "message": message.asdict(),
                    "retries": retries,
                    "max_retries": max_retries,
                }
                if target.options["tenant_scoped"]:
                    kwargs["tenant_id"] = message.kwargs.get("tenant_id")
                exhausted = target.message_with_options(kwargs=kwargs)
            else:
                retry_info = {"retries": retries, "max_retries": max_retries}
                exhausted = target.message_with_options(args=(message.asdict(), retry_info))
            if self.outbox is not None:
                self.outbox.send(broker, exhausted, None)
            else:
                publish_now(broker, exhausted)
        except Exception as exc:
            self.logger.error(
                "Could not send on_retry_exhausted %s for %s %s (%s: %s)",
                target_name,
                message.actor_name,
                message.message_id,
                type(exc).__name__,
                exc,
                extra=extra,
            )

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


class _LoggedOnce(logging.Filter):
    """Drops the worker's own line about a failure the policy has acted on, and logged.

    Dramatiq's worker logs every exception an actor raises (with a traceback,
    unless the actor `throws` it); the policy logs each failure once, where
    it decides, at the level its decision calls for.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the worker's line about a message the policy acted on."""
        if not str(record.msg).startswith(_WORKER_FAILURE_LINE):
            return True
        args = record.args
        return not (isinstance(args, tuple) and args and getattr(args[0], ACTED, False))

    @classmethod
    def install(cls) -> None:
        """Filter the logger of Dramatiq's worker threads (once per process)."""
        logger = logging.getLogger("dramatiq.worker.WorkerThread")
        if not any(isinstance(existing, cls) for existing in logger.filters):
            logger.addFilter(cls())
