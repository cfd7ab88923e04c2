"""A tenant's webhook: its URL and signing key, signed deliveries, and verification for receivers.

A delivery is a JSON POST with `Taskyard-Signature: t=<unix ts>,v1=<hex>`, where
the hex is HMAC-SHA256, keyed by the tenant's signing key, over `"<ts>.<body>"`.
Signing the timestamp lets a receiver reject a replayed delivery.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from typing import Any, TypedDict

import requests
from sqlalchemy.orm import Session

from db.models import Tenant
from services import locker
from services.errors import NotFound, PermanentError, TransientError, ValidationFailed
from services.http import FetchLimits, parse_retry_after, redact_url
from services.locker import Secret
from services.url_guard import check_url

SIGNING_KEY = "webhook.signing_key"
SIGNATURE_HEADER = "Taskyard-Signature"
EVENT_HEADER = "Taskyard-Event"
DELIVERY_HEADER = "Taskyard-Delivery"
# Five minutes: longer than any sane clock skew, short enough to make a replay useless.
DEFAULT_TOLERANCE_SECONDS = 300
MAX_URL_CHARS = 2_000
MAX_EVENT_CHARS = 100


class WebhookRejected(PermanentError):
    """The receiver answered with a 4xx (other than 429): sending again would not help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="webhook_rejected")


class WebhookFailed(TransientError):
    """The receiver was unreachable, timed out, or answered 429 or 5xx: retry later."""


class InvalidSignature(ValueError):
    """A delivery's signature header is missing, malformed, wrong or too old."""


class Delivery(TypedDict):
    """What a delivery did, for the job record (no body, no key)."""

    event: str
    status: int
    url: str


def set_webhook(
    session: Session,
    tenant_id: int,
    url: str,
    *,
    secret_keys: Sequence[str],
    signing_key: str | None = None,
    allow_private: bool = False,
) -> Secret:
    """Set a tenant's webhook URL and signing key (random unless given); returns the key."""
    tenant = _tenant(session, tenant_id)
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise ValidationFailed(f"webhook URL must be a string of at most {MAX_URL_CHARS} chars")
    check_url(url, allow_private=allow_private)
    if signing_key is not None and len(signing_key) < 16:
        raise ValidationFailed("webhook signing key must be at least 16 characters long")
    key = signing_key if signing_key is not None else secrets.token_hex(32)
    locker.set_secret(session, tenant_id, SIGNING_KEY, key, secret_keys=secret_keys)
    tenant.webhook_url = url
    session.flush()
    return Secret(key)


def clear_webhook(session: Session, tenant_id: int) -> bool:
    """Remove a tenant's webhook URL and signing key; whether it had a URL."""
    tenant = _tenant(session, tenant_id)
    had = tenant.webhook_url is not None
    tenant.webhook_url = None
    locker.delete_secret(session, tenant_id, SIGNING_KEY)
    session.flush()
    return had


def webhook_url(session: Session, tenant_id: int) -> str | None:
    """The tenant's webhook URL, or None (also for a tenant that does not exist)."""
    tenant = session.get(Tenant, tenant_id)
    return tenant.webhook_url if tenant is not None else None


def sign(secret: Secret, timestamp: int, body: bytes) -> str:
    """The `Taskyard-Signature` header value for `body` sent at `timestamp`."""
    digest = hmac.new(
        secret.reveal().encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: Secret | str,
    header: str | None,
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: dt.datetime,
) -> int:
    """Check a delivery's signature and age; returns its timestamp or raises InvalidSignature."""
    key = secret.reveal() if isinstance(secret, Secret) else secret
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    stamps = parts.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        raise InvalidSignature(f"{SIGNATURE_HEADER} header has no valid t=<unix timestamp>")
    timestamp = int(stamps[0])
    expected = sign(Secret(key), timestamp, body).partition("v1=")[2]
    if not any(hmac.compare_digest(expected, got) for got in parts.get("v1", [])):
        raise InvalidSignature("signature does not match the body and the signing key")
    age = now.timestamp() - timestamp
    if abs(age) > tolerance_seconds:
        raise InvalidSignature(
            f"signature timestamp is {age:.0f} s away from now "
            f"(tolerance {tolerance_seconds:g} s): a replay or a wrong clock"
        )
    return timestamp


def deliver(
    session: Session,
    tenant_id: int,
    event: str,
    payload: Any,
    *,
    http: requests.Session,
    limits: FetchLimits,
    secret_keys: Sequence[str],
    allow_private: bool,
    delivery_id: str,
    now: dt.datetime,
) -> Delivery | None:
    """POST one signed event to the tenant's webhook; None when no webhook is configured."""
    url = webhook_url(session, tenant_id)
    if url is None:
        return None
    if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_CHARS:
        raise ValidationFailed(f"webhook event must be 1-{MAX_EVENT_CHARS} characters")
    # Checked again at delivery: the address a name resolves to may have changed.
    check_url(url, allow_private=allow_private)
    secret = locker.get_secret(session, tenant_id, SIGNING_KEY, secret_keys=secret_keys)
    timestamp = int(now.timestamp())
    body = json.dumps(
        {
            "event": event,
            "tenant_id": tenant_id,
            "payload": payload,
            "sent_at": now.astimezone(dt.UTC).isoformat(),
            "id": delivery_id,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
    }
    safe_url = redact_url(url)
    try:
        with http.post(
            url,
            data=body,
            headers=headers,
            timeout=(limits.connect_timeout, limits.read_timeout),
            # A redirect would leave the checked address.
            allow_redirects=False,
            stream=True,
        ) as response:
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=now)
    except requests.exceptions.RequestException as exc:
        raise WebhookFailed(
            f"POST {safe_url} ({event}) failed ({type(exc).__name__}); "
            "check that the receiver is up"
        ) from exc
    if status == 429 or status >= 500:
        raise WebhookFailed(
            f"POST {safe_url} ({event}) answered {status}; the receiver is busy or failing",
            retry_after=retry_after,
        )
    if not 200 <= status < 300:
        raise WebhookRejected(
            f"POST {safe_url} ({event}) answered {status}; the receiver refused the delivery, "
            "fix the receiver or the webhook URL, then requeue"
        )
    return {"event": event, "status": status, "url": safe_url}


def _tenant(session: Session, tenant_id: int) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    return tenant
