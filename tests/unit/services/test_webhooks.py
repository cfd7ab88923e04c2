"""Webhooks: the signing key in the locker, signed deliveries, status handling, verification."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from db.models import Tenant
from services import locker, webhooks
from services.errors import FetchRefused, NotFound, ValidationFailed
from services.http import FetchLimits
from tests.unit.services.conftest import CannedFeed

KEYS = [Fernet.generate_key().decode()]
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
LIMITS = FetchLimits(connect_timeout=1, read_timeout=1, max_bytes=1000)
URL = "https://hooks.example/in"


def _deliver(session: Session, tenant: Tenant, http: requests.Session) -> webhooks.Delivery | None:
    return webhooks.deliver(
        session,
        tenant.id,
        "ingest.completed",
        {"ingest_id": 3},
        http=http,
        limits=LIMITS,
        secret_keys=KEYS,
        # No DNS in unit tests: the guard's resolving is tested in its own module.
        allow_private=True,
        delivery_id="msg-1",
        now=NOW,
    )


class Recorder(CannedFeed):
    """The canned transport, keeping every request it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[requests.PreparedRequest] = []

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, *args: object, **kwargs: object
    ) -> requests.Response:
        self.requests.append(request)
        return super().send(request)


@pytest.fixture
def receiver() -> Recorder:
    return Recorder()


@pytest.fixture
def hook_http(receiver: Recorder) -> requests.Session:
    session = requests.Session()
    session.mount("https://", receiver)
    return session


def test_a_delivery_is_signed_and_verifies(
    sqlite_session: Session, tenant: Tenant, hook_http: requests.Session, receiver: Recorder
) -> None:
    key = webhooks.set_webhook(sqlite_session, tenant.id, URL, secret_keys=KEYS, allow_private=True)
    assert repr(key) == "Secret('***')"

    result = _deliver(sqlite_session, tenant, hook_http)

    assert result == {"event": "ingest.completed", "status": 200, "url": URL}
    (sent,) = receiver.requests
    body = sent.body if isinstance(sent.body, bytes) else str(sent.body).encode()
    assert json.loads(body) == {
        "event": "ingest.completed",
        "tenant_id": tenant.id,
        "payload": {"ingest_id": 3},
        "sent_at": NOW.isoformat(),
        "id": "msg-1",
    }
    assert sent.headers["Taskyard-Event"] == "ingest.completed"
    assert sent.headers["Taskyard-Delivery"] == "msg-1"
    header = sent.headers["Taskyard-Signature"]
    assert webhooks.verify_signature(key, header, body, now=NOW) == int(NOW.timestamp())
    with pytest.raises(webhooks.InvalidSignature, match="does not match"):
        webhooks.verify_signature(key, header, body + b" ", now=NOW)
    with pytest.raises(webhooks.InvalidSignature, match="does not match"):
        webhooks.verify_signature("another-key-0123456789", header, body, now=NOW)


def test_a_replay_older_than_the_tolerance_is_rejected() -> None:
    secret = locker.Secret("k" * 32)
    header = webhooks.sign(secret, int(NOW.timestamp()), b"{}")
    later = NOW + dt.timedelta(seconds=301)
    with pytest.raises(webhooks.InvalidSignature, match="replay"):
        webhooks.verify_signature(secret, header, b"{}", now=later)
    assert webhooks.verify_signature(secret, header, b"{}", now=later, tolerance_seconds=400)


@pytest.mark.parametrize("header", [None, "", "v1=abc", "t=abc,v1=00", "t=1,t=2,v1=00"])
def test_malformed_signature_headers_are_rejected(header: str | None) -> None:
    with pytest.raises(webhooks.InvalidSignature):
        webhooks.verify_signature("k" * 32, header, b"{}", now=NOW)


def test_no_webhook_means_no_delivery(
    sqlite_session: Session, tenant: Tenant, hook_http: requests.Session, receiver: Recorder
) -> None:
    assert _deliver(sqlite_session, tenant, hook_http) is None
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, webhooks.WebhookFailed),
        (503, webhooks.WebhookFailed),
        (429, webhooks.WebhookFailed),
        (400, webhooks.WebhookRejected),
        (404, webhooks.WebhookRejected),
        (410, webhooks.WebhookRejected),
        (301, webhooks.WebhookRejected),
    ],
)
def test_status_codes_map_to_retry_or_give_up(
    sqlite_session: Session,
    tenant: Tenant,
    hook_http: requests.Session,
    receiver: Recorder,
    status: int,
    error: type[Exception],
) -> None:
    webhooks.set_webhook(sqlite_session, tenant.id, URL, secret_keys=KEYS, allow_private=True)
    receiver.serve({}, status=status)
    with pytest.raises(error, match=str(status)):
        _deliver(sqlite_session, tenant, hook_http)


def test_the_signing_key_lives_in_the_locker_and_clear_removes_both(
    sqlite_session: Session, tenant: Tenant
) -> None:
    webhooks.set_webhook(
        sqlite_session,
        tenant.id,
        URL,
        secret_keys=KEYS,
        signing_key="given-key-0123456789",
        allow_private=True,
    )
    stored = locker.get_secret(sqlite_session, tenant.id, webhooks.SIGNING_KEY, secret_keys=KEYS)
    assert stored.reveal() == "given-key-0123456789"
    assert webhooks.clear_webhook(sqlite_session, tenant.id) is True
    assert webhooks.webhook_url(sqlite_session, tenant.id) is None
    assert locker.list_secret_keys(sqlite_session, tenant.id) == []


@pytest.mark.parametrize("url", ["ftp://hooks.example/x", "http://127.0.0.1:9/x", "not a url"])
def test_bad_or_private_urls_are_refused(sqlite_session: Session, tenant: Tenant, url: str) -> None:
    with pytest.raises(FetchRefused):
        webhooks.set_webhook(sqlite_session, tenant.id, url, secret_keys=KEYS)
    assert webhooks.webhook_url(sqlite_session, tenant.id) is None


def test_short_signing_key_and_unknown_tenant_are_clear_errors(
    sqlite_session: Session, tenant: Tenant
) -> None:
    with pytest.raises(ValidationFailed, match="at least 16"):
        webhooks.set_webhook(
            sqlite_session, tenant.id, URL, secret_keys=KEYS, signing_key="x", allow_private=True
        )
    with pytest.raises(NotFound, match="tenant 999"):
        webhooks.set_webhook(sqlite_session, 999, URL, secret_keys=KEYS, allow_private=True)


def test_a_worker_without_secret_keys_fails_the_delivery_clearly(
    sqlite_session: Session, tenant: Tenant, hook_http: requests.Session, receiver: Recorder
) -> None:
    webhooks.set_webhook(sqlite_session, tenant.id, URL, secret_keys=KEYS, allow_private=True)
    with pytest.raises(locker.NoSecretKey, match="set TASKYARD_SECRET_KEYS"):
        webhooks.deliver(
            sqlite_session,
            tenant.id,
            "x.y",
            {},
            http=hook_http,
            limits=LIMITS,
            secret_keys=[],
            allow_private=True,
            delivery_id="m",
            now=NOW,
        )
    assert receiver.requests == []
