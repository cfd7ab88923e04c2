"""Processing one resource of an ingest, and giving up on one, on SQLite."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest
import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Ingest, IngestItem, Resource, Tenant
from services.errors import NotFound, ValidationFailed
from services.http import FetchLimits
from services.ingest import (
    IngestPlan,
    complete_if_done,
    ingest_outcome,
    stalled_ingests,
    start_ingest,
)
from services.resources import process_resource, record_item_failure
from services.tenants import create_tenant

if TYPE_CHECKING:
    from tests.unit.services.conftest import CannedFeed

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=1_000_000, allow_private=True)
FEED = [
    {"id": "a", "name": " Alpha ", "creation_date": "2024-01-02T03:04:05+02:00", "tags": ["x"]},
    {"id": 2, "name": "Two", "creation_date": "2024-02-03", "description": "second"},
    {"id": "a", "name": "Duplicate of a", "creation_date": "2024-01-01"},
    {"id": "bad", "name": "No date"},
]


@pytest.fixture
def ingest_plan(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> IngestPlan:
    """An ingest of FEED: two valid resources ("a" and "2"), two rejected items."""
    return start_ingest(sqlite_session, tenant.id, feed.serve(FEED), http=http, limits=LIMITS)


def ingest_row(session: Session, ingest_id: int) -> Ingest:
    """The ingest as stored now."""
    ingest = session.scalar(
        select(Ingest).where(Ingest.id == ingest_id).execution_options(populate_existing=True)
    )
    assert ingest is not None
    return ingest


def counts(session: Session, tenant: Tenant, plan: IngestPlan) -> dict[str, Any]:
    """The ingest's status and counts as `get_ingest` and the webhooks see them now."""
    outcome = ingest_outcome(session, tenant.id, plan["ingest_id"])
    assert outcome is not None
    return dict(outcome)


def item_row(session: Session, ingest_id: int, resource_id: str) -> IngestItem:
    """The accepted item of `resource_id` in the ingest."""
    item = session.scalar(
        select(IngestItem)
        .where(
            IngestItem.ingest_id == ingest_id,
            IngestItem.resource_id == resource_id,
            IngestItem.status != "rejected",
        )
        .execution_options(populate_existing=True)
    )
    assert item is not None
    return item


def stored(session: Session, tenant_id: int, resource_id: str) -> Resource:
    """The tenant's resource as stored now."""
    resource = session.scalar(
        select(Resource)
        .where(Resource.tenant_id == tenant_id, Resource.resource_id == resource_id)
        .execution_options(populate_existing=True)
    )
    assert resource is not None
    return resource


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; they hold UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def test_process_resource_stores_the_normalised_resource(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    resource = ingest_plan["resources"][0]

    result = process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], resource)

    assert result == {"resource_id": "a", "changed": True}
    row = stored(sqlite_session, tenant.id, "a")
    assert (row.name, row.description, row.tags) == ("Alpha", None, ["x"])
    assert as_utc(row.creation_date) == dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.UTC)
    assert row.last_ingest_id == ingest_plan["ingest_id"]
    assert item_row(sqlite_session, ingest_plan["ingest_id"], "a").status == "processed"
    outcome = counts(sqlite_session, tenant, ingest_plan)
    assert (outcome["processed"], outcome["status"]) == (1, "running")


def test_process_resource_twice_changes_and_counts_nothing_the_second_time(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    resource = ingest_plan["resources"][0]
    process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], resource)

    again = process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], resource)

    assert again == {"resource_id": "a", "changed": False}
    assert counts(sqlite_session, tenant, ingest_plan)["processed"] == 1


def test_last_item_processed_completes_the_ingest(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    first, last = ingest_plan["resources"]
    process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], first)
    assert complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"]) is None
    assert ingest_row(sqlite_session, ingest_plan["ingest_id"]).finished_at is None

    process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], last)
    outcome = complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"])

    assert outcome is not None and (outcome["processed"], outcome["failed"]) == (2, 0)
    ingest = ingest_row(sqlite_session, ingest_plan["ingest_id"])
    assert (ingest.status, ingest.processed, ingest.failed) == ("completed", 2, 0)
    assert ingest.finished_at is not None
    # Claimed once: a second check (the other of two last items) completes nothing.
    assert complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"]) is None


