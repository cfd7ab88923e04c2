"""Keyset cursors: a walk sees each record once (on SQLite too), and a bad cursor is refused."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from db.models import Job
from services.job_views import JOBS_LISTING, job_cursor
from services.jobs import list_jobs
from services.pagination import InvalidCursor, Position, decode_cursor, encode_cursor


def test_a_walk_over_times_written_two_ways_sees_each_record_once(sqlite_session: Session) -> None:
    # Given records dated by the database's default (whole seconds, all in one statement)
    # and records dated by the application (microseconds), around the same moment
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rows = [
        {"message_id": str(uuid.uuid4()), "tenant_id": 1, "actor": "a", "queue": "q",
         "args": {}, "status": "queued"}
        for _ in range(9)
    ]  # fmt: skip
    sqlite_session.execute(insert(Job), rows)
    dated = [
        row | {"message_id": str(uuid.uuid4()), "created_at": now + dt.timedelta(microseconds=n)}
        for n, row in enumerate(rows)
    ]
    sqlite_session.execute(insert(Job), dated)

    # When they are walked four at a time
    seen: list[str] = []
    after: Position | None = None
    for _ in range(10):
        page = list_jobs(sqlite_session, tenant_id=1, after=after, limit=4)
        seen += [job.message_id for job in page]
        if len(page) < 4:
            break
        after = decode_cursor(JOBS_LISTING, job_cursor(page[-1]))

    # Then each came once
    assert len(seen) == len(set(seen)) == 18


# A fixed moment: test ids must be the same in every xdist process that collects them.
FIXED_MOMENT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "nope",
        "%%%",
        "A" * 400,
        encode_cursor("dead-letters", FIXED_MOMENT, "x"),
        encode_cursor(JOBS_LISTING, FIXED_MOMENT, "")[:-2],
        encode_cursor(JOBS_LISTING, FIXED_MOMENT, "k" * 65),
    ],
)
def test_a_cursor_that_no_jobs_listing_gave_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor, match="is not a cursor of jobs"):
        decode_cursor(JOBS_LISTING, cursor)


def test_a_cursor_names_the_record_it_was_made_from() -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    assert decode_cursor(JOBS_LISTING, encode_cursor(JOBS_LISTING, at, "m-1")) == Position(
        at, "m-1"
    )
