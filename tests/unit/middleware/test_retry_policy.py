"""The retry policy: one table of exception types, exponential backoff with full jitter."""

from __future__ import annotations

from typing import Any

import marshmallow
import pytest
import requests
import sqlalchemy.exc

from middleware.retry_policy import attempts_limit, decide
from services.errors import FetchFailed, FetchRefused, PermanentError, TransientError, UnknownTenant

LIMITS = {"max_attempts": 5, "min_backoff_ms": 1_000, "max_backoff_ms": 30_000}


class _PgError(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__(pgcode)
        self.pgcode = pgcode


def _db_error(pgcode: str) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.OperationalError("UPDATE ...", {}, _PgError(pgcode))


@pytest.mark.parametrize(
    ("exc", "retry", "reason"),
    [
        (TransientError("later"), True, "backoff"),
        (FetchFailed("503"), True, "backoff"),
        (requests.ConnectionError("refused"), True, "backoff"),
        (requests.Timeout("slow"), True, "backoff"),
        (TimeoutError(), True, "backoff"),
        (ConnectionResetError(), True, "backoff"),
        (_db_error("08006"), True, "backoff"),
        (_db_error("40001"), True, "backoff"),
        (_db_error("40P01"), True, "backoff"),
        (RuntimeError("a bug"), True, "backoff"),
        (PermanentError("no", reason="custom"), False, "custom"),
        (FetchRefused("404"), False, "fetch_refused"),
        (UnknownTenant(7), False, "unknown_tenant"),
        (marshmallow.ValidationError("bad"), False, "invalid_input"),
        (TypeError("unexpected keyword"), False, "invalid_arguments"),
    ],
)
def test_first_failure_is_classified_in_one_table(
    exc: BaseException, retry: bool, reason: str
) -> None:
    decision = decide(exc, 1, rand=lambda: 0.5, **LIMITS)
    assert (decision.retry, decision.reason) == (retry, reason)


@pytest.mark.parametrize(
    ("attempt", "rand", "delay_ms"),
    [
        (1, 1.0, 1_000),
        (2, 1.0, 2_000),
        (3, 1.0, 4_000),
        (3, 0.25, 1_000),
        (4, 0.0, 0),
    ],
)
def test_backoff_doubles_with_full_jitter(attempt: int, rand: float, delay_ms: int) -> None:
    decision = decide(TransientError("x"), attempt, rand=lambda: rand, **LIMITS)
    assert decision.retry
    assert decision.delay_ms == delay_ms


def test_backoff_never_exceeds_the_maximum() -> None:
    limits = {**LIMITS, "max_attempts": 100}
    decision = decide(TransientError("x"), 40, rand=lambda: 1.0, **limits)
    assert decision.delay_ms == LIMITS["max_backoff_ms"]


def test_retry_after_carried_by_the_error_is_honoured() -> None:
    decision = decide(FetchFailed("429", retry_after=42.5), 1, rand=lambda: 0.0, **LIMITS)
    assert (decision.retry, decision.delay_ms, decision.reason) == (True, 42_500, "retry_after")


def test_last_attempt_gives_up_even_on_a_transient_error() -> None:
    decision = decide(TransientError("x"), 5, rand=lambda: 0.5, **LIMITS)
    assert (decision.retry, decision.reason) == (False, "max_attempts_exceeded")


def test_permanent_error_gives_up_on_the_first_attempt() -> None:
    decision = decide(PermanentError("never", reason="nope"), 1, **LIMITS)
    assert not decision.retry


@pytest.mark.parametrize(
    ("exc", "options", "attempt", "retry", "reason"),
    [
        # throws: never retried, whatever the table or the attempts left say
        (ValueError("x"), {"throws": ValueError}, 1, False, "throws"),
        (TransientError("x"), {"throws": (KeyError, TransientError)}, 1, False, "throws"),
        (KeyError("x"), {"throws": (ValueError,)}, 1, True, "backoff"),
        # retry_when replaces the attempt limit, after the permanent table
        (RuntimeError("x"), {"retry_when": lambda retries, exc: retries < 7}, 7, True, "backoff"),
        (RuntimeError("x"), {"retry_when": lambda r, e: r < 7}, 8, False, "retry_when_declined"),
        (PermanentError("no", reason="p"), {"retry_when": lambda r, e: True}, 1, False, "p"),
        # and no job gets more than 100 attempts
        (RuntimeError("x"), {"retry_when": lambda r, e: True}, 100, False, "max_attempts_exceeded"),
        (RuntimeError("x"), {"max_attempts": 10**6}, 100, False, "max_attempts_exceeded"),
    ],
)
def test_throws_and_retry_when_decide_as_in_dramatiq_within_taskyards_limits(
    exc: BaseException, options: dict[str, Any], attempt: int, retry: bool, reason: str
) -> None:
    limits = {**LIMITS, "max_attempts": options.pop("max_attempts", LIMITS["max_attempts"])}
    decision = decide(exc, attempt, rand=lambda: 0.5, **limits, **options)
    assert (decision.retry, decision.reason) == (retry, reason)


@pytest.mark.parametrize(
    ("options", "limit"),
    [
        ({}, None),
        ({"max_attempts": 4}, 4),
        ({"max_retries": 0}, 1),
        ({"max_retries": 3}, 4),
        ({"max_retries": None}, None),
    ],
)
def test_max_retries_n_is_n_plus_one_attempts(options: dict[str, Any], limit: int | None) -> None:
    assert attempts_limit(options) == limit