def test_same_resource_in_a_later_ingest_is_unchanged_but_attributed(
    sqlite_session: Session,
    tenant: Tenant,
    ingest_plan: IngestPlan,
    feed: CannedFeed,
    http: requests.Session,
) -> None:
    # Given resource "a" stored by a first ingest, last changed long ago
    process_resource(
        sqlite_session, tenant.id, ingest_plan["ingest_id"], ingest_plan["resources"][0]
    )
    sqlite_session.execute(update(Resource).values(updated_at=LONG_AGO))

    # When a second ingest of the same feed processes it again
    second = start_ingest(sqlite_session, tenant.id, feed.serve(FEED), http=http, limits=LIMITS)
    result = process_resource(
        sqlite_session, tenant.id, second["ingest_id"], second["resources"][0]
    )

    # Then nothing changed but the ingest it was last seen in
    assert result == {"resource_id": "a", "changed": False}
    row = stored(sqlite_session, tenant.id, "a")
    assert row.last_ingest_id == second["ingest_id"]
    assert as_utc(row.updated_at) == LONG_AGO
    assert ingest_outcome(sqlite_session, tenant.id, second["ingest_id"]) is not None
    assert counts(sqlite_session, tenant, second)["processed"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Renamed"),
        ("description", "now described"),
        ("tags", ["x", "y"]),
        ("creation_date", "2020-01-01"),
    ],
)
def test_resource_with_new_content_in_a_later_ingest_is_changed(
    sqlite_session: Session,
    tenant: Tenant,
    ingest_plan: IngestPlan,
    feed: CannedFeed,
    http: requests.Session,
    field: str,
    value: Any,
) -> None:
    process_resource(
        sqlite_session, tenant.id, ingest_plan["ingest_id"], ingest_plan["resources"][0]
    )
    sqlite_session.execute(update(Resource).values(updated_at=LONG_AGO))
    changed_feed = [{**FEED[0], field: value}]

    second = start_ingest(
        sqlite_session, tenant.id, feed.serve(changed_feed), http=http, limits=LIMITS
    )
    result = process_resource(
        sqlite_session, tenant.id, second["ingest_id"], second["resources"][0]
    )

    assert result == {"resource_id": "a", "changed": True}
    row = stored(sqlite_session, tenant.id, "a")
    assert row.last_ingest_id == second["ingest_id"]
    assert as_utc(row.updated_at) > LONG_AGO
    assert sqlite_session.scalars(select(Resource.resource_id)).all() == ["a"]


def test_same_resource_id_of_two_tenants_is_kept_apart(
    sqlite_session: Session,
    tenant: Tenant,
    ingest_plan: IngestPlan,
    feed: CannedFeed,
    http: requests.Session,
) -> None:
    other = create_tenant(sqlite_session, "globex")
    process_resource(
        sqlite_session, tenant.id, ingest_plan["ingest_id"], ingest_plan["resources"][0]
    )
    other_plan = start_ingest(sqlite_session, other.id, feed.serve(FEED), http=http, limits=LIMITS)

    result = process_resource(
        sqlite_session, other.id, other_plan["ingest_id"], other_plan["resources"][0]
    )

    assert result["changed"] is True
    assert stored(sqlite_session, tenant.id, "a").last_ingest_id == ingest_plan["ingest_id"]
    assert stored(sqlite_session, other.id, "a").last_ingest_id == other_plan["ingest_id"]


@pytest.mark.parametrize(
    ("resource_id", "tenant_offset"),
    [("missing", 0), ("bad", 0), ("a", 1)],
    ids=["unknown-id", "rejected-item", "other-tenant"],
)
def test_process_resource_without_an_accepted_item_is_not_found(
    sqlite_session: Session,
    tenant: Tenant,
    ingest_plan: IngestPlan,
    resource_id: str,
    tenant_offset: int,
) -> None:
    resource = {**ingest_plan["resources"][0], "id": resource_id}

    with pytest.raises(NotFound, match=repr(resource_id)):
        process_resource(
            sqlite_session, tenant.id + tenant_offset, ingest_plan["ingest_id"], resource
        )

    assert sqlite_session.scalars(select(Resource)).all() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"creation_date": "soon"}, "resource is invalid: creation_date: Not a valid datetime."),
        ({"name": None}, "name: Field may not be null."),
        ({"extra": 1}, "extra: Unknown field."),
        ({"tags": "x"}, "tags: Not a valid list."),
    ],
)
def test_invalid_message_is_refused(
    sqlite_session: Session,
    tenant: Tenant,
    ingest_plan: IngestPlan,
    change: dict[str, Any],
    message: str,
) -> None:
    resource = {**ingest_plan["resources"][0], **change}

    with pytest.raises(ValidationFailed) as caught:
        process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], resource)

    assert message in str(caught.value)
    assert caught.value.reason == "invalid_input"


