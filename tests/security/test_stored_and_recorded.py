"""The isolation holes found outside the consumer: URLs stored unchecked, feed passwords in
plain text, a dead job's error promising a retry, and the engine's own route check."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from actors.base import taskyard_actor
from db.models import DeadLetter, Job
from services.errors import ValidationFailed
from services.http import fetch_json
from services.integrations import add_integration
from services.locker import get_secret
from services.tenants import create_tenant
from settings import Settings
from tests.unit.middleware.test_dead_letter_recording import QUEUE, dead_letter, run
from tests.unit.middleware.test_dead_letter_recording import sessions as sessions
from tests.unit.middleware.test_dead_letter_recording import stub as stub
from tests.unit.services.test_http import LIMITS
from transport.rabbitmq import publish_now

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("http_feed", {"url": "http://169.254.169.254/latest/meta-data/"}),
        ("http_feed", {"url": "http://[::1]/feed"}),
        ("http_feed", {"url": "http://10.0.0.1/feed"}),
        ("github", {"org": "acme", "base_url": "http://169.254.169.254/"}),
    ],
)
def test_integration_urls_are_checked_when_stored(
    db_session: Session, kind: str, config: dict[str, str]
) -> None:
    tenant = create_tenant(db_session, "stored-urls")
    with pytest.raises(ValidationFailed, match=r"integration not added: .* refused"):
        add_integration(db_session, tenant.id, kind, config)


@pytest.mark.integration
def test_a_feed_urls_password_is_kept_in_the_locker_not_the_config(
    db_session: Session, settings: Settings
) -> None:
    tenant = create_tenant(db_session, "feed-password")
    url = "https://reader:s3cr3t-pw@93.184.215.14/feed.json"
    integration = add_integration(
        db_session, tenant.id, "http_feed", {"url": url}, secret_keys=settings.secret_keys
    )
    stored = db_session.scalar(
        text("SELECT config::text FROM integrations WHERE id = :id"), {"id": integration.id}
    )
    assert "s3cr3t-pw" not in str(stored) and "93.184.215.14/feed.json" in str(stored)
    key = f"http_feed.{integration.id}.userinfo"
    secret = get_secret(db_session, tenant.id, key, secret_keys=settings.secret_keys)
    assert "s3cr3t-pw" in secret.reveal()


def test_a_dead_jobs_error_says_it_gave_up_not_that_it_will_be_retried(
    stub: StubBroker, sessions: sessionmaker[Session]
) -> None:
    def unreachable(tenant_id: int) -> None:
        # Nothing listens on port 1: a transient FetchFailed on every attempt.
        with requests.Session() as http:
            fetch_json(http, "http://127.0.0.1:1/feed", LIMITS)

    message_id = run(stub, unreachable, max_attempts=2)

    with sessions() as session:
        job = session.get(Job, message_id)
    assert job is not None and job.status == "dead"
    assert "FetchFailed" in (job.error or "") and "gave up" in (job.error or "")
    assert "retried" not in (job.error or "") and "retrying" not in (job.error or "")
    assert dead_letter(sessions, message_id).error == job.error


def test_no_service_error_promises_a_retry() -> None:
    # Whether a failure is retried is the engine's decision, appended to the recorded error.
    promising = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "services").rglob("*.py"))
        if "will be retried" in path.read_text()
    ]
    assert promising == []


def test_the_engine_refuses_a_system_actor_on_a_tenant_queue_on_any_broker(
    stub: StubBroker, sessions: sessionmaker[Session]
) -> None:
    # Given a system actor, and a message of it put on tenant 1's queue (no consumer screens it)
    ran: list[int] = []
    actor = taskyard_actor(name="wipe", tenant_scoped=False, broker=stub)(
        lambda tenant_id: ran.append(tenant_id)
    )
    message = actor.message(tenant_id=1).copy(queue_name=QUEUE)
    publish_now(stub, message)
    stub.join(QUEUE, fail_fast=False, timeout=10_000)
    # Then it never ran, and is a dead letter of no tenant
    assert ran == []
    row = dead_letter(sessions, message.message_id)
    assert (row.reason, row.tenant_id) == ("wrong_queue", None)
    with sessions() as session:
        assert session.scalars(select(DeadLetter.reason)).all() == ["wrong_queue"]
