"""Fetching JSON over HTTP with a timeout, a size limit and errors the retry policy understands."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from services.errors import FetchFailed, FetchRefused
from services.url_guard import check_url, redact_url

CHUNK_BYTES = 64 * 1024
# Long enough to say where the parser gave up, short enough for a log line.
MAX_REASON_CHARS = 120
# Redirects are followed by hand so that every hop passes the URL guard.
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

__all__ = ["FetchLimits", "check_url", "fetch_json", "parse_retry_after", "redact_url"]


@dataclass(frozen=True)
class FetchLimits:
    """How long to wait for a server and how much of its answer to read."""

    connect_timeout: float
    read_timeout: float
    max_bytes: int
    # Loopback, private and link-local destinations (TASKYARD_HTTP_ALLOW_PRIVATE).
    allow_private: bool = False


def parse_retry_after(value: str | None, *, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


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
            "the server is busy or failing, the fetch will be retried",
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
            f"read {limits.read_timeout:g} s); the fetch will be retried"
        ) from exc
    raise FetchFailed(
        f"GET {safe_url} failed ({type(exc).__name__}); "
        "check that the host is reachable, the fetch will be retried"
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
