"""The resource schema, and starting, failing and reading ingests, on SQLite."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import pytest
import requests
from marshmallow import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Ingest, IngestItem, Tenant
from services.errors import FetchRefused, NotFound, PermanentError, UnknownTenant
from services.http import FetchLimits
from services.ingest import (
    FEED_SCHEMA,
    get_ingest,
    record_ingest_failure,
    start_ingest,
)

if TYPE_CHECKING:
    from tests.unit.services.conftest import CannedFeed

LIMITS = FetchLimits(
    connect_timeout=1.0, read_timeout=1.0, max_bytes=10_000_000, allow_private=True
)
UTC = dt.UTC


def item(**fields: Any) -> dict[str, Any]:
    """A valid feed item, with `fields` replaced (a value of ... removes the field)."""
    base: dict[str, Any] = {"id": "r1", "name": "One", "creation_date": "2024-01-02T03:04:05Z"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        (item(id=7), "id", "7"),
        (item(id="  r9 "), "id", "r9"),
        (item(name="  Padded name \n"), "name", "Padded name"),
        (item(creation_date="2024-02-03"), "creation_date", dt.datetime(2024, 2, 3, tzinfo=UTC)),
        (
            item(creation_date="2024-02-03T10:00:00"),
            "creation_date",
            dt.datetime(2024, 2, 3, 10, tzinfo=UTC),
        ),
        (
            item(creation_date="2024-02-03T10:00:00+02:00"),
            "creation_date",
            dt.datetime(2024, 2, 3, 8, tzinfo=UTC),
        ),
        (item(), "tags", []),
        (item(tags=None), "tags", []),
        (item(tags=[" a ", "b", "a", "  "]), "tags", ["a", "b"]),
        (item(), "description", None),
        (item(description="  text  "), "description", "text"),
        (item(description="   "), "description", None),
        (item(description=None), "description", None),
    ],
)
def test_schema_normalises_a_good_item(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert FEED_SCHEMA.load(raw)[field] == expected


def test_schema_drops_unknown_fields_of_the_feed() -> None:
    assert "colour" not in FEED_SCHEMA.load(item(colour="red"))


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (item(id=...), "id", "Missing data for required field."),
        (item(id=True), "id", "Not a valid id"),
        (item(id=1.5), "id", "Not a valid id"),
        (item(id=["r1"]), "id", "Not a valid id"),
        (item(id="   "), "id", "May not be blank."),
        (item(id="x" * 201), "id", "Longer than 200 characters."),
        (item(name=...), "name", "Missing data for required field."),
        (item(name=None), "name", "Field may not be null."),
        (item(name=5), "name", "Not a valid string."),
        (item(name=" "), "name", "May not be blank."),
        (item(name="a\x00b"), "name", "May not contain NUL characters."),
        (item(creation_date=...), "creation_date", "Missing data for required field."),
        (item(creation_date="yesterday"), "creation_date", "Not a valid datetime."),
        (item(creation_date="2024-13-01"), "creation_date", "Not a valid datetime."),
        (item(creation_date=1704067200), "creation_date", "Not a valid datetime."),
        (item(description=5), "description", "Not a valid string."),
        (item(tags="nope"), "tags", "Not a valid list."),
    ],
)
def test_schema_rejects_a_bad_item(raw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        FEED_SCHEMA.load(raw)

    assert message in str(caught.value.messages[field])


def test_schema_rejects_tags_that_are_not_strings() -> None:
    with pytest.raises(ValidationError) as caught:
        FEED_SCHEMA.load(item(tags=["ok", 3, None]))

    assert caught.value.messages["tags"] == {
        1: ["Not a valid string."],
        2: ["Field may not be null."],
    }


def items_of(session: Session, ingest_id: int) -> list[tuple[int, str | None, str, str | None]]:
    """(position, resource_id, status, error) of every item of an ingest, in order."""
    query = (
        select(IngestItem.position, IngestItem.resource_id, IngestItem.status, IngestItem.error)
        .where(IngestItem.ingest_id == ingest_id)
        .order_by(IngestItem.position)
    )
    return [tuple(row) for row in session.execute(query)]


MIXED_FEED = [
    item(id="a", name=" Alpha ", tags=["x", "x"]),
    item(id=2, name="Two", creation_date="2024-02-03"),
    item(id="bad-date", creation_date="soon"),
    "not an object",
    item(id=" a ", name="Alpha again"),
    item(id="c", tags=[1]),
    item(id="c", name="Third"),
]


def test_start_ingest_records_valid_rejected_and_duplicate_items(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    # Given a feed with two valid items, one bad date, a non-object, a duplicate id,
    # an item with bad tags, and a later valid item repeating that bad item's id
    url = feed.serve(MIXED_FEED)

    # When the ingest starts
    plan = start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS, message_id="m1")

    # Then only the valid, first-seen items are planned, in feed order, as JSON
    assert (plan["fetched"], plan["valid"], plan["rejected"]) == (7, 2, 5)
    assert plan["resources"] == [
        {
            "id": "a",
            "name": "Alpha",
            "creation_date": "2024-01-02T03:04:05+00:00",
            "description": None,
            "tags": ["x"],
        },
        {
            "id": "2",
            "name": "Two",
            "creation_date": "2024-02-03T00:00:00+00:00",
            "description": None,
            "tags": [],
        },
    ]
    assert json.loads(json.dumps(plan["resources"])) == plan["resources"]
    # And every item has a row saying what happened to it
    assert items_of(sqlite_session, plan["ingest_id"]) == [
        (0, "a", "pending", None),
        (1, "2", "pending", None),
        (2, "bad-date", "rejected", "creation_date: Not a valid datetime."),
        (3, None, "rejected", "item is not a JSON object"),
        (4, "a", "rejected", "duplicate id 'a' (first at position 0)"),
        (5, "c", "rejected", "tags.0: Not a valid string."),
        (6, "c", "rejected", "duplicate id 'c' (first at position 5)"),
    ]
    ingest = sqlite_session.get(Ingest, plan["ingest_id"])
    assert ingest is not None
    assert (ingest.status, ingest.message_id, ingest.finished_at) == ("running", "m1", None)
    assert (ingest.fetched, ingest.valid, ingest.rejected) == (7, 2, 5)


def test_start_ingest_with_several_errors_lists_them_all(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    url = feed.serve([{"id": True, "name": ""}])

    plan = start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    [(_, resource_id, status, error)] = items_of(sqlite_session, plan["ingest_id"])
    assert (resource_id, status) == (None, "rejected")
    assert error is not None
    assert "id: Not a valid id" in error
    assert "name: May not be blank." in error
    assert "creation_date: Missing data for required field." in error


@pytest.mark.parametrize(
    ("body", "kind"), [({"items": []}, "object"), ("[]", "string"), (None, "null"), (3, "number")]
)
def test_start_ingest_refuses_a_body_that_is_not_a_list(
    sqlite_session: Session,
    tenant: Tenant,
    feed: CannedFeed,
    http: requests.Session,
    body: Any,
    kind: str,
) -> None:
    url = feed.serve(body)

    with pytest.raises(PermanentError) as caught:
        start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    assert caught.value.reason == "invalid_feed"
    assert f"returned a JSON {kind}, expected a JSON array (a list)" in str(caught.value)
    assert sqlite_session.scalar(select(func.count()).select_from(Ingest)) == 0


@pytest.mark.parametrize("body", [[], ["x", 1]], ids=["empty", "all-rejected"])
def test_start_ingest_with_nothing_valid_completes_at_once(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session, body: Any
) -> None:
    url = feed.serve(body)

    plan = start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    assert (plan["valid"], plan["resources"]) == (0, [])
    ingest = sqlite_session.get(Ingest, plan["ingest_id"])
    assert ingest is not None
    assert ingest.status == "completed"
    assert ingest.finished_at is not None


def test_start_ingest_for_an_unknown_tenant_fetches_nothing(
    sqlite_session: Session, feed: CannedFeed, http: requests.Session
) -> None:
    url = feed.serve([item()])

    with pytest.raises(UnknownTenant):
        start_ingest(sqlite_session, 999, url, http=http, limits=LIMITS)

    assert feed.urls == []


def test_start_ingest_lets_a_refused_fetch_through(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    url = feed.serve({"error": "no such feed"}, status=404)

    with pytest.raises(FetchRefused, match="404"):
        start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    assert sqlite_session.scalar(select(func.count()).select_from(Ingest)) == 0


def test_start_ingest_stores_the_url_without_its_password(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    feed.serve([item()])
    url = "https://bob:hunter2@feeds.example/feed.json"

    plan = start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    assert get_ingest(sqlite_session, plan["ingest_id"])["source_url"] == feed.URL


def test_start_ingest_handles_a_feed_of_ten_thousand_items(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    url = feed.serve([item(id=i, name=f"item {i}") for i in range(10_000)])

    plan = start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    assert (plan["fetched"], plan["valid"], len(plan["resources"])) == (10_000, 10_000, 10_000)
    count = select(func.count()).select_from(IngestItem).where(IngestItem.status == "pending")
    assert sqlite_session.scalar(count) == 10_000


def test_record_ingest_failure_writes_a_failed_ingest(
    sqlite_session: Session, tenant: Tenant
) -> None:
    ingest_id = record_ingest_failure(
        sqlite_session,
        tenant.id,
        "https://u:pw@feeds.example/x",
        message_id="m1",
        error="FetchRefused: GET https://feeds.example/x answered 404",
    )

    summary = get_ingest(sqlite_session, ingest_id, tenant_id=tenant.id)
    assert summary["status"] == "failed"
    assert summary["error"] == "FetchRefused: GET https://feeds.example/x answered 404"
    assert summary["source_url"] == "https://feeds.example/x"
    assert summary["finished_at"] is not None


def test_record_ingest_failure_twice_for_one_message_keeps_one_row(
    sqlite_session: Session, tenant: Tenant
) -> None:
    first = record_ingest_failure(sqlite_session, tenant.id, "u", message_id="m1", error="one")
    second = record_ingest_failure(sqlite_session, tenant.id, "u", message_id="m1", error="two")

    assert first == second
    assert get_ingest(sqlite_session, first)["error"] == "two"


def test_record_ingest_failure_for_a_missing_tenant_writes_nothing(
    sqlite_session: Session,
) -> None:
    assert record_ingest_failure(sqlite_session, 999, "u", message_id=None, error="x") == 0
    assert sqlite_session.scalar(select(func.count()).select_from(Ingest)) == 0


def test_get_ingest_summarises_counts_and_problem_items(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    url = feed.serve([item(id="ok")] + ["junk"] * 25)
    plan = start_ingest(sqlite_session, tenant.id, url, http=http, limits=LIMITS)

    summary = get_ingest(sqlite_session, plan["ingest_id"], tenant_id=tenant.id)

    assert summary["id"] == plan["ingest_id"]
    assert summary["tenant_id"] == tenant.id
    assert (summary["status"], summary["fetched"], summary["valid"]) == ("running", 26, 1)
    assert (summary["rejected"], summary["processed"], summary["failed"]) == (25, 0, 0)
    assert summary["created_at"] is not None
    assert dt.datetime.fromisoformat(summary["created_at"]).tzinfo is not None
    assert summary["finished_at"] is None
    assert len(summary["items_rejected"]) == 20
    assert summary["items_rejected"][0] == {
        "position": 1,
        "resource_id": None,
        "error": "item is not a JSON object",
    }
    assert summary["items_failed"] == []


def test_get_ingest_of_another_tenant_is_not_found(
    sqlite_session: Session, tenant: Tenant, feed: CannedFeed, http: requests.Session
) -> None:
    plan = start_ingest(sqlite_session, tenant.id, feed.serve([]), http=http, limits=LIMITS)

    with pytest.raises(NotFound, match=f"ingest {plan['ingest_id']} does not exist for tenant"):
        get_ingest(sqlite_session, plan["ingest_id"], tenant_id=tenant.id + 1)


def test_get_ingest_that_does_not_exist_is_not_found(sqlite_session: Session) -> None:
    with pytest.raises(NotFound):
        get_ingest(sqlite_session, 12345)
