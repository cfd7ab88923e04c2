"""fetch_json against a real HTTP server on 127.0.0.1 (pytest-httpserver)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
import requests
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from services.errors import FetchFailed, FetchRefused
from services.http import FetchLimits, fetch_json, parse_retry_after, redact_url
from tests.support import free_port

LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000, allow_private=True)
NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A plain requests session, closed after the test."""
    with requests.Session() as session:
        yield session


def with_password(httpserver: HTTPServer, path: str) -> str:
    """A URL of the test server that carries a user name and password."""
    return f"http://alice:s3cret@{httpserver.host}:{httpserver.port}{path}"


def test_json_body_is_decoded(httpserver: HTTPServer, http: requests.Session) -> None:
    httpserver.expect_request("/feed").respond_with_json([{"id": 1}, {"id": "b"}])

    assert fetch_json(http, httpserver.url_for("/feed"), LIMITS) == [{"id": 1}, {"id": "b"}]


def test_404_is_refused_with_the_status_and_url(
    httpserver: HTTPServer, http: requests.Session
) -> None:
    httpserver.expect_request("/gone").respond_with_data("", status=404)
    url = httpserver.url_for("/gone")

    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, url, LIMITS)

    assert "404" in str(caught.value)
    assert url in str(caught.value)
    assert caught.value.reason == "fetch_refused"


def test_503_with_retry_after_seconds_is_transient(
    httpserver: HTTPServer, http: requests.Session
) -> None:
    httpserver.expect_request("/busy").respond_with_data(
        "", status=503, headers={"Retry-After": "7"}
    )

    with pytest.raises(FetchFailed) as caught:
        fetch_json(http, httpserver.url_for("/busy"), LIMITS)

    assert caught.value.retry_after == 7
    assert "503" in str(caught.value)


def test_429_without_retry_after_is_transient_with_no_delay(
    httpserver: HTTPServer, http: requests.Session
) -> None:
    httpserver.expect_request("/slow-down").respond_with_data("", status=429)

    with pytest.raises(FetchFailed) as caught:
        fetch_json(http, httpserver.url_for("/slow-down"), LIMITS)

    assert caught.value.retry_after is None
    assert "429" in str(caught.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),  # already past: retry now
        ("-5", None),
        ("soon", None),
    ],
)
def test_retry_after_header_is_parsed(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


def test_too_large_by_content_length_is_refused_before_reading(
    httpserver: HTTPServer, http: requests.Session
) -> None:
    httpserver.expect_request("/big").respond_with_data("[" + "1," * 1_000 + "1]")

    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, httpserver.url_for("/big"), LIMITS)

    assert "more than 1000 bytes" in str(caught.value)
    assert "Content-Length" in str(caught.value)


def test_too_large_while_streaming_is_refused(
    httpserver: HTTPServer, http: requests.Session
) -> None:
    # A generator body has no Content-Length: only counting the chunks catches it.
    chunks = (b"[" if i == 0 else b"1," * 100 for i in range(50))
    httpserver.expect_request("/stream").respond_with_response(
        Response(chunks, mimetype="application/json")
    )

    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, httpserver.url_for("/stream"), LIMITS)

    assert "more than 1000 bytes" in str(caught.value)
    assert "Content-Length" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<html>", "Expecting value at line 1 column 1"),
        ("", "Expecting value"),
        ('{"a": NaN}', "NaN is not valid JSON"),
        ("[" * 50_000, "nested too deeply"),
    ],
)
def test_body_that_is_not_json_is_refused(
    httpserver: HTTPServer, http: requests.Session, body: str, reason: str
) -> None:
    limits = FetchLimits(
        connect_timeout=1.0, read_timeout=1.0, max_bytes=100_000, allow_private=True
    )
    httpserver.expect_request("/page").respond_with_data(body, content_type="text/html")

    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, httpserver.url_for("/page"), limits)

    assert "is not JSON" in str(caught.value)
    assert reason in str(caught.value)


def test_connection_refused_is_transient(http: requests.Session) -> None:
    url = f"http://127.0.0.1:{free_port()}/feed"

    with pytest.raises(FetchFailed) as caught:
        fetch_json(http, url, LIMITS)

    assert url in str(caught.value)
    # What to do, never what happens next: the engine appends the outcome to the record
    assert "reachable" in str(caught.value) and "retried" not in str(caught.value)


def test_read_timeout_is_transient(httpserver: HTTPServer, http: requests.Session) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.5)
        return Response("[]", mimetype="application/json")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    limits = FetchLimits(connect_timeout=1.0, read_timeout=0.1, max_bytes=1_000, allow_private=True)

    started = time.monotonic()
    with pytest.raises(FetchFailed) as caught:
        fetch_json(http, httpserver.url_for("/slow"), limits)

    assert "timed out" in str(caught.value)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "url", ["ftp://feeds.example/feed.json", "file:///etc/passwd", "feeds.example/feed.json"]
)
def test_scheme_other_than_http_is_refused(http: requests.Session, url: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, url, LIMITS)

    assert "only http and https" in str(caught.value)


def test_url_without_host_is_refused(http: requests.Session) -> None:
    with pytest.raises(FetchRefused, match="no host name"):
        fetch_json(http, "http:///feed.json", LIMITS)


def test_password_is_not_in_a_status_error(httpserver: HTTPServer, http: requests.Session) -> None:
    httpserver.expect_request("/private").respond_with_data("", status=403)

    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, with_password(httpserver, "/private"), LIMITS)

    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)
    assert f"{httpserver.host}:{httpserver.port}/private" in str(caught.value)


def test_password_is_not_in_a_connection_error(http: requests.Session) -> None:
    url = f"http://alice:s3cret@127.0.0.1:{free_port()}/feed"

    with pytest.raises(FetchFailed) as caught:
        fetch_json(http, url, LIMITS)

    assert "s3cret" not in str(caught.value)


def test_password_is_not_in_a_refused_scheme_error(http: requests.Session) -> None:
    with pytest.raises(FetchRefused) as caught:
        fetch_json(http, "ftp://alice:s3cret@feeds.example/feed.json", LIMITS)

    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://feeds.example/a.json?page=2", "https://feeds.example/a.json?page=2"),
        ("https://alice:s3cret@feeds.example/a.json", "https://feeds.example/a.json"),
        ("https://alice@feeds.example:8443/a", "https://feeds.example:8443/a"),
        ("https://a:p@ss@feeds.example/a#top", "https://feeds.example/a"),
        ("http://u:p@[::1]:8080/a", "http://[::1]:8080/a"),
    ],
)
def test_redact_url_drops_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected
