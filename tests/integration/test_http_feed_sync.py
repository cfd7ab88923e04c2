"""An `http_feed` integration, run from an ordinary schedule of `sync_integration`."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from actors import sync_integration
from actors.schedules import run_schedule_now, schedulable_actors
from db.models import Ingest, Integration, Job, Resource
from services.integrations import add_integration
from services.locker import get_secret
from services.schedules import create_schedule
from settings import Settings
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration

FEED = [
    {"id": "f1", "name": "One", "creation_date": "2024-01-02"},
    {"id": "f2", "name": "Two", "creation_date": "2024-01-03"},
]


def final_job(sessions: sessionmaker[Session], message_id: str) -> Job | None:
    """The job record once it is final."""
    with sessions() as session:
        job = session.get(Job, message_id)
        return job if job is not None and job.status in ("succeeded", "dead") else None


def test_scheduled_feed_sync_ingests_and_records_its_ingest(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    httpserver.expect_request("/feed.json").respond_with_json(FEED)
    tenant_id = make_tenant("feed")
    assert "sync_integration" in schedulable_actors()
    with sessions.begin() as session:
        integration = add_integration(
            session,
            tenant_id,
            "http_feed",
            {"url": httpserver.url_for("/feed.json")},
            allow_private=True,
        )
        schedule = create_schedule(
            session,
            tenant_id,
            actor="sync_integration",
            args={"integration_id": integration.id},
            cron="0 3 * * *",
            actors=schedulable_actors(),
            now=dt.datetime.now(dt.UTC),
        )
        integration_id, schedule_id = integration.id, schedule.id

    message_id = run_schedule_now(schedule_id)
    job = wait_for(lambda: final_job(sessions, message_id), what="the scheduled sync")

    assert job.status == "succeeded", job.error
    assert job.schedule_id == schedule_id
    assert job.result is not None
    ingest_id = job.result["ingest_id"]
    assert job.result["fetched"] == 2

    def resources() -> set[str] | None:
        with sessions() as session:
            ids = set(
                session.scalars(select(Resource.resource_id).where(Resource.tenant_id == tenant_id))
            )
        return ids if len(ids) == 2 else None

    assert wait_for(resources, what="the feed's resources") == {"f1", "f2"}
    with sessions() as session:
        ingest = session.get(Ingest, ingest_id)
        saved = session.get(Integration, integration_id)
        assert ingest is not None
        assert ingest.tenant_id == tenant_id
        assert saved is not None
        assert saved.last_status == "succeeded"
        assert saved.last_summary == job.result


def test_feed_that_is_gone_marks_the_integration_failed(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    httpserver.expect_request("/gone.json").respond_with_data("", status=404)
    tenant_id = make_tenant("feed-gone")
    with sessions.begin() as session:
        integration_id = add_integration(
            session,
            tenant_id,
            "http_feed",
            {"url": httpserver.url_for("/gone.json")},
            allow_private=True,
        ).id

    message = sync_integration.send(tenant_id=tenant_id, integration_id=integration_id)
    job = wait_for(lambda: final_job(sessions, message.message_id), what="the failed sync")

    assert job.status == "dead"
    assert job.error is not None
    assert "404" in job.error
    with sessions() as session:
        saved = session.get(Integration, integration_id)
        assert saved is not None
        assert saved.last_status == "failed"
        assert saved.last_summary is not None
        failed = session.get(Ingest, saved.last_summary["ingest_id"])
        assert failed is not None
        assert failed.status == "failed"


def test_sync_of_another_tenants_integration_is_dead(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    owner, other = make_tenant("feed-owner"), make_tenant("feed-other")
    with sessions.begin() as session:
        integration_id = add_integration(
            session, owner, "http_feed", {"url": httpserver.url_for("/x.json")}, allow_private=True
        ).id

    message = sync_integration.send(tenant_id=other, integration_id=integration_id)
    job = wait_for(lambda: final_job(sessions, message.message_id), what="the refused sync")

    assert job.status == "dead"
    assert job.error is not None
    assert f"integration {integration_id} of tenant {other} does not exist" in job.error
    assert httpserver.log == []


PASSWORD = "s3cret-feed-pw"
BASIC_AUTH = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()


def with_userinfo(url: str) -> str:
    """`url` with user alice and the feed password in it."""
    return url.replace("http://", f"http://alice:{PASSWORD}@", 1)


def test_feed_credentials_from_the_locker_are_sent_and_never_written(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    # Given a feed that answers only with alice's password, added with it in the URL
    httpserver.expect_request(
        "/private.json", headers={"Authorization": BASIC_AUTH}
    ).respond_with_json(FEED)
    tenant_id = make_tenant("feed-auth")
    with sessions.begin() as session:
        integration_id = add_integration(
            session,
            tenant_id,
            "http_feed",
            {"url": with_userinfo(httpserver.url_for("/private.json"))},
            allow_private=True,
            secret_keys=settings.secret_keys,
        ).id
    with sessions() as session:
        stored = session.execute(
            text("SELECT config::text FROM integrations WHERE id = :id"), {"id": integration_id}
        ).scalar_one()
        secret = get_secret(
            session,
            tenant_id,
            f"http_feed.{integration_id}.userinfo",
            secret_keys=settings.secret_keys,
        )
    assert PASSWORD not in stored
    assert secret.reveal() == f"alice:{PASSWORD}"

    # When it syncs
    message = sync_integration.send(tenant_id=tenant_id, integration_id=integration_id)
    job = wait_for(lambda: final_job(sessions, message.message_id), what="the sync")

    # Then the feed got the credentials, and nothing written shows them
    assert job.status == "succeeded", job.error
    assert job.result is not None and job.result["fetched"] == 2
    assert [r.headers.get("Authorization") for r, _ in httpserver.log] == [BASIC_AUTH]
    with sessions() as session:
        ingest = session.get(Ingest, job.result["ingest_id"])
        assert ingest is not None
        assert ingest.source_url == httpserver.url_for("/private.json")
    assert PASSWORD not in worker.log()
    assert PASSWORD not in str(job.args) + str(job.result)


def test_feed_stored_with_its_password_in_the_config_still_syncs_and_moves_it(
    worker: WorkerProcess,
    httpserver: HTTPServer,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    # Given a row written before feed credentials went to the locker
    httpserver.expect_request(
        "/legacy.json", headers={"Authorization": BASIC_AUTH}
    ).respond_with_json(FEED)
    tenant_id = make_tenant("feed-legacy")
    url = httpserver.url_for("/legacy.json")
    with sessions.begin() as session:
        legacy = Integration(
            tenant_id=tenant_id, kind="http_feed", config={"url": with_userinfo(url)}
        )
        session.add(legacy)
        session.flush()
        integration_id = legacy.id

    # When it syncs
    message = sync_integration.send(tenant_id=tenant_id, integration_id=integration_id)
    job = wait_for(lambda: final_job(sessions, message.message_id), what="the legacy sync")

    # Then the credentials were sent, and are now in the locker, not in the config
    assert job.status == "succeeded", job.error
    assert [r.headers.get("Authorization") for r, _ in httpserver.log] == [BASIC_AUTH]
    with sessions() as session:
        saved = session.get(Integration, integration_id)
        assert saved is not None
        assert saved.config == {"url": url}
        secret = get_secret(
            session,
            tenant_id,
            f"http_feed.{integration_id}.userinfo",
            secret_keys=settings.secret_keys,
        )
        assert secret.reveal() == f"alice:{PASSWORD}"
