"""Test-only actors of the pipeline and callback test, loaded by its worker besides `actors`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from actors.base import taskyard_actor
from db.models import Resource
from middleware import current_session


def add_resource(session: Session, tenant_id: int, key: str) -> None:
    """The effect these actors write: a resource keyed `key` (unique per tenant)."""
    session.add(
        Resource(
            tenant_id=tenant_id,
            resource_id=key,
            name=key,
            tags=[],
            creation_date=dt.datetime.now(dt.UTC),
        )
    )


@taskyard_actor(name="test_pipe_count")
def pipe_count(
    tenant_id: int, label: str, pipe_result: dict[str, Any] | None = None
) -> dict[str, int]:
    """Write `<label>-<n>`, n one more than the previous stage's; return n."""
    n = (pipe_result or {"n": 0})["n"] + 1
    add_resource(current_session(), tenant_id, f"{label}-{n}")
    return {"n": n}


@taskyard_actor(name="test_pipe_done")
def pipe_done(tenant_id: int, message_data: dict[str, Any], result: dict[str, int]) -> None:
    """The on_success callback: write `<label>-done-<n>` from the job's message and result."""
    label = message_data["kwargs"]["label"]
    add_resource(current_session(), tenant_id, f"{label}-done-{result['n']}")


@taskyard_actor(name="test_pipe_clash", max_attempts=1)
def pipe_clash(tenant_id: int, label: str) -> dict[str, int]:
    """Write `<label>`, which exists already: the body returns, its commit fails."""
    add_resource(current_session(), tenant_id, label)
    return {"n": 1}
