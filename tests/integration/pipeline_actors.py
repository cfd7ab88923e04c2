"""Test-only actors of the pipeline and callback test, loaded by its worker besides `actors`."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import dramatiq
from sqlalchemy.orm import Session

from actors.base import taskyard_actor
from db.models import Resource
from middleware import current_message, current_session


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


# Plain Dramatiq actors, as code coming from Dramatiq declares them: Taskyard's broker
# runs them through its engine (a job record, the DB session, one transaction).
@dramatiq.actor(actor_name="test_plain_write", min_backoff=100, max_backoff=200)
def plain_write(tenant_id: int, key: str) -> str:
    """Write `key` for the tenant, return `<key>-next`; a `-flaky` key's first attempt fails."""
    if key.endswith("-flaky") and current_message().options.get("retries", 0) == 0:
        raise ConnectionError(f"first attempt of {key} fails")
    add_resource(current_session(), tenant_id, key)
    return f"{key}-next"


@dramatiq.actor(actor_name="test_plain_sender")
def plain_sender(tenant_id: int, label: str) -> None:
    """Send a Taskyard actor's job from a plain actor's body (it is written in its transaction)."""
    pipe_count.send(tenant_id=tenant_id, label=label)


@taskyard_actor(name="test_result_value", store_results=True)
def result_value(tenant_id: int, value: Any = None, sleep_ms: int = 0) -> Any:
    """Return `value` (any JSON) after `sleep_ms`: what `get_result()` reads back."""
    time.sleep(sleep_ms / 1000)
    return value


@taskyard_actor(name="test_result_fail", max_attempts=1)
def result_fail(tenant_id: int, text: str) -> None:
    """Raise ValueError(text), with no retry: a dead job whose error the producer reads."""
    raise ValueError(text)


@taskyard_actor(name="test_result_unkept")
def result_unkept(tenant_id: int, size: int = 0) -> Any:
    """Return `size` bytes of text (over the limit when large), or a set (not JSON) for 0."""
    return "x" * size if size else {1, 2}


@taskyard_actor(name="test_group_done")
def group_done(tenant_id: int, label: str) -> None:
    """A group's completion callback: write `<label>-group-done` (a second run would fail)."""
    add_resource(current_session(), tenant_id, f"{label}-group-done")
