"""Dead letters: every message given up on, kept until an operator requeues or purges it."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from sqlalchemy import ColumnElement, and_, delete, func, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import JOB_QUEUED, JOB_SUCCEEDED, DeadLetter, Job
from services.errors import NotFound, PermanentError
from services.pagination import Position, encode_cursor
from services.pagination import after as keyset_after
from services.pagination import order as keyset_order

MAX_ERROR_LENGTH = 4_000
# The end of a traceback names the error; its start is what gets cut.
MAX_TRACEBACK_LENGTH = 16_000
# Enough of an undecodable body to see what it was, not a copy of a huge one.
MAX_RAW_BODY_BYTES = 64 * 1024
# Rows one requeue takes (and locks) at most; call again for the rest.
REQUEUE_BATCH = 1_000
# Widths of the dead_letters columns (migration 0002).
_ID_WIDTH, _NAME_WIDTH, _REASON_WIDTH = 64, 200, 64


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to list, requeue or purge; requeued ones only when asked."""

    tenant_id: int | None = None
    actor: str | None = None
    reason: str | None = None
    since: dt.datetime | None = None
    include_requeued: bool = False
    # Only these (a selection of the web console); None: any.
    message_ids: tuple[str, ...] | None = None
    # Only those whose error contains this text, in any case (a scan: narrow it by tenant).
    error_contains: str | None = None
    # Only those dead before this moment (excluded).
    until: dt.datetime | None = None


class DeadLetterInfo(TypedDict):
    """A dead letter as the command line shows it."""

    message_id: str
    tenant_id: int | None
    actor: str | None
    queue: str
    reason: str
    error: str | None
    traceback: str | None
    attempts: int
    message: dict[str, Any] | None
    raw_body: str | None
    created_at: str
    requeued_at: str | None
    requeueable: bool
    # In a listing: where the next page starts after this dead letter (`--after`).
    cursor: NotRequired[str]


def _fit(value: str, limit: int, *, keep_end: bool = False) -> str:
    # PostgreSQL text cannot hold NUL; a failure to store would lose the dead letter.
    value = value.replace("\x00", "\ufffd")
    if len(value) <= limit:
        return value
    return "…" + value[-(limit - 1) :] if keep_end else value[: limit - 1] + "…"


def _scrub(value: Any) -> Any:
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {_scrub(key): _scrub(item) for key, item in value.items()}
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def record_dead_letter(
    session: Session,
    *,
    message_id: str,
    queue: str,
    reason: str,
    error: str | None,
    traceback: str | None,
    attempts: int,
    actor: str | None = None,
    tenant_id: int | None = None,
    message: dict[str, Any] | None = None,
    raw_body: bytes | str | None = None,
    replace: bool = True,
) -> bool:
    """Keep a dead letter, or refresh one requeued since; True when written.

    With `replace=False`, a current (not requeued) dead letter with the same id
    is left as it is: whoever recorded it first knew more.  An id already held
    by another job's dead letter (another queue, actor or tenant) leaves that
    one untouched; this one is kept under a fresh id, its error naming the id.
    """
    raw = raw_body.encode("utf-8", "replace") if isinstance(raw_body, str) else raw_body
    raw_text = None if raw is None else raw[:MAX_RAW_BODY_BYTES].decode("utf-8", "replace")
    if raw is not None and len(raw) > MAX_RAW_BODY_BYTES:
        note = f"(raw body of {len(raw)} bytes; the first {MAX_RAW_BODY_BYTES} kept)"
        error = f"{error} {note}" if error else note
    stored = None if message is None else _scrub(json.loads(json.dumps(message, default=str)))
    row: dict[str, Any] = {
        "message_id": _fit(message_id, _ID_WIDTH),
        "queue": _fit(queue, _NAME_WIDTH),
        "reason": _fit(reason, _REASON_WIDTH),
        "error": None if error is None else _fit(error, MAX_ERROR_LENGTH),
        "traceback": None
        if traceback is None
        else _fit(traceback, MAX_TRACEBACK_LENGTH, keep_end=True),
        "attempts": attempts,
        "actor": None if actor is None else _fit(actor, _NAME_WIDTH),
        "tenant_id": tenant_id if tenant_id is None or abs(tenant_id) < 2**63 else None,
        # An explicit NULL: a bare None would be stored as the JSON value null.
        "message": null() if stored is None else stored,
        "raw_body": None if raw_text is None else _fit(raw_text, MAX_RAW_BODY_BYTES),
        "requeued_at": None,
    }
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(DeadLetter)
    job = session.execute(
        select(Job.queue, Job.actor, Job.tenant_id).where(Job.message_id == row["message_id"])
    ).first()
    if job is not None and tuple(job) != (row["queue"], row["actor"], row["tenant_id"]):
        # The id is another job's: this dead letter must not take its place.
        return _keep_apart(session, insert, row, "belongs to another job")
    stmt = insert.values(**row)
    refreshed = {name: stmt.excluded[name] for name in row if name != "message_id"}
    # A dead letter belongs to the job (queue, actor, tenant) that made it: a message
    # reusing its id is never merged into it.
    same_job = and_(
        DeadLetter.queue == stmt.excluded.queue,
        DeadLetter.actor.is_not_distinct_from(stmt.excluded.actor),
        DeadLetter.tenant_id.is_not_distinct_from(stmt.excluded.tenant_id),
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[DeadLetter.message_id],
        # The row stands for the latest dead-lettering, so it is dated anew.
        set_={**refreshed, "created_at": func.now()},
        where=same_job if replace else and_(same_job, DeadLetter.requeued_at.is_not(None)),
    )
    if session.execute(upsert.returning(DeadLetter.message_id)).first() is not None:
        return True
    held = session.execute(
        select(DeadLetter.queue, DeadLetter.actor, DeadLetter.tenant_id).where(
            DeadLetter.message_id == row["message_id"]
        )
    ).first()
    if held is None or tuple(held) == (row["queue"], row["actor"], row["tenant_id"]):
        return False  # the same job's current dead letter, kept (replace=False)
    return _keep_apart(session, insert, row, "belongs to another job's dead letter")


