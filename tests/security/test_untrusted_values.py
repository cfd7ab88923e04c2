"""Values from the wire and from outside servers that decide how a job runs: options,
Retry-After headers, cookies. Each is checked or dropped where it enters."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import uuid
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from services.http import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from services.url_guard import public_only_session
from transport.rabbitmq import Refusal, screen

QUEUE = "tenant.1"
NOW = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def encoded(options: dict[str, Any], queue: str = QUEUE) -> bytes:
    """A well-formed message body for tenant 1 with these options."""
    return json.dumps(
        {
            "queue_name": queue,
            "actor_name": "process_resource",
            "args": [],
            "kwargs": {"tenant_id": 1},
            "options": options,
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
        }
    ).encode()


@pytest.mark.parametrize(
    "options",
    [
        {"throws": 1},  # Dramatiq's worker would isinstance() against it and lose the thread
        {"broker_priority": "x"},  # would break the publisher's frame
        {"broker_priority": 256},
        {"eta": 0},  # an eta on a queue that is not a delay queue
        {"max_attempts": 1_000_000},
        {"max_backoff": True},
        {"time_limit": 10**12},
        {"retries": "x"},
        {"scheduled_at": ["not", "a", "string"]},
    ],
)
def test_options_out_of_their_table_are_refused(options: dict[str, Any]) -> None:
    verdict = screen(encoded(options), queue_name=QUEUE, max_bytes=10_000)
    assert isinstance(verdict, Refusal) and verdict.reason == "invalid_options"


def test_a_delay_queue_eta_far_ahead_is_refused_and_a_near_one_taken() -> None:
    now = int(time.time() * 1000)
    far = screen(
        encoded({"eta": now + 7_200_000}, f"{QUEUE}.DQ"),
        queue_name=f"{QUEUE}.DQ",
        max_bytes=10_000,
        max_eta_ahead_ms=3_600_000,
    )
    near = screen(
        encoded({"eta": now + 1_000, "retries": 2}, f"{QUEUE}.DQ"),
        queue_name=f"{QUEUE}.DQ",
        max_bytes=10_000,
    )
    assert isinstance(far, Refusal) and far.reason == "invalid_options"
    assert not isinstance(near, Refusal) and near.options["retries"] == 2


def test_the_options_taskyard_sends_are_taken() -> None:
    options = {
        "retries": 1,
        "max_attempts": 5,
        "min_backoff": 100,
        "max_backoff": 1_000,
        "time_limit": 60_000,
        "broker_priority": 3,
        "scheduled_at": "2024-05-01T00:00:00+00:00",
        "taskyard_schedule_id": 7,
        "taskyard_slot": "2024-05-01T00:00:00+00:00",
    }
    verdict = screen(encoded(options), queue_name=QUEUE, max_bytes=10_000)
    assert not isinstance(verdict, Refusal) and verdict.options == options


@pytest.mark.parametrize(
    ("header", "expected"),
    [("9" * 400, MAX_RETRY_AFTER_SECONDS), ("\u00b2", None), ("120", 120.0), ("-5", None)],
)
def test_retry_after_is_ascii_digits_and_at_most_a_day(header: str, expected: float | None) -> None:
    waited = parse_retry_after(header, now=NOW)
    assert waited == expected
    assert waited is None or math.isfinite(waited)


def test_a_cookie_one_tenants_server_sets_never_travels_with_another_call(
    httpserver: HTTPServer,
) -> None:
    # Given the one session a worker process uses for every tenant's calls
    httpserver.expect_request("/a").respond_with_response(
        Response("{}", headers={"Set-Cookie": "session=tenant-a; Path=/"})
    )
    httpserver.expect_request("/b").respond_with_data("{}")
    with public_only_session(allow_private=True) as http:
        # When tenant A's server sets a cookie, then tenant B's call goes to the same host
        http.get(httpserver.url_for("/a"), timeout=5)
        http.get(httpserver.url_for("/b"), timeout=5)
    # Then B's request carried no cookie
    (_, a_response), (b_request, _) = httpserver.log
    assert "session=tenant-a" in a_response.headers["Set-Cookie"]
    assert "Cookie" not in b_request.headers
