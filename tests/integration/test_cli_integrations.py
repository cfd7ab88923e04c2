"""`taskyard integration ...` as run: add, list, sync on a real worker, remove, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, LockerEntry
from services.locker import get_secret
from settings import Settings
from tests.integration.cli_harness import as_json, assert_one_line_error, taskyard
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

FEED = [{"id": "r1", "name": "First", "creation_date": "2024-01-02"}]


@pytest.fixture(autouse=True)
def _database(migrated_database: str) -> None:
    """Every test here runs the CLI on this run's migrated database."""


def test_an_http_feed_integration_is_added_synced_and_removed(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    tenant = str(make_tenant("cli-integration"))
    httpserver.expect_request("/feed.json").respond_with_json(FEED)
    config = json.dumps({"url": httpserver.url_for("/feed.json")})

    added = as_json(
        taskyard(
            "integration", "add", "--tenant", tenant, "http_feed", "--config", config, "--json"
        )
    )
    listed = as_json(taskyard("integration", "list", "--tenant", tenant, "--json"))
    synced = as_json(taskyard("integration", "sync", str(added["id"]), "--json"))

    def finished() -> str | None:
        with sessions() as session:
            job = session.get(Job, synced["message_id"])
            return job.status if job is not None and job.status == "succeeded" else None

    assert added["kind"] == "http_feed"
    assert [i["id"] for i in listed] == [added["id"]]
    wait_for(finished, what="the sync job")
    after = as_json(taskyard("integration", "list", "--tenant", tenant, "--json"))
    assert after[0]["last_synced_at"] is not None

    assert taskyard("integration", "remove", str(added["id"])).returncode == 0
    assert as_json(taskyard("integration", "list", "--tenant", tenant, "--json")) == []
    gone = taskyard("integration", "sync", str(added["id"]))
    assert str(added["id"]) in assert_one_line_error(gone, 1)


@pytest.mark.parametrize(
    ("kind", "config", "expected"),
    [
        ("http_feed", "{nope", "not valid JSON"),
        ("carrier_pigeon", "{}", "unknown integration kind 'carrier_pigeon'"),
        ("http_feed", '{"url": "ftp://x"}', "invalid http_feed config"),
    ],
)
def test_integration_add_refuses_bad_input(
    make_tenant: Callable[[str], int], kind: str, config: str, expected: str
) -> None:
    tenant = str(make_tenant("cli-integration-bad"))

    line = assert_one_line_error(
        taskyard("integration", "add", "--tenant", tenant, kind, "--config", config), 1
    )

    assert expected in line
    assert as_json(taskyard("integration", "list", "--tenant", tenant, "--json")) == []


def test_integration_of_an_unknown_tenant_fails() -> None:
    line = assert_one_line_error(taskyard("integration", "list", "--tenant", "987654321"), 1)

    assert "987654321" in line


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"url": "http://169.254.169.254/latest/meta-data/"},
            "its url http://169.254.169.254/latest/meta-data/ refused: host '169.254.169.254' "
            "resolves to 169.254.169.254, a link-local address",
        ),
        ({"url": "http://[::1]/feed"}, "its url http://[::1]/feed refused"),
        ({"url": "http://10.0.0.1/feed"}, "a private address"),
        ({"url": "http://alice:s3cret-pw@127.0.0.1:8080/feed"}, "http://127.0.0.1:8080/feed"),
        ({"url": "http://feeds.invalid/feed"}, "host 'feeds.invalid' does not resolve"),
        ({"url": "file:///etc/passwd"}, "not an http or https URL"),
    ],
)
def test_integration_add_refuses_an_internal_or_bad_url(
    make_tenant: Callable[[str], int], config: dict[str, str], expected: str
) -> None:
    tenant = str(make_tenant("cli-integration-url"))

    line = assert_one_line_error(
        taskyard(
            "integration",
            "add",
            "--tenant",
            tenant,
            "http_feed",
            "--config",
            json.dumps(config),
            TASKYARD_HTTP_ALLOW_PRIVATE="false",
        ),
        1,
    )

    assert expected in line
    assert "s3cret-pw" not in line
    assert as_json(taskyard("integration", "list", "--tenant", tenant, "--json")) == []


def test_integration_add_refuses_a_github_base_url_on_the_metadata_address(
    make_tenant: Callable[[str], int],
) -> None:
    tenant = str(make_tenant("cli-integration-github-url"))
    config = json.dumps({"org": "acme", "base_url": "http://169.254.169.254/"})

    line = assert_one_line_error(
        taskyard(
            "integration",
            "add",
            "--tenant",
            tenant,
            "github",
            "--config",
            config,
            TASKYARD_HTTP_ALLOW_PRIVATE="false",
        ),
        1,
    )

    assert line.startswith("error: github integration not added: its base_url")
    assert "TASKYARD_HTTP_ALLOW_PRIVATE=true" in line


def test_integration_add_keeps_the_feed_password_in_the_locker(
    make_tenant: Callable[[str], int], sessions: sessionmaker[Session], settings: Settings
) -> None:
    tenant_id = make_tenant("cli-integration-secret")
    config = json.dumps({"url": "http://alice:s3cret-pw@127.0.0.1:9/feed.json"})

    result = taskyard(
        "integration", "add", "--tenant", str(tenant_id), "http_feed", "--config", config
    )
    integration_id = int(result.stdout.strip())

    key = f"http_feed.{integration_id}.userinfo"
    with sessions() as session:
        stored = session.execute(
            text("SELECT config::text FROM integrations WHERE id = :id"), {"id": integration_id}
        ).scalar_one()
        secret = get_secret(session, tenant_id, key, secret_keys=settings.secret_keys)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in stored and "alice" not in stored
    assert json.loads(stored) == {"url": "http://127.0.0.1:9/feed.json"}
    assert secret.reveal() == "alice:s3cret-pw"
    assert "s3cret-pw" not in result.stdout + result.stderr

    assert taskyard("integration", "remove", str(integration_id)).returncode == 0
    with sessions() as session:
        left = session.scalars(select(LockerEntry.key).where(LockerEntry.tenant_id == tenant_id))
        assert list(left) == []
