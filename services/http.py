"""Fetching JSON over HTTP with a timeout, a size limit and errors the retry policy understands."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from services.errors import FetchFailed, FetchRefused
from services.redaction import redact_url
from services.url_guard import check_url
from settings import Settings

CHUNK_BYTES = 64 * 1024
# Long enough to say where the parser gave up, short enough for a log line.
MAX_REASON_CHARS = 120
# Redirects are followed by hand so that every hop passes the URL guard.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

__all__ = [
    "FetchLimits",
    "JsonResponse",
    "check_url",
    "fetch_json",
    "get_json",
    "parse_retry_after",
    "rate_limit_wait",
    "redact_url",
]


@dataclass(frozen=True)
class FetchLimits:
    """How long to wait for a server and how much of its answer to read."""

    connect_timeout: float
    read_timeout: float
    max_bytes: int
    # Loopback, private and link-local destinations (TASKYARD_HTTP_ALLOW_PRIVATE).
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchLimits:
        """The limits every outbound call of a worker gets (TASKYARD_HTTP_*)."""
        return cls(
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            max_bytes=settings.http_max_bytes,
            allow_private=settings.http_allow_private,
        )


# The longest wait a Retry-After header can ask for.
MAX_RETRY_AFTER_SECONDS = 24 * 60 * 60


def parse_retry_after(value: str | None, *, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    # ASCII digits only ("²".isdigit() is true too), and never longer than a day:
    # the server's number is untrusted input that decides how long a job waits.
    if text.isascii() and text.isdigit():
        return float(min(int(text[:12]), MAX_RETRY_AFTER_SECONDS))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER_SECONDS)


def fetch_json(http: requests.Session, url: str, limits: FetchLimits) -> Any:
    """GET `url` and decode its JSON body; FetchFailed may pass on retry, FetchRefused will not."""
    safe_url = redact_url(url)
    try:
        with _get(http, url, limits, {}) as response:
            safe_url = redact_url(response.url)
            _check_status(response, safe_url)
            body = _read_body(response, safe_url, limits.max_bytes)
    except requests.exceptions.RequestException as exc:
        _raise_for_request_error(exc, safe_url, limits)
    return _decode(body, safe_url)


@dataclass(frozen=True)
class JsonResponse:
    """A successful JSON answer: the final URL, status, headers and decoded body."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: Any


