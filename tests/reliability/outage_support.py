"""What the two server-outage scenarios share: an ingest whose items the load works through."""

from __future__ import annotations

import uuid

from sqlalchemy import Engine
from sqlalchemy.orm import Session

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
