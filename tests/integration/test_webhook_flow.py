"""notify_webhook through a real worker: signed deliveries, retries, refusals, ingest events."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Request, Response

from actors import ingest_resources, notify_webhook
from db.models import DeadLetter, Job
from services import webhooks
from services.locker import Secret
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

# The run's key (tests/conftest.py), so that any worker of the run can read the
# signing keys, whichever of them picks a delivery up.
SECRET_KEY = os.environ.get("TASKYARD_SECRET_KEYS") or Fernet.generate_key().decode()


@dataclass
class Receiver:
    """A webhook endpoint that verifies every delivery and answers from a script."""

    key: Secret | None = None
    # One (status, seconds to sleep, extra headers) per request; the last one repeats.
    script: list[tuple[int, float, dict[str, str]]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> Response:
        """Verify the signature, record the delivery, answer as scripted."""
        body = request.get_data()
        assert self.key is not None
        try:
            webhooks.verify_signature(
                self.key,
                request.headers.get("Taskyard-Signature"),
                body,
                now=dt.datetime.now(dt.UTC),
            )
            verified = True
        except webhooks.InvalidSignature:
            verified = False
        with self.lock:
            n = len(self.received)
            status, sleep, headers = self.script[min(n, len(self.script) - 1)]
            self.received.append(
                {
                    "at": time.monotonic(),
                    "verified": verified,
                    "body": json.loads(body),
                    "event": request.headers.get("Taskyard-Event"),
                    "delivery": request.headers.get("Taskyard-Delivery"),
                }
            )
        time.sleep(sleep)
        return Response("{}", status=status, headers=headers, content_type="application/json")


@pytest.fixture(scope="module")
def hook_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """A worker with a locker key, loopback allowed, and a short read timeout."""
    return start_worker(
        TASKYARD_SECRET_KEYS=SECRET_KEY,
        TASKYARD_HTTP_ALLOW_PRIVATE="true",
        TASKYARD_HTTP_READ_TIMEOUT="0.5",
        TASKYARD_MAX_ATTEMPTS="3",
    )


@pytest.fixture(scope="module")
def hook_server() -> Iterator[HTTPServer]:
    """A receiver that answers requests concurrently: a slow answer holds up no other."""
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def httpserver(hook_server: HTTPServer) -> Iterator[HTTPServer]:
    """This module's threaded server in place of pytest-httpserver's own."""
    yield hook_server
    hook_server.clear()


@pytest.fixture
def receiver(
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> Callable[..., tuple[int, Receiver]]:
    """A tenant whose webhook points at a fresh scripted receiver."""

    def make(*script: tuple[int, float, dict[str, str]]) -> tuple[int, Receiver]:
        tenant_id = make_tenant("hooks")
        recv = Receiver(script=list(script) or [(200, 0, {})])
        path = f"/hook/{tenant_id}"
        httpserver.expect_request(path, method="POST").respond_with_handler(recv.handle)
        with sessions.begin() as session:
            recv.key = webhooks.set_webhook(
                session,
                tenant_id,
                httpserver.url_for(path),
                secret_keys=SECRET_KEY.split(","),
                allow_private=True,
            )
        return tenant_id, recv

    return make


def job_in(sessions: sessionmaker[Session], message_id: str, status: str) -> Job | None:
    with sessions() as session:
        job = session.get(Job, message_id)
        return job if job is not None and job.status == status else None


def test_a_delivery_is_signed_and_recorded(
    hook_worker: WorkerProcess,
    receiver: Callable[..., tuple[int, Receiver]],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, recv = receiver()
    message = notify_webhook.send(tenant_id=tenant_id, event="test.ping", payload={"n": 1})
    job = wait_for(lambda: job_in(sessions, message.message_id, "succeeded"), what="delivery")
    (got,) = recv.received
    assert got["verified"] is True
    assert got["event"] == "test.ping"
    assert got["delivery"] == message.message_id
    assert got["body"]["payload"] == {"n": 1}
    assert got["body"]["tenant_id"] == tenant_id
    assert got["body"]["id"] == message.message_id
    assert job.result == {"event": "test.ping", "status": 200, "url": job.result["url"]}
    assert recv.key is not None and recv.key.reveal() not in json.dumps(job.args)


def test_5xx_is_retried_honouring_retry_after_then_succeeds(
    hook_worker: WorkerProcess,
    receiver: Callable[..., tuple[int, Receiver]],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, recv = receiver((500, 0, {}), (503, 0, {"Retry-After": "2"}), (200, 0, {}))
    message = notify_webhook.send(tenant_id=tenant_id, event="test.retry", payload=None)
    job = wait_for(lambda: job_in(sessions, message.message_id, "succeeded"), what="delivery")
    assert job.attempts == 3
    assert [r["verified"] for r in recv.received] == [True, True, True]
    # The same delivery id on every attempt, so a receiver can deduplicate.
    assert {r["delivery"] for r in recv.received} == {message.message_id}
    waited = recv.received[2]["at"] - recv.received[1]["at"]
    assert waited >= 1.9, f"Retry-After: 2 was not honoured (waited {waited:.2f} s)"


def test_a_timeout_is_retried(
    hook_worker: WorkerProcess,
    receiver: Callable[..., tuple[int, Receiver]],
    sessions: sessionmaker[Session],
) -> None:
    # 2.5 s: longer than the read timeout of every worker of the run (at most 2 s)
    tenant_id, recv = receiver((200, 2.5, {}), (200, 0, {}))
    message = notify_webhook.send(tenant_id=tenant_id, event="test.slow", payload={})
    job = wait_for(lambda: job_in(sessions, message.message_id, "succeeded"), what="delivery")
    assert job.attempts == 2
    assert len(recv.received) == 2


def test_a_4xx_is_dead_at_once(
    hook_worker: WorkerProcess,
    receiver: Callable[..., tuple[int, Receiver]],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, recv = receiver((400, 0, {}))
    message = notify_webhook.send(tenant_id=tenant_id, event="test.bad", payload={})
    job = wait_for(lambda: job_in(sessions, message.message_id, "dead"), what="dead delivery")
    assert job.attempts == 1
    assert "answered 400" in (job.error or "")
    assert len(recv.received) == 1
    with sessions() as session:
        dead = session.get(DeadLetter, message.message_id)
        assert dead is not None and dead.reason == "webhook_rejected"


def test_no_webhook_is_a_skipped_success(
    hook_worker: WorkerProcess,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("nohook")
    message = notify_webhook.send(tenant_id=tenant_id, event="test.none", payload={})
    job = wait_for(lambda: job_in(sessions, message.message_id, "succeeded"), what="skip")
    assert job.result == {"skipped": "no webhook"}


def test_ingest_completed_and_failed_are_notified(
    hook_worker: WorkerProcess,
    receiver: Callable[..., tuple[int, Receiver]],
    httpserver: HTTPServer,
    sessions: sessionmaker[Session],
) -> None:
    tenant_id, recv = receiver()
    httpserver.expect_request("/feed-ok.json").respond_with_json(
        [{"id": f"r{n}", "name": "x", "creation_date": "2024-01-01"} for n in range(3)]
    )
    httpserver.expect_request("/feed-gone.json").respond_with_data("gone", status=404)

    ok = ingest_resources.send(tenant_id=tenant_id, source_url=httpserver.url_for("/feed-ok.json"))
    wait_for(lambda: len(recv.received) >= 1, what="ingest.completed")
    bad = ingest_resources.send(
        tenant_id=tenant_id, source_url=httpserver.url_for("/feed-gone.json")
    )
    # The failure is sent from the give-up hook, once the failure is recorded.
    wait_for(lambda: len(recv.received) >= 2, timeout=60, what="ingest.failed")

    completed, failed = recv.received[0], recv.received[1]
    assert completed["event"] == "ingest.completed" and completed["verified"]
    payload = completed["body"]["payload"]
    assert (payload["status"], payload["valid"], payload["processed"]) == ("completed", 3, 3)
    assert failed["event"] == "ingest.failed" and failed["verified"]
    assert "404" in failed["body"]["payload"]["error"]
    with sessions() as session:
        ok_job = session.get(Job, ok.message_id)
        assert ok_job is not None and ok_job.status == "succeeded"
        assert session.scalar(
            select(DeadLetter.reason).where(DeadLetter.message_id == bad.message_id)
        )
    time.sleep(1)
    assert len(recv.received) == 2, "one notification per ingest outcome"
