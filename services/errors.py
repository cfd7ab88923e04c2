"""The two families of errors a service raises; the retry policy decides what they mean."""

from __future__ import annotations

from typing import Any, TypeGuard

# tenant ids are PostgreSQL bigints.
MAX_TENANT_ID = 2**63 - 1


def valid_tenant_id(value: Any) -> TypeGuard[int]:
    """Whether `value` can name a tenant: a positive 64-bit integer, not a bool or a string."""
    return type(value) is int and 0 < value <= MAX_TENANT_ID


def describe_error(exc: BaseException) -> str:
    """One line naming an error a job raised: its type and message (as its record keeps it)."""
    text = str(exc).strip() or "(no message)"
    return f"{type(exc).__name__}: {text}"


class TaskyardError(Exception):
    """Base of every error Taskyard raises on purpose."""


class TransientError(TaskyardError):
    """Something that may work later: retry, after `retry_after` seconds when it is known."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(TaskyardError):
    """Something that will never work as sent: dead-letter at once, with `reason`."""

    def __init__(self, message: str, *, reason: str = "permanent_error") -> None:
        super().__init__(message)
        self.reason = reason


class ValidationFailed(PermanentError):
    """Input (an actor's arguments, a payload) did not match its schema."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="invalid_input")


class InvalidArguments(PermanentError, ValueError):
    """An actor's arguments do not fit its schema: refused at send, dead-lettered at a worker."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="invalid_arguments")


class MessageIdTaken(PermanentError):
    """A message carries the id of another job (another tenant, actor or queue): never merged."""

    def __init__(self, message_id: str) -> None:
        super().__init__(
            f"message id {message_id!r} belongs to another job (another tenant, actor or queue); "
            "this message is refused and that job is left as it was",
            reason="message_id_taken",
        )
        self.message_id = message_id


class SendFailed(TaskyardError):
    """PostgreSQL could not record a send: nothing was sent, and the caller may try again.

    A send is durable once it commits in PostgreSQL, so without PostgreSQL
    there is no send; RabbitMQ being away, by contrast, only delays the job.
    """

    def __init__(self, actor: str, message_id: str, cause: BaseException, *, more: int = 0) -> None:
        others = f" (and {more} more)" if more else ""
        super().__init__(
            f"could not record the send of {actor} {message_id}{others} in PostgreSQL "
            f"({type(cause).__name__}); nothing was sent: send it again once the database "
            "answers"
        )
        self.actor = actor
        self.message_id = message_id


class AttemptsSpent(PermanentError):
    """A message back after its last attempt, whose failure could not be recorded then."""

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"its {attempts} attempt(s) were spent while the database was away; recorded "
            "dead now, its actor not run again: requeue it to run it once more",
            reason="max_attempts_exceeded",
        )
        self.attempts = attempts


class WorkerCrashed(PermanentError):
    """A message whose workers died while it ran, as often as its attempts allow."""

    def __init__(self, crashes: int) -> None:
        super().__init__(
            f"its worker died {crashes} time(s) with it running or held (killed, out of "
            "memory, a crash in native code); dead-lettered so that it kills no more "
            "workers: find the cause, then requeue it",
            reason="worker_crashed",
        )


class NotFound(PermanentError):
    """A row the message names does not exist (for this tenant)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="not_found")


class UnknownTenant(PermanentError):
    """The message names a tenant that does not exist."""

    def __init__(self, tenant_id: int) -> None:
        super().__init__(f"tenant {tenant_id} does not exist", reason="unknown_tenant")
        self.tenant_id = tenant_id


class TenantDisabled(PermanentError):
    """The message's tenant is disabled; the message is kept and can be requeued."""

    def __init__(self, tenant_id: int) -> None:
        super().__init__(
            f"tenant {tenant_id} is disabled; enable it, then requeue the message",
            reason="tenant_disabled",
        )
        self.tenant_id = tenant_id


class FetchFailed(TransientError):
    """An HTTP fetch failed in a way that may pass: connection error, timeout, 429, 5xx."""


class FetchRefused(PermanentError):
    """An HTTP fetch failed in a way that will not pass: 4xx, too large, not JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="fetch_refused")


class BrokerRefused(PermanentError):
    """RabbitMQ refused a queue or a publish (403, 404, 405, 406): sending it again fails too.

    Unlike a lost connection, which is retried, a refusal comes back the same
    until someone changes RabbitMQ (the queue's arguments, the user's
    permissions); `advice` says what to change.
    """

    def __init__(self, queue_name: str, reply_code: int, reply_text: str, *, advice: str) -> None:
        super().__init__(
            f"RabbitMQ refused queue {queue_name!r}: {reply_code} {reply_text}; {advice}",
            reason="broker_refused",
        )
        self.queue_name = queue_name
        self.reply_code = reply_code
        self.reply_text = reply_text


class PriorityRefused(PermanentError, ValueError):
    """A send asked for `broker_priority`, which Taskyard's queues cannot honour."""

    def __init__(self, actor: str) -> None:
        super().__init__(
            f"{actor}: broker_priority is refused: Taskyard declares its queues without "
            "x-max-priority, so RabbitMQ would ignore it (a queue's arguments cannot change "
            "once it exists, and quorum queues have no priorities); send urgent work to a "
            "queue of its own",
            reason="priority_refused",
        )
        self.actor = actor
