"""`sync_integration` of a github integration through RabbitMQ, a real worker and PostgreSQL.

The fake GitHub (pytest-httpserver on 127.0.0.1) pages its lists two items at a
time with Link headers and can be told to answer 429, 403 rate limits, 5xx,
404 or malformed JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Request, Response

import brokers
from actors import sync_integration
from db.models import DeadLetter, GithubMember, GithubRepository, Integration, Job
from services import locker, webhooks
from services.integrations import add_integration
from tests.support import WorkerProcess, wait_for
from tests.unit.services.test_integrations_github import FakeGithub, member, repo

pytestmark = pytest.mark.integration

TOKEN = "ghp_integration_TOKEN_never_shown_42"


@pytest.fixture
def github(httpserver: HTTPServer) -> FakeGithub:
    """The fake GitHub with its standard organisation, recording when each request came."""
    fake = FakeGithub(httpserver, TOKEN)
    return fake


def setup_integration(
    sessions: sessionmaker[Session], tenant_id: int, github: FakeGithub, *, token: bool = True
) -> int:
    """A committed github integration on the fake server (and its token in the locker)."""
    with sessions.begin() as session:
        if token:
            # The run's key (tests/conftest.py), which every worker of the run has.
            locker.set_secret(
                session, tenant_id, "github.token", TOKEN, secret_keys=brokers.settings.secret_keys
            )
        integration = add_integration(
            session,
            tenant_id,
            "github",
            {"org": "acme", "base_url": github.base_url},
            allow_private=True,
        )
        return integration.id


def run_sync(
    sessions: sessionmaker[Session], tenant_id: int, integration_id: int, timeout: float = 30
) -> Job:
    """Send one sync and wait for its job record to be final."""
    message = sync_integration.send(tenant_id=tenant_id, integration_id=integration_id)

    def final() -> Job | None:
        with sessions() as session:
            job = session.get(Job, message.message_id)
            return job if job is not None and job.status in ("succeeded", "dead") else None

    job: Job = wait_for(final, timeout=timeout, what=f"sync job {message.message_id}")
    return job


def synced(sessions: sessionmaker[Session], integration_id: int) -> dict[str, Any]:
    """Rows of one integration: logins, repository names, and the repositories' updated_at."""
    with sessions() as session:
        members = session.scalars(
            select(GithubMember).where(GithubMember.integration_id == integration_id)
        )
        repos = list(
            session.scalars(
                select(GithubRepository).where(GithubRepository.integration_id == integration_id)
            )
        )
        return {
            "members": {m.github_id: m.login for m in members},
            "repos": {r.github_id: r.name for r in repos},
            "stamps": {r.github_id: r.updated_at for r in repos},
        }


def integration_row(sessions: sessionmaker[Session], integration_id: int) -> Integration:
    """The integration as committed."""
    with sessions() as session:
        row = session.get(Integration, integration_id)
        assert row is not None
        session.expunge(row)
        return row


def no_token_anywhere(
    sessions: sessionmaker[Session], tenant_id: int, worker: WorkerProcess
) -> None:
    """The token is in no job record, dead letter or worker log line."""
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.tenant_id == tenant_id)).all()
        dead = session.scalars(select(DeadLetter).where(DeadLetter.tenant_id == tenant_id)).all()
        integrations = session.scalars(
            select(Integration).where(Integration.tenant_id == tenant_id)
        ).all()
    assert jobs
    for job in jobs:
        assert TOKEN not in f"{job.args} {job.result} {job.error}"
    for letter in dead:
        assert TOKEN not in f"{letter.error} {letter.traceback} {letter.message} {letter.raw_body}"
    for integration in integrations:
        assert TOKEN not in f"{integration.config} {integration.last_summary}"
    assert TOKEN not in worker.log_path.read_text(errors="replace")


