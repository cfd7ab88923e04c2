"""A job's result: how its record keeps it, and how a producer reads it back.

The record keeps what the actor returned, as JSON, in `jobs.result`: any
JSON value (a dict, a list, a number, a string, a bool), exactly as
returned; None is SQL NULL.  A result that cannot be kept (not JSON, or over
`MAX_RESULT_BYTES` once encoded) is not stored at all: `jobs.result` is NULL
and `jobs.result_dropped` says why, so no stored value ever stands for a
result that was not kept.

`read_outcome` reads one record and `Outcome.value()` turns it into what
`message.get_result()` returns or raises (see `middleware.results`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from dramatiq.results import ResultError, ResultFailure
from sqlalchemy import select

from db.hot import Executor
from db.models import (
    JOB_CANCELLED,
    JOB_DEAD,
    JOB_EXPIRED,
    JOB_SKIPPED,
    JOB_SUCCEEDED,
    Job,
)

# A result bigger than this, encoded, is not kept on the job record (return ids, not data).
MAX_RESULT_BYTES = 8_192
# Values JSON has no type for but whose text says what they are: kept as their text.
_AS_TEXT = (dt.datetime, dt.date, dt.time, decimal.Decimal, uuid.UUID)
# "TypeName: message", as `services.errors.describe_error` writes an error.
_TYPED_ERROR = re.compile(r"([A-Za-z_][\w.]*): (.*)", re.DOTALL)
# What the retry policy appends to a failed attempt's error (`retry_policy.outcome_of`).
_OUTCOME_SUFFIX = re.compile(r" \[attempt \d+ [^\]]*\]\Z")


class Kept(NamedTuple):
    """What a job's record keeps of its actor's return value."""

    # The value as JSON data (None: no result, or not kept).
    result: Any
    # Why the result was not kept (None: kept, or there was none).
    dropped: str | None


def _as_text(value: Any) -> str:
    if isinstance(value, _AS_TEXT):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def keep_result(returned: Any, logger: logging.Logger) -> Kept:
    """The actor's return value as its job record keeps it, or why it is not kept."""
    if returned is None:
        return Kept(None, None)
    try:
        encoded = json.dumps(returned, default=_as_text, allow_nan=False)
    except (TypeError, ValueError) as exc:
        logger.warning("Result of type %s is not JSON (%s); not kept", type(returned).__name__, exc)
        return Kept(
            None, f"the result, of type {type(returned).__name__}, is not JSON ({exc})"[:500]
        )
    size = len(encoded.encode())
    if size > MAX_RESULT_BYTES:
        logger.warning("Result of %d bytes is over %d; not kept", size, MAX_RESULT_BYTES)
        return Kept(
            None,
            f"the result, {size} bytes of JSON, is over the limit of {MAX_RESULT_BYTES} "
            "bytes: return ids, not data",
        )
    return Kept(json.loads(encoded), None)


class ResultNotKept(ResultError):
    """The job succeeded, but its result was not kept (not JSON, or too large): reading it fails.

    Raised at once, like a failure, rather than a stand-in value or a wait
    for a result that will never come.
    """


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one job's record says of its result."""

    message_id: str
    actor: str
    queue: str
    status: str
    result: Any
    dropped: str | None
    error: str | None

    @property
    def final(self) -> bool:
        """Whether the job is over: its result (or failure) will not change by itself."""
        return self.status in (JOB_SUCCEEDED, JOB_DEAD, JOB_EXPIRED, JOB_CANCELLED, JOB_SKIPPED)

    def value(self) -> Any:
        """The job's result; `ResultFailure` or `ResultNotKept` when there is none to give.

        Only for a final outcome: a job still queued or retrying has no result yet.
        """
        if self.status == JOB_SUCCEEDED:
            if self.dropped is not None:
                raise ResultNotKept(  # type: ignore[no-untyped-call]
                    f"{self.actor} {self.message_id} succeeded, but its result was not kept: "
                    f"{self.dropped}"
                )
            return self.result
        if self.status == JOB_SKIPPED:
            # As Dramatiq stores None for a message skipped without failing.
            return None
        if self.status == JOB_DEAD:
            kind, text = error_parts(self.error)
            raise ResultFailure(f"actor raised {kind}: {text}", kind, text)  # type: ignore[no-untyped-call]
        # Expired or cancelled: never run; the record's error says why.
        kind = "JobExpired" if self.status == JOB_EXPIRED else "JobCancelled"
        text = self.error or f"{self.status} before it ran"
        raise ResultFailure(  # type: ignore[no-untyped-call]
            f"{self.actor} {self.message_id} {self.status}: {text}", kind, text
        )


def error_parts(error: str | None) -> tuple[str, str]:
    """The exception type and message of a recorded error (as `describe_error` wrote it).

    The retry policy's note on the attempt ("[attempt 3 was the last; ...]")
    is left out of the message; an error with no type gives an empty type.
    """
    text = _OUTCOME_SUFFIX.sub("", (error or "").strip()) or "(no error recorded)"
    typed = _TYPED_ERROR.fullmatch(text)
    if typed is None:
        return "", text
    return typed.group(1), typed.group(2)


def read_outcome(executor: Executor, message_id: str) -> Outcome | None:
    """The result part of one job's record (None: there is no record of that message id)."""
    row = executor.execute(
        select(
            Job.message_id,
            Job.actor,
            Job.queue,
            Job.status,
            Job.result,
            Job.result_dropped,
            Job.error,
        ).where(Job.message_id == message_id)
    ).first()
    return Outcome(*row) if row is not None else None
