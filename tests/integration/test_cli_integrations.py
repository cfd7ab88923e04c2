"""`taskyard integration ...` as run: add, list, sync on a real worker, remove, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job
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
        taskyard("integration", "add", tenant, "http_feed", "--config", config, "--json")
    )
    listed = as_json(taskyard("integration", "list", tenant, "--json"))
    synced = as_json(taskyard("integration", "sync", str(added["id"]), "--json"))

    def finished() -> str | None:
        with sessions() as session:
            job = session.get(Job, synced["message_id"])
            return job.status if job is not None and job.status == "succeeded" else None

    assert added["kind"] == "http_feed"
    assert [i["id"] for i in listed] == [added["id"]]
    wait_for(finished, what="the sync job")
    after = as_json(taskyard("integration", "list", tenant, "--json"))
    assert after[0]["last_synced_at"] is not None

    assert taskyard("integration", "remove", str(added["id"])).returncode == 0
    assert as_json(taskyard("integration", "list", tenant, "--json")) == []
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
        taskyard("integration", "add", tenant, kind, "--config", config), 1
    )

    assert expected in line
    assert as_json(taskyard("integration", "list", tenant, "--json")) == []


def test_integration_of_an_unknown_tenant_fails() -> None:
    line = assert_one_line_error(taskyard("integration", "list", "987654321"), 1)

    assert "987654321" in line
