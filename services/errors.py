"""The two families of errors a service raises; the retry policy decides what they mean."""

from __future__ import annotations


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