def get_json(
    http: requests.Session,
    url: str,
    limits: FetchLimits,
    *,
    headers: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> JsonResponse:
    """GET `url` with `headers` through the URL guard; rate limits, 5xx and timeouts are transient.

    429, 503 and a 403 that is a rate limit (Retry-After, or X-RateLimit-Remaining: 0)
    raise FetchFailed with `retry_after` (from Retry-After or X-RateLimit-Reset);
    404 and other 4xx raise FetchRefused, and so does a body that is not JSON.
    Header values (tokens) never appear in an error.
    """
    safe_url = redact_url(url)
    try:
        with _get(http, url, limits, dict(headers or {})) as response:
            safe_url = redact_url(response.url)
            _check_api_status(response, safe_url, now or dt.datetime.now(dt.UTC))
            body = _read_body(response, safe_url, limits.max_bytes)
            status, answer_headers = response.status_code, response.headers
    except requests.exceptions.RequestException as exc:
        _raise_for_request_error(exc, safe_url, limits)
    return JsonResponse(
        url=response.url, status=status, headers=answer_headers, body=_decode(body, safe_url)
    )


def rate_limit_wait(headers: Mapping[str, str], *, now: dt.datetime) -> float | None:
    """Seconds a rate-limited client should wait: Retry-After, else X-RateLimit-Reset, else None."""
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    if retry_after is not None:
        return retry_after
    if headers.get("X-RateLimit-Remaining", "").strip() != "0":
        return None
    reset = headers.get("X-RateLimit-Reset", "").strip()
    if not reset.isdigit():
        return None
    return max(0.0, int(reset) - now.timestamp())


def _check_api_status(response: requests.Response, safe_url: str, now: dt.datetime) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    wait = rate_limit_wait(response.headers, now=now)
    rate_limited = status in (429, 503) or (status == 403 and wait is not None)
    if rate_limited or status >= 500:
        asks = f" (wait {wait:g} s)" if wait is not None else ""
        what = "is rate limiting us" if rate_limited else "is failing"
        raise FetchFailed(
            f"GET {safe_url} answered {status} {response.reason}{asks}; the server {what}",
            retry_after=wait,
        )
    if status == 404:
        raise FetchRefused(
            f"GET {safe_url} answered 404 Not Found; check the URL (and that the "
            "credentials may see it), then requeue"
        )
    raise FetchRefused(
        f"GET {safe_url} answered {status} {response.reason}; "
        "check the URL and its credentials, then requeue"
    )


def _get(
    http: requests.Session, url: str, limits: FetchLimits, headers: dict[str, str]
) -> requests.Response:
    """A streamed GET whose every hop (the URL, then each redirect) passed the URL guard."""
    for _hop in range(MAX_REDIRECTS + 1):
        check_url(url, allow_private=limits.allow_private)
        response = http.get(
            url,
            headers=headers,
            timeout=(limits.connect_timeout, limits.read_timeout),
            stream=True,
            allow_redirects=False,
        )
        location = response.headers.get("Location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            return response
        response.close()
        next_url = urljoin(url, location)
        if urlsplit(next_url).netloc != urlsplit(url).netloc:
            # Credentials are for the host they were given for, not for where it points.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = next_url
    raise FetchRefused(
        f"GET {redact_url(url)} redirected more than {MAX_REDIRECTS} times; fix the URL"
    )


def _check_status(response: requests.Response, safe_url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(
            response.headers.get("Retry-After"), now=dt.datetime.now(dt.UTC)
        )
        wait = f" (server asks to wait {retry_after:g} s)" if retry_after is not None else ""
        raise FetchFailed(
            f"GET {safe_url} answered {status} {response.reason}{wait}; "
            "the server is busy or failing",
            retry_after=retry_after,
        )
    raise FetchRefused(
        f"GET {safe_url} answered {status} {response.reason}; "
        "check the feed URL and its credentials, then requeue"
    )


def _read_body(response: requests.Response, safe_url: str, max_bytes: int) -> bytes:
    too_large = (
        f"GET {safe_url} returned more than {max_bytes} bytes; "
        "raise TASKYARD_HTTP_MAX_BYTES or ask the feed's owner to page it"
    )
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchRefused(f"{too_large} (Content-Length {declared})")
    body = bytearray()
    # Counted after decompression, so a small gzip bomb is refused too.
    for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise FetchRefused(too_large)
    return bytes(body)


def _raise_for_request_error(
    exc: requests.exceptions.RequestException, safe_url: str, limits: FetchLimits
) -> NoReturn:
    # Messages name the exception class only: requests' own text can be long.
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.InvalidSchema
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidHeader,
    ):
        raise FetchRefused(
            f"GET {safe_url} cannot be sent ({type(exc).__name__}); fix the feed URL"
        ) from exc
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        raise FetchRefused(f"GET {safe_url} redirected too many times; fix the feed URL") from exc
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        raise FetchRefused(
            f"GET {safe_url} sent a body that cannot be decompressed; "
            "ask the feed's owner to fix its Content-Encoding"
        ) from exc
    if isinstance(exc, requests.exceptions.Timeout) or _wraps_read_timeout(exc):
        raise FetchFailed(
            f"GET {safe_url} timed out (connect {limits.connect_timeout:g} s, "
            f"read {limits.read_timeout:g} s)"
        ) from exc
    raise FetchFailed(
        f"GET {safe_url} failed ({type(exc).__name__}); check that the host is reachable"
    ) from exc


def _wraps_read_timeout(exc: requests.exceptions.RequestException) -> bool:
    # A timeout while streaming the body surfaces as ConnectionError(ReadTimeoutError).
    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _decode(body: bytes, safe_url: str) -> Any:
    try:
        # NaN and Infinity would not survive as a message argument; refuse them here.
        return json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as exc:  # UnicodeDecodeError, NaN and Infinity
        reason = str(exc)
    raise FetchRefused(
        f"GET {safe_url} is not JSON: {reason[:MAX_REASON_CHARS]}; "
        "check that the URL points at the JSON feed"
    )
