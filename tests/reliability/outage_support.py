"""What the two server-outage scenarios share: an ingest, and the messages that work through it."""

from __future__ import annotations

import uuid
from typing import Any

from dramatiq import Message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from actors import process_resource
from db.models import ITEM_PENDING, Ingest, IngestItem
from services.tenants import create_tenant


def new_ingest(engine: Engine, *, items: int, name: str) -> tuple[int, int]:
    """A tenant and a running ingest with `items` pending items; returns (tenant id, ingest id)."""
    with Session(engine) as session, session.begin():
        tenant_id = create_tenant(session, f"{name}-{uuid.uuid4().hex[:8]}").id
        ingest = Ingest(tenant_id=tenant_id, source_url="https://feed.test/r.json", valid=items)
        session.add(ingest)
        session.flush()
        session.add_all(
            IngestItem(
                tenant_id=tenant_id,
                ingest_id=ingest.id,
                position=n,
                resource_id=f"r{n}",
                status=ITEM_PENDING,
            )
            for n in range(items)
        )
        return tenant_id, ingest.id


def resource_message(tenant_id: int, ingest_id: int, n: int, queue: str) -> Message[Any]:
    """The `process_resource` message of the ingest's item `n`, on `queue`."""
    resource = {"id": f"r{n}", "name": f"Resource {n}", "creation_date": "2024-01-02"}
    kwargs = {"tenant_id": tenant_id, "ingest_id": ingest_id, "resource": resource}
    return process_resource.message_with_options(kwargs=kwargs).copy(queue_name=queue)