def test_sync_pages_upserts_is_idempotent_and_removes_vanished_rows(
    worker: WorkerProcess,
    github: FakeGithub,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("github")
    integration_id = setup_integration(sessions, tenant_id, github)

    first = run_sync(sessions, tenant_id, integration_id)

    assert first.status == "succeeded", first.error
    assert first.result == {
        "members": {"added": 3, "updated": 0, "removed": 0},
        "repositories": {"added": 4, "updated": 0, "removed": 0},
    }
    rows = synced(sessions, integration_id)
    assert rows["members"] == {1: "ada", 2: "brian", 3: "cleo"}
    assert rows["repos"] == {10: "api", 11: "web", 12: "docs", 13: "ops"}
    saved = integration_row(sessions, integration_id)
    assert saved.last_status == "succeeded"
    assert saved.last_summary == first.result
    assert saved.last_synced_at is not None

    second = run_sync(sessions, tenant_id, integration_id)

    assert second.status == "succeeded", second.error
    assert second.result == {
        "members": {"added": 0, "updated": 0, "removed": 0},
        "repositories": {"added": 0, "updated": 0, "removed": 0},
    }
    assert synced(sessions, integration_id) == rows  # updated_at untouched too

    github.lists["members"] = [member(1, "ada"), member(3, "cleo")]
    github.lists["repos"] = [repo(10, "api", "described now"), repo(14, "new")]
    third = run_sync(sessions, tenant_id, integration_id)

    assert third.status == "succeeded", third.error
    assert third.result == {
        "members": {"added": 0, "updated": 0, "removed": 1},
        "repositories": {"added": 1, "updated": 1, "removed": 3},
    }
    after = synced(sessions, integration_id)
    assert after["members"] == {1: "ada", 3: "cleo"}
    assert after["repos"] == {10: "api", 14: "new"}
    assert after["stamps"][10] > rows["stamps"][10]
    no_token_anywhere(sessions, tenant_id, worker)


def test_rate_limits_are_waited_out_not_failed(
    worker: WorkerProcess,
    github: FakeGithub,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("github-limited")
    integration_id = setup_integration(sessions, tenant_id, github)
    github.fail("members", 429, '{"message": "slow down"}', Retry_After="1")
    reset = int(dt.datetime.now(dt.UTC).timestamp()) + 3
    github.fail(
        "repos",
        403,
        '{"message": "API rate limit exceeded"}',
        X_RateLimit_Remaining="0",
        X_RateLimit_Reset=str(reset),
    )
    started = time.monotonic()

    job = run_sync(sessions, tenant_id, integration_id)

    assert job.status == "succeeded", job.error
    assert job.attempts == 3
    assert job.result is not None
    assert job.result["members"]["added"] == 3
    # The second wait lasts until X-RateLimit-Reset (2 to 3 s from the start).
    assert time.monotonic() - started >= 1.9
    assert github.seen_auth.count(None) == 0
    no_token_anywhere(sessions, tenant_id, worker)


def test_5xx_heals_on_retry(
    worker: WorkerProcess,
    github: FakeGithub,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("github-5xx")
    integration_id = setup_integration(sessions, tenant_id, github)
    github.fail("members", 500)
    github.fail("members", 502)

    job = run_sync(sessions, tenant_id, integration_id)

    assert job.status == "succeeded", job.error
    assert job.attempts == 3
    assert synced(sessions, integration_id)["members"] == {1: "ada", 2: "brian", 3: "cleo"}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, '{"message": "Not Found"}', "answered 404 Not Found"),
        (200, '[{"id": 1, "login": ', "is not JSON"),
    ],
)
def test_permanent_failure_is_dead_at_once_with_a_clear_error(
    worker: WorkerProcess,
    github: FakeGithub,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    status: int,
    body: str,
    expected: str,
) -> None:
    tenant_id = make_tenant("github-dead")
    integration_id = setup_integration(sessions, tenant_id, github)
    run_sync(sessions, tenant_id, integration_id)  # rows to keep
    github.fail("repos", status, body)

    job = run_sync(sessions, tenant_id, integration_id)

    assert job.status == "dead"
    assert job.attempts == 1
    assert job.error is not None
    assert expected in job.error
    assert "/orgs/acme/repos" in job.error
    with sessions() as session:
        letter = session.scalar(select(DeadLetter).where(DeadLetter.message_id == job.message_id))
    assert letter is not None
    assert letter.reason == "fetch_refused"
    saved = integration_row(sessions, integration_id)
    assert saved.last_status == "failed"
    assert saved.last_summary is not None
    assert expected in saved.last_summary["error"]
    # The failed sync removed nothing.
    assert len(synced(sessions, integration_id)["repos"]) == 4
    no_token_anywhere(sessions, tenant_id, worker)


def test_missing_token_is_dead_and_says_how_to_fix_it(
    worker: WorkerProcess,
    github: FakeGithub,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("github-no-token")
    integration_id = setup_integration(sessions, tenant_id, github, token=False)

    job = run_sync(sessions, tenant_id, integration_id)

    assert job.status == "dead"
    assert job.error is not None
    assert f"taskyard locker set --tenant {tenant_id} github.token" in job.error
    assert github.seen_auth == []


def test_webhook_hears_synced_and_failed(
    worker: WorkerProcess,
    github: FakeGithub,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant_id = make_tenant("github-hooked")
    integration_id = setup_integration(sessions, tenant_id, github)
    heard: list[tuple[str | None, dict[str, Any]]] = []

    def hook(request: Request) -> Response:
        heard.append((request.headers.get("Taskyard-Event"), json.loads(request.get_data())))
        return Response("{}", status=200, content_type="application/json")

    httpserver.expect_request("/hook", method="POST").respond_with_handler(hook)
    with sessions.begin() as session:
        webhooks.set_webhook(
            session,
            tenant_id,
            httpserver.url_for("/hook"),
            secret_keys=brokers.settings.secret_keys,
            allow_private=True,
        )

    assert run_sync(sessions, tenant_id, integration_id).status == "succeeded"
    github.fail("members", 404, '{"message": "Not Found"}')
    assert run_sync(sessions, tenant_id, integration_id).status == "dead"

    wait_for(lambda: len(heard) >= 2, what="two webhook deliveries")
    events = {event: body for event, body in heard}
    assert set(events) == {"integration.synced", "integration.failed"}
    synced_payload = events["integration.synced"]["payload"]
    failed_payload = events["integration.failed"]["payload"]
    assert TOKEN not in json.dumps(heard)
    assert synced_payload["integration_id"] == integration_id
    assert synced_payload["kind"] == "github"
    assert synced_payload["members"] == {"added": 3, "updated": 0, "removed": 0}
    assert failed_payload["integration_id"] == integration_id
    assert "404 Not Found" in failed_payload["error"]