def test_message_that_is_not_an_object_is_refused(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    with pytest.raises(ValidationFailed, match="resource must be a JSON object"):
        process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], ["a"])  # type: ignore[arg-type]


def test_item_failure_then_last_item_completes_the_ingest(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    first, last = ingest_plan["resources"]

    record_item_failure(sqlite_session, tenant.id, ingest_plan["ingest_id"], first, "boom")
    record_item_failure(sqlite_session, tenant.id, ingest_plan["ingest_id"], first, "again")
    assert complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"]) is None
    assert ingest_row(sqlite_session, ingest_plan["ingest_id"]).status == "running"
    process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], last)
    assert complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"]) is not None

    ingest = ingest_row(sqlite_session, ingest_plan["ingest_id"])
    assert (ingest.status, ingest.processed, ingest.failed) == ("completed", 1, 1)
    assert ingest.finished_at is not None
    item = item_row(sqlite_session, ingest_plan["ingest_id"], "a")
    assert (item.status, item.error) == ("failed", "boom")


def test_item_failure_after_processing_changes_nothing(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    first = ingest_plan["resources"][0]
    process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], first)

    record_item_failure(sqlite_session, tenant.id, ingest_plan["ingest_id"], first, "late")

    outcome = counts(sqlite_session, tenant, ingest_plan)
    assert (outcome["processed"], outcome["failed"]) == (1, 0)
    assert item_row(sqlite_session, ingest_plan["ingest_id"], "a").status == "processed"


def test_failed_item_requeued_and_processed_moves_from_failed_to_processed(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    first, last = ingest_plan["resources"]
    record_item_failure(sqlite_session, tenant.id, ingest_plan["ingest_id"], first, "boom")
    process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], last)
    assert complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"]) is not None

    result = process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], first)

    assert result["changed"] is True
    ingest = ingest_row(sqlite_session, ingest_plan["ingest_id"])
    assert (ingest.status, ingest.processed, ingest.failed) == ("completed", 2, 0)
    item = item_row(sqlite_session, ingest_plan["ingest_id"], "a")
    assert (item.status, item.error) == ("processed", None)


@pytest.mark.parametrize(
    "resource",
    [{"name": "no id"}, {"id": None}, {"id": True}, {"id": "missing"}, "not a dict"],
)
def test_item_failure_that_names_no_item_is_ignored(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan, resource: Any
) -> None:
    record_item_failure(sqlite_session, tenant.id, ingest_plan["ingest_id"], resource, "boom")

    ingest = ingest_row(sqlite_session, ingest_plan["ingest_id"])
    assert (ingest.failed, ingest.status) == (0, "running")
    statuses = sqlite_session.scalars(
        select(IngestItem.status).where(IngestItem.ingest_id == ingest_plan["ingest_id"])
    ).all()
    assert "failed" not in statuses


def test_an_ingest_whose_last_item_never_checked_is_found_stalled_and_completed(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    # Both items committed; the worker of the last died before its completion check.
    for resource in ingest_plan["resources"]:
        process_resource(sqlite_session, tenant.id, ingest_plan["ingest_id"], resource)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)

    found = stalled_ingests(sqlite_session, older_than=later, limit=10)

    assert (tenant.id, ingest_plan["ingest_id"]) in found
    assert complete_if_done(sqlite_session, tenant.id, ingest_plan["ingest_id"]) is not None
    assert stalled_ingests(sqlite_session, older_than=later, limit=10) == []


def test_an_ingest_with_a_pending_item_is_not_stalled(
    sqlite_session: Session, tenant: Tenant, ingest_plan: IngestPlan
) -> None:
    process_resource(
        sqlite_session, tenant.id, ingest_plan["ingest_id"], ingest_plan["resources"][0]
    )
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)

    assert stalled_ingests(sqlite_session, older_than=later, limit=10) == []
