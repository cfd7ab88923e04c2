"""Searching job records and dead letters by their error: any case, the text taken literally."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from db.models import Job, Tenant
from services.dead_letters import (
    DeadLetterFilter,
    count_dead_letters,
    list_dead_letters,
    record_dead_letter,
)
from services.jobs import list_jobs

ERRORS = ["ConnectionError: upstream refused", "ValueError: 100% wrong", None]


def test_jobs_and_dead_letters_are_found_by_a_piece_of_their_error(
    sqlite_session: Session, tenant: Tenant
) -> None:
    for error in ERRORS:
        message_id = str(uuid.uuid4())
        sqlite_session.add(
            Job(message_id=message_id, tenant_id=tenant.id, actor="a", queue="q", args={},
                error=error)
        )  # fmt: skip
        record_dead_letter(
            sqlite_session, message_id=message_id, queue="q", reason="r", error=error,
            traceback=None, attempts=1, actor="a", tenant_id=tenant.id,
        )  # fmt: skip
    sqlite_session.flush()

    def jobs(text: str) -> list[str | None]:
        return [j.error for j in list_jobs(sqlite_session, error_contains=text)]

    def letters(text: str) -> list[str | None]:
        flt = DeadLetterFilter(error_contains=text)
        return [d.error for d in list_dead_letters(sqlite_session, flt)]

    assert jobs("UPSTREAM") == letters("UPSTREAM") == [ERRORS[0]]
    # % and _ are the text itself, not LIKE's wildcards.
    assert jobs("%") == letters("%") == [ERRORS[1]]
    assert jobs("_") == letters("_") == []
    assert count_dead_letters(sqlite_session, DeadLetterFilter(error_contains="error")) == 2
