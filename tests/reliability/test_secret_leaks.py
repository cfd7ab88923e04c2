"""Security: a sync's token and a webhook's signing key are never written anywhere in plaintext.

A real worker runs github syncs on the fake GitHub (pytest-httpserver on
127.0.0.1) with a known, unique token, and posts the tenant's signed
webhooks with a known, unique signing key: one sync that succeeds, one the
fake answers 401 and one it answers 404 (both dead-lettered).  Then
everything written is searched for the two secrets: the worker's log, every
row of every table of the database (`row_to_json`), the scraped /metrics
text, and the output of `taskyard jobs show`, `dead-letters show`,
`integration list --json`, `locker list` and `locker get` (without
--reveal).  The ciphertext is stored, the plaintext never; `locker get
--reveal` printing the token shows the search would find it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import text
from sqlalchemy.orm import Session

from actors import sync_integration
from db.models import Job
from services import locker, webhooks
from services.integrations import add_integration
from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.support import REPO, WorkerProcess, wait_for
from tests.unit.services.test_integrations_github import FakeGithub

pytestmark = [pytest.mark.integration]

TOKEN = f"ghp_leakcheck_{uuid.uuid4().hex}"
SIGNING_KEY = f"whsk_leakcheck_{uuid.uuid4().hex}"


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """The tenant, its queue, producer and worker."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def send_sync(rig: Rig, integration_id: int) -> str:
    """Send one `sync_integration` to the rig's tenant queue, as a producer does."""
    if "sync_integration" not in rig.producer.actors:
        rig.producer.declare_actor(sync_integration)
    message = sync_integration.message_with_options(
        kwargs={"tenant_id": rig.tenant_id, "integration_id": integration_id}
    ).copy(queue_name=rig.queue)
    rig.outbox.send(rig.producer, message, None)
    return message.message_id


def final_job(rig: Rig, message_id: str) -> Job | None:
    """The job record once it is succeeded or dead."""
    with Session(rig.engine) as session:
        job = session.get(Job, message_id)
    return job if job is not None and job.status in ("succeeded", "dead") else None


def database_dump(rig: Rig) -> str:
    """Every row of every table of the database, as JSON text."""
    with rig.engine.connect() as conn:
        tables = conn.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        ).all()
        return "\n".join(
            row
            for table in tables
            for row in conn.scalars(text(f'SELECT row_to_json(t)::text FROM "{table}" t'))
        )


def metrics_text(worker: WorkerProcess) -> str:
    """The worker's /metrics exposition."""
    found = wait_for(
        lambda: re.search(r"Serving metrics on (http://\S+/metrics)", worker.log()),
        timeout=10,
        what="the worker's metrics server",
    )
    with urllib.request.urlopen(found.group(1), timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def taskyard(rig: Rig, *args: str) -> str:
    """Run the `taskyard` command line on the rig's database; its stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env.update(
        DATABASE_URL=rig.database_url,
        BROKER_URL=rig.broker_url,
        TASKYARD_QUEUE_PREFIX=rig.prefix,
        TASKYARD_SECRET_KEYS=os.environ["TASKYARD_SECRET_KEYS"],
    )
    done = subprocess.run(
        [str(Path(sys.executable).with_name("taskyard")), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"taskyard {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def test_token_and_signing_key_never_appear_in_anything_written(
    rig: Rig, settings: Settings, httpserver: HTTPServer
) -> None:
    # Given a tenant with a signed webhook and three github integrations on the fake GitHub:
    # one that works, one whose members answer 401, one whose organisation is gone (404)
    github = FakeGithub(httpserver, TOKEN)
    github.fail("members", 401, '{"message": "Bad credentials"}')
    httpserver.expect_request("/orgs/gone/members").respond_with_data(
        '{"message": "Not Found"}', status=404, content_type="application/json"
    )
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok")
    with Session(rig.engine) as session, session.begin():
        locker.set_secret(
            session, rig.tenant_id, "github.token", TOKEN, secret_keys=settings.secret_keys
        )
        webhooks.set_webhook(
            session,
            rig.tenant_id,
            httpserver.url_for("/hook"),
            secret_keys=settings.secret_keys,
            signing_key=SIGNING_KEY,
            allow_private=True,
        )
        ids = [
            add_integration(
                session,
                rig.tenant_id,
                "github",
                {"org": org, "base_url": github.base_url},
                allow_private=True,
            ).id
            for org in ("acme", "acme", "gone")
        ]
    worker = rig.start_worker("worker")

    # When the 401 sync runs first (it takes the queued answer), then the others
    failing = send_sync(rig, ids[0])
    wait_for(lambda: final_job(rig, failing), what="the 401 sync")
    working, gone = send_sync(rig, ids[1]), send_sync(rig, ids[2])
    jobs = {m: wait_for(lambda m=m: final_job(rig, m), what=f"sync {m}") for m in (working, gone)}
    jobs[failing] = final_job(rig, failing)

    # Then the fake saw the token (it was used), and two syncs are dead
    assert f"Bearer {TOKEN}" in github.seen_auth
    assert {m: j.status for m, j in jobs.items()} == {
        failing: "dead",
        working: "succeeded",
        gone: "dead",
    }
    # And each sync's webhook was delivered, signed (the worker read the key)
    wait_for(
        lambda: len([r for r, _ in httpserver.log if r.path == "/hook"]) >= 3,
        what="three webhook deliveries",
    )
    assert all(r.headers.get("Taskyard-Signature") for r, _ in httpserver.log if r.path == "/hook")
    with Session(rig.engine) as session:
        all_jobs = session.scalars(
            text("SELECT message_id FROM jobs WHERE tenant_id = :t"), {"t": rig.tenant_id}
        ).all()

    # And neither secret appears in anything written
    outputs = {
        "worker log": worker.log(),
        "database": database_dump(rig),
        "metrics": metrics_text(worker),
        "locker list": taskyard(rig, "locker", "list", "--tenant", str(rig.tenant_id)),
        "locker get token": taskyard(
            rig, "locker", "get", "--tenant", str(rig.tenant_id), "github.token"
        ),
        "locker get key": taskyard(
            rig, "locker", "get", "--tenant", str(rig.tenant_id), "webhook.signing_key"
        ),
        "integration list": taskyard(
            rig, "integration", "list", "--tenant", str(rig.tenant_id), "--json"
        ),
    }
    for message_id in all_jobs:
        outputs[f"jobs show {message_id}"] = taskyard(rig, "jobs", "show", message_id)
    for message_id in (failing, gone):
        outputs[f"dead-letters show {message_id}"] = taskyard(
            rig, "dead-letters", "show", message_id
        )
    assert "github.token" in outputs["locker list"]
    print({name: len(out) for name, out in outputs.items()})
    leaks = {
        name: secret
        for name, out in outputs.items()
        for secret in (TOKEN, SIGNING_KEY)
        if secret in out
    }
    assert leaks == {}
    # (And the search finds a secret where it is shown on purpose)
    revealed = taskyard(
        rig, "locker", "get", "--tenant", str(rig.tenant_id), "github.token", "--reveal"
    )
    assert TOKEN in revealed
