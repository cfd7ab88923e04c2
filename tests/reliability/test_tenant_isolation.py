"""Security: a job for tenant A cannot read or change tenant B's rows, locker or queue.

Crafted messages are published with pika straight to A's queue, around
Taskyard's producer, to a real worker serving A only: a message whose
`tenant_id` names B (TenantRouting refuses it: `tenant_mismatch`), a
`process_resource` naming B's ingest and item, a `sync_integration` naming
B's integration, and a sync of A's own github integration whose locker entry
is B's ciphertext copied at the SQL level (the locker binds each ciphertext to
its tenant and key, so decryption refuses it and no token is ever sent).
Every row of B, in every table with a `tenant_id`, is compared as JSON text
before and after: byte for byte unchanged.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import text
from sqlalchemy.orm import Session

from db.models import Ingest, IngestItem
from services.integrations import add_integration
from services.locker import set_secret
from services.tenants import create_tenant
from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.security.support import letters_of, tenant_rows
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

TOKEN_B = f"ghp_tenant_b_{uuid.uuid4().hex}"


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """Tenant A's rig: its queue, producer and a worker serving only A."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


def publish(rig: Rig, actor: str, kwargs: dict[str, Any]) -> str:
    """Publish one well-formed message straight to A's queue (confirmed); returns its id."""
    message_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "queue_name": rig.queue,
            "actor_name": actor,
            "args": [],
            "kwargs": kwargs,
            "options": {},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
    ).encode()
    connection = pika.BlockingConnection(pika.URLParameters(rig.broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", rig.queue, body, mandatory=True)
    finally:
        connection.close()
    return message_id


def dead_letter(rig: Rig, message_id: str) -> dict[str, Any] | None:
    """The one dead letter of a message (a refused body's is kept under a new id naming it)."""
    letters = letters_of(rig, message_id)
    assert len(letters) <= 1, letters
    return letters[0] if letters else None


def test_crafted_messages_on_a_queue_cannot_touch_another_tenant(
    rig: Rig, settings: Settings, httpserver: HTTPServer
) -> None:
    # Given tenant B with a resource ingest (one accepted item), a github integration and a token
    with Session(rig.engine) as session, session.begin():
        b = create_tenant(session, f"iso-b-{uuid.uuid4().hex[:8]}").id
        ingest = Ingest(tenant_id=b, source_url="https://feeds.example/b.json", status="running")
        session.add(ingest)
        session.flush()
        session.add(
            IngestItem(
                tenant_id=b, ingest_id=ingest.id, position=0, resource_id="rb", status="pending"
            )
        )
        b_ingest = ingest.id
        base_url = httpserver.url_for("/")
        b_integration = add_integration(
            session, b, "github", {"org": "tenant-b", "base_url": base_url}, allow_private=True
        ).id
        set_secret(session, b, "github.token", TOKEN_B, secret_keys=settings.secret_keys)
        # And tenant A's own github integration, whose locker entry is B's ciphertext, copied
        a_integration = add_integration(
            session,
            rig.tenant_id,
            "github",
            {"org": "tenant-a", "base_url": base_url},
            allow_private=True,
        ).id
        session.execute(
            text(
                "INSERT INTO locker_entries (tenant_id, key, ciphertext, created_at, updated_at)"
                " SELECT :a, key, ciphertext, created_at, updated_at FROM locker_entries"
                " WHERE tenant_id = :b AND key = 'github.token'"
            ),
            {"a": rig.tenant_id, "b": b},
        )
    before = tenant_rows(rig, b)
    assert before["locker_entries"] and before["integrations"] and before["ingest_items"]
    # And a worker serving A only, which has run a job (so A's queue exists)
    worker = rig.start_worker("worker")
    first = rig.send("first")
    wait_for(lambda: rig.job(first.message_id).status == "succeeded", what="A's first job")

    # When crafted messages are published straight to A's queue
    resource = {"id": "rb", "name": "Taken over", "creation_date": "2024-01-01T00:00:00Z"}
    wrong_tenant = publish(
        rig, "rel_record_effect", {"tenant_id": b, "key": "wrong-tenant", "signal_dir": ""}
    )
    wrong_tenant_resource = publish(
        rig, "process_resource", {"tenant_id": b, "ingest_id": b_ingest, "resource": resource}
    )
    b_ingest_from_a = publish(
        rig,
        "process_resource",
        {"tenant_id": rig.tenant_id, "ingest_id": b_ingest, "resource": resource},
    )
    b_integration_from_a = publish(
        rig, "sync_integration", {"tenant_id": rig.tenant_id, "integration_id": b_integration}
    )
    b_secret_via_a = publish(
        rig, "sync_integration", {"tenant_id": rig.tenant_id, "integration_id": a_integration}
    )
    crafted = [
        wrong_tenant,
        wrong_tenant_resource,
        b_ingest_from_a,
        b_integration_from_a,
        b_secret_via_a,
    ]

    # Then each one is dead-lettered, with its reason
    letters = wait_for(
        lambda: (found := [dead_letter(rig, m) for m in crafted]) and all(found) and found,
        timeout=60,
        what="five dead letters",
    )
    by_id = dict(zip(crafted, letters, strict=True))
    print("dead letters:", {m: (d["reason"], d["error"]) for m, d in by_id.items()})
    assert by_id[wrong_tenant]["reason"] == "tenant_mismatch"
    assert by_id[wrong_tenant_resource]["reason"] == "tenant_mismatch"
    assert f"tenant {b}" in by_id[wrong_tenant]["error"]
    # (and credited to no tenant: the message names B but is not B's)
    assert by_id[wrong_tenant]["tenant_id"] is None
    assert by_id[wrong_tenant_resource]["tenant_id"] is None
    assert by_id[b_ingest_from_a]["reason"] == "not_found"
    assert by_id[b_integration_from_a]["reason"] == "not_found"
    assert by_id[b_secret_via_a]["reason"] == "secret_unreadable"
    # And none of them did anything: no effect row, and B's rows are byte for byte unchanged
    with rig.engine.connect() as conn:
        keys = set(conn.scalars(text("SELECT key FROM rel_effects")))
    assert "wrong-tenant" not in keys
    assert tenant_rows(rig, b) == before
    # And no request carried B's token to the outside (none was sent at all)
    assert httpserver.log == []
    assert TOKEN_B not in worker.log()
    # And the worker goes on
    after = rig.send("after")
    wait_for(lambda: rig.job(after.message_id).status == "succeeded", what="A's job after")
    assert worker.proc.poll() is None
