"""The dead-letter service on SQLite: record, list, requeue, purge."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import DeadLetter, Job
from services import jobs
from services.dead_letters import (
    MAX_RAW_BODY_BYTES,
    DeadLetterFilter,
    count_requeueable,
    dead_letter_info,
    get_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    record_dead_letter,
    take_for_requeue,
)
from services.errors import NotFound, PermanentError
from services.records import JobRecord

QUEUE = "tenant.1"


def message_dict(message_id: str, actor: str = "ingest", **options: Any) -> dict[str, Any]:
    """A dramatiq message as `Message.asdict()` gives it."""
    return {
        "queue_name": QUEUE,
        "actor_name": actor,
        "args": (),
        "kwargs": {"tenant_id": 1},
        "options": options,
        "message_id": message_id,
        "message_timestamp": 1_700_000_000_000,
    }


def dead(
    session: Session,
    message_id: str,
    *,
    reason: str = "fetch_refused",
    actor: str = "ingest",
    tenant_id: int | None = 1,
    decodable: bool = True,
    **options: Any,
) -> None:
    """Record a dead letter (and its dead job record, for a decodable one)."""
    if decodable:
        record = JobRecord(message_id, tenant_id, actor, QUEUE, {"tenant_id": tenant_id}, None)
        record.attempts = 3
        jobs.record_failure(session, record, error="FetchRefused: 404", dead=True)
    record_dead_letter(
        session,
        message_id=message_id,
        queue=QUEUE,
        reason=reason,
        error="FetchRefused: 404",
        traceback="Traceback...\nFetchRefused: 404\n",
        attempts=3,
        actor=actor,
        tenant_id=tenant_id,
        message=message_dict(message_id, actor, **options) if decodable else None,
        raw_body=None if decodable else b"\x80\x04not json\x00",
    )
    session.flush()


def ids(rows: list[Any]) -> list[str]:
    """The message ids of dead letters or message dicts, sorted."""
    return sorted(r["message_id"] if isinstance(r, dict) else r.message_id for r in rows)


def test_recording_twice_keeps_one_row_with_the_latest_failure(sqlite_session: Session) -> None:
    dead(sqlite_session, "m1", reason="fetch_refused")
    take_for_requeue(sqlite_session, message_id="m1")
    dead(sqlite_session, "m1", reason="max_attempts_exceeded")

    rows = list_dead_letters(sqlite_session, DeadLetterFilter(include_requeued=True))
    assert [(r.message_id, r.reason, r.requeued_at) for r in rows] == [
        ("m1", "max_attempts_exceeded", None)
    ]


def test_replace_false_leaves_a_current_row_alone(sqlite_session: Session) -> None:
    dead(sqlite_session, "m1", reason="fetch_refused")
    written = record_dead_letter(
        sqlite_session,
        message_id="m1",
        queue=QUEUE,
        reason="failed",
        error="later",
        traceback=None,
        attempts=1,
        actor="ingest",
        tenant_id=1,
        replace=False,
    )
    assert written is False
    assert get_dead_letter(sqlite_session, "m1").reason == "fetch_refused"


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize(
    "other",
    [
        {"tenant_id": 2, "actor": "ingest", "queue": QUEUE},
        {"tenant_id": None, "actor": "ingest", "queue": QUEUE},
        {"tenant_id": 1, "actor": "delete_tenant", "queue": QUEUE},
        {"tenant_id": 1, "actor": "ingest", "queue": "other.queue"},
    ],
)
def test_another_jobs_dead_letter_is_never_merged_into(
    sqlite_session: Session, other: dict[str, Any], replace: bool
) -> None:
    # Given tenant 1's dead letter m1
    dead(sqlite_session, "m1", reason="fetch_refused")
    before = dead_letter_info(get_dead_letter(sqlite_session, "m1"))
    # When a message of another tenant, actor or queue that reuses the id is dead-lettered
    written = record_dead_letter(
        sqlite_session,
        message_id="m1",
        reason="crafted",
        error="boom",
        traceback=None,
        attempts=1,
        message={"message_id": "m1"},
        replace=replace,
        **other,
    )
    # Then m1 is unchanged, and the other is kept under an id of its own that says why
    assert written is True
    assert dead_letter_info(get_dead_letter(sqlite_session, "m1")) == before
    others = [d for d in sqlite_session.scalars(select(DeadLetter)) if d.message_id != "m1"]
    assert [(d.reason, d.tenant_id) for d in others] == [("crafted", other["tenant_id"])]
    assert "'m1' belongs to another job" in (others[0].error or "")


def test_raw_body_is_kept_as_text_and_cut_at_the_limit(sqlite_session: Session) -> None:
    body = b"\xff" + b"x" * (2 * MAX_RAW_BODY_BYTES)
    record_dead_letter(
        sqlite_session,
        message_id="big",
        queue=QUEUE,
        reason="too_large",
        error="too big",
        traceback="t" * 100_000,
        attempts=0,
        raw_body=body,
    )
    info = dead_letter_info(get_dead_letter(sqlite_session, "big"))
    assert info["raw_body"] is not None and info["raw_body"].startswith("\ufffdxxx")
    assert len(info["raw_body"].encode()) <= MAX_RAW_BODY_BYTES + 2
    assert f"raw body of {len(body)} bytes" in (info["error"] or "")
    assert info["message"] is None and info["requeueable"] is False
    assert info["traceback"] is not None and len(info["traceback"]) < 100_000


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (DeadLetterFilter(), ["a", "b", "c"]),
        (DeadLetterFilter(tenant_id=2), ["c"]),
        (DeadLetterFilter(actor="sync"), ["b"]),
        (DeadLetterFilter(reason="unknown_tenant"), ["c"]),
        (DeadLetterFilter(since=dt.datetime(2999, 1, 1, tzinfo=dt.UTC)), []),
        (DeadLetterFilter(include_requeued=True), ["a", "b", "c", "r"]),
    ],
)
def test_list_filters(sqlite_session: Session, flt: DeadLetterFilter, expected: list[str]) -> None:
    dead(sqlite_session, "a")
    dead(sqlite_session, "b", actor="sync")
    dead(sqlite_session, "c", tenant_id=2, reason="unknown_tenant")
    dead(sqlite_session, "r")
    take_for_requeue(sqlite_session, message_id="r")

    assert ids(list_dead_letters(sqlite_session, flt)) == expected


def test_requeue_by_id_resets_retries_and_queues_the_job(sqlite_session: Session) -> None:
    # Given a job that died on its third attempt
    dead(sqlite_session, "m1", retries=2, eta=123, max_attempts=5)

    # When it is taken for requeue
    [message] = take_for_requeue(sqlite_session, message_id="m1")

    # Then the message is as sent, with no retries used, and its job is queued again
    assert message["options"] == {"retries": 0, "max_attempts": 5}
    assert (message["message_id"], message["queue_name"]) == ("m1", QUEUE)
    job = sqlite_session.get(Job, "m1")
    assert job is not None
    assert (job.status, job.attempts, job.finished_at) == ("queued", 0, None)
    assert job.error == "FetchRefused: 404"
    assert get_dead_letter(sqlite_session, "m1").requeued_at is not None
    with pytest.raises(PermanentError, match="already requeued"):
        take_for_requeue(sqlite_session, message_id="m1")


def test_requeue_by_filter_takes_only_current_decodable_matches(sqlite_session: Session) -> None:
    dead(sqlite_session, "a", tenant_id=1)
    dead(sqlite_session, "b", tenant_id=1)
    dead(sqlite_session, "other", tenant_id=2)
    dead(sqlite_session, "raw", tenant_id=1, decodable=False)

    taken = take_for_requeue(sqlite_session, flt=DeadLetterFilter(tenant_id=1))

    assert ids(taken) == ["a", "b"]
    assert all(m["options"]["retries"] == 0 for m in taken)
    assert take_for_requeue(sqlite_session, flt=DeadLetterFilter(tenant_id=1)) == []
    assert ids(list_dead_letters(sqlite_session, DeadLetterFilter())) == ["other", "raw"]


@pytest.mark.parametrize(
    "flt",
    [
        DeadLetterFilter(),
        DeadLetterFilter(tenant_id=1),
        DeadLetterFilter(tenant_id=2),
        DeadLetterFilter(actor="sync"),
        DeadLetterFilter(reason="unknown_tenant"),
        DeadLetterFilter(since=dt.datetime(2999, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_the_requeue_count_is_what_the_batches_then_take(
    sqlite_session: Session, flt: DeadLetterFilter
) -> None:
    # `dead-letters requeue --all` shows this count as its progress bar's total.
    dead(sqlite_session, "a")
    dead(sqlite_session, "b", actor="sync")
    dead(sqlite_session, "c", tenant_id=2, reason="unknown_tenant")
    dead(sqlite_session, "d", tenant_id=2)
    dead(sqlite_session, "raw", decodable=False)
    dead(sqlite_session, "r")
    take_for_requeue(sqlite_session, message_id="r")

    counted = count_requeueable(sqlite_session, flt)
    taken: list[dict[str, Any]] = []
    while batch := take_for_requeue(sqlite_session, flt=flt, limit=2):
        taken += batch

    assert counted == len(taken)
    assert count_requeueable(sqlite_session, flt) == 0


def test_undecodable_dead_letter_cannot_be_requeued(sqlite_session: Session) -> None:
    dead(sqlite_session, "raw", decodable=False)

    with pytest.raises(PermanentError, match="could not be decoded"):
        take_for_requeue(sqlite_session, message_id="raw")
    with pytest.raises(NotFound):
        take_for_requeue(sqlite_session, message_id="missing")
    with pytest.raises(ValueError, match="exactly one"):
        take_for_requeue(sqlite_session)
    assert "\x00" not in (get_dead_letter(sqlite_session, "raw").raw_body or "")


def test_purge_deletes_only_matches(sqlite_session: Session) -> None:
    dead(sqlite_session, "a", reason="unknown_actor")
    dead(sqlite_session, "b")
    dead(sqlite_session, "r", reason="unknown_actor")
    take_for_requeue(sqlite_session, message_id="r")

    assert purge_dead_letters(sqlite_session, DeadLetterFilter(reason="unknown_actor")) == 1
    assert ids(list_dead_letters(sqlite_session, DeadLetterFilter(include_requeued=True))) == [
        "b",
        "r",
    ]
    assert purge_dead_letters(sqlite_session, DeadLetterFilter(include_requeued=True)) == 2
    with pytest.raises(NotFound):
        get_dead_letter(sqlite_session, "b")