def _keep_apart(session: Session, insert: Any, row: dict[str, Any], why: str) -> bool:
    """Keep a dead letter under an id of its own, its error naming the id it came with."""
    claimed = row["message_id"]
    note = f"(its message id {claimed!r} {why}, left unchanged)"
    error = _fit(f"{row['error']} {note}" if row["error"] else note, MAX_ERROR_LENGTH)
    session.execute(insert.values(**(row | {"message_id": str(uuid.uuid4()), "error": error})))
    return True


def _conditions(flt: DeadLetterFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if flt.tenant_id is not None:
        conditions.append(DeadLetter.tenant_id == flt.tenant_id)
    if flt.actor is not None:
        conditions.append(DeadLetter.actor == flt.actor)
    if flt.reason is not None:
        conditions.append(DeadLetter.reason == flt.reason)
    if flt.since is not None:
        conditions.append(DeadLetter.created_at >= flt.since)
    if flt.until is not None:
        conditions.append(DeadLetter.created_at < flt.until)
    if not flt.include_requeued:
        conditions.append(DeadLetter.requeued_at.is_(None))
    if flt.message_ids is not None:
        conditions.append(DeadLetter.message_id.in_(flt.message_ids))
    if flt.error_contains is not None:
        conditions.append(DeadLetter.error.icontains(flt.error_contains, autoescape=True))
    return conditions


# The listing name a dead-letter cursor carries (services/pagination.py).
DEAD_LETTERS_LISTING = "dead-letters"


def dead_letter_cursor(dead: DeadLetter) -> str:
    """The cursor that resumes a listing of dead letters after `dead`."""
    return encode_cursor(DEAD_LETTERS_LISTING, dead.created_at, dead.message_id)


def list_dead_letters(
    session: Session,
    flt: DeadLetterFilter,
    *,
    after: Position | None = None,
    limit: int = 100,
) -> list[DeadLetter]:
    """The newest dead letters first, filtered, from `after` on (a keyset page)."""
    query = select(DeadLetter).where(*_conditions(flt))
    query = query.where(*keyset_after(session, DeadLetter.created_at, DeadLetter.message_id, after))
    query = query.order_by(*keyset_order(session, DeadLetter.created_at, DeadLetter.message_id))
    query = query.limit(limit)
    return list(session.scalars(query))


def get_dead_letter(session: Session, message_id: str) -> DeadLetter:
    """The dead letter of one message, or `NotFound`."""
    dead = session.get(DeadLetter, message_id)
    if dead is None:
        raise NotFound(f"no dead letter for message {message_id!r}")
    return dead


def dead_letter_info(dl: DeadLetter) -> DeadLetterInfo:
    """The plain-data view of a dead letter."""
    return {
        "message_id": dl.message_id,
        "tenant_id": dl.tenant_id,
        "actor": dl.actor,
        "queue": dl.queue,
        "reason": dl.reason,
        "error": dl.error,
        "traceback": dl.traceback,
        "attempts": dl.attempts,
        "message": dl.message,
        "raw_body": dl.raw_body,
        "created_at": dl.created_at.isoformat(),
        "requeued_at": dl.requeued_at.isoformat() if dl.requeued_at else None,
        "requeueable": dl.message is not None and dl.requeued_at is None,
    }


def _for_requeue(dead: DeadLetter, message: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in dict(message.get("options") or {}).items() if k != "eta"}
    # Back to the queue it was dead-lettered from, whatever its body says: a requeue
    # never moves a message onto another queue (another tenant's).
    return {**message, "queue_name": dead.queue, "options": options | {"retries": 0}}


def _take_one(session: Session, message_id: str) -> DeadLetter:
    query = select(DeadLetter).where(DeadLetter.message_id == message_id).with_for_update()
    dead = session.scalars(query.execution_options(populate_existing=True)).first()
    if dead is None:
        raise NotFound(f"no dead letter for message {message_id!r}")
    if dead.message is None:
        raise PermanentError(
            f"dead letter {message_id} ({dead.reason}) could not be decoded, so it cannot be "
            "requeued; inspect its raw body, then purge it",
            reason="not_requeueable",
        )
    if dead.requeued_at is not None:
        raise PermanentError(
            f"dead letter {message_id} was already requeued at {dead.requeued_at.isoformat()}",
            reason="already_requeued",
        )
    return dead


def _requeueable(flt: DeadLetterFilter) -> list[ColumnElement[bool]]:
    """The dead letters `flt` matches that can be requeued: current, with a decoded message."""
    return [*_conditions(flt), DeadLetter.requeued_at.is_(None), DeadLetter.message.is_not(None)]


def count_requeueable(session: Session, flt: DeadLetterFilter) -> int:
    """How many dead letters `take_for_requeue(flt=flt)` would take, over all its batches."""
    query = select(func.count()).select_from(DeadLetter).where(*_requeueable(flt))
    return int(session.scalar(query) or 0)


def count_dead_letters(session: Session, flt: DeadLetterFilter) -> int:
    """How many dead letters `flt` matches (what `purge_dead_letters(flt)` would delete)."""
    query = select(func.count()).select_from(DeadLetter).where(*_conditions(flt))
    return int(session.scalar(query) or 0)


def take_for_requeue(
    session: Session,
    *,
    message_id: str | None = None,
    flt: DeadLetterFilter | None = None,
    limit: int = REQUEUE_BATCH,
) -> list[dict[str, Any]]:
    """Mark dead letters requeued, queue their jobs again, and return the messages to publish.

    Publish each with `publish_now(broker, dramatiq.Message(**d))` before committing:
    a failed publish then rolls the whole requeue back, and a message that
    arrives before the commit waits on its job record's lock, then runs.
    """
    if message_id is not None and flt is None:
        taken = [_take_one(session, message_id)]
    elif flt is not None and message_id is None:
        query = select(DeadLetter).where(*_requeueable(flt))
        query = query.order_by(DeadLetter.created_at, DeadLetter.message_id).limit(limit)
        # Two operators requeueing at once take disjoint rows.
        query = query.with_for_update(skip_locked=True)
        taken = list(session.scalars(query.execution_options(populate_existing=True)))
    else:
        raise ValueError("take_for_requeue needs exactly one of message_id and flt")
    now = dt.datetime.now(dt.UTC)
    for dead in taken:
        dead.requeued_at = now
    # Each dead letter's own job record goes back to queued: the record of its id
    # with its queue, actor and tenant (a dead letter never resets another job's).
    owners = {(d.message_id, d.queue, d.actor, d.tenant_id) for d in taken}
    found = session.execute(
        select(Job.message_id, Job.queue, Job.actor, Job.tenant_id).where(
            Job.message_id.in_([dead.message_id for dead in taken])
        )
    )
    own = [row.message_id for row in found if tuple(row) in owners]
    # A job that succeeded is never run again; its requeued message is skipped.
    session.execute(
        update(Job)
        .where(Job.message_id.in_(own))
        .where(Job.status != JOB_SUCCEEDED)
        .values(status=JOB_QUEUED, attempts=0, deliveries=0, finished_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return [_for_requeue(dead, dead.message) for dead in taken if dead.message is not None]


def purge_dead_letters(session: Session, flt: DeadLetterFilter) -> int:
    """Delete the dead letters matching `flt`; returns how many."""
    result = session.execute(
        delete(DeadLetter).where(*_conditions(flt)).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
