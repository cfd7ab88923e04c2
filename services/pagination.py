"""Keyset pagination: where a listing's page ended, as an opaque cursor for the next page.

A listing sorted newest first by a timestamp, ties by a unique key, goes on
from the last record it showed (`WHERE (at, key) after the cursor`), never
with OFFSET: every page is read from the index in the order printed, however
deep, and records written meanwhile neither repeat nor push others off a page.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.errors import TaskyardError

if TYPE_CHECKING:
    from sqlalchemy import TextClause
    from sqlalchemy.orm import Session

# A cursor this Taskyard writes is far shorter; anything longer is not one.
MAX_CURSOR_LENGTH = 300
MAX_KEY_LENGTH = 64
# How SQLite's text times are compared and ordered (to the millisecond).
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%f"


class InvalidCursor(TaskyardError):
    """A cursor that no listing of this kind gave: malformed, or another listing's."""


@dataclass(frozen=True, slots=True)
class Position:
    """The last record a page showed: its timestamp and its unique key."""

    at: dt.datetime
    key: str


def encode_cursor(listing: str, at: dt.datetime, key: str) -> str:
    """The cursor of `listing` that resumes after the record (`at`, `key`)."""
    moment = at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    raw = json.dumps([listing, moment.isoformat(), key], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(listing: str, cursor: str) -> Position:
    """The position a cursor of `listing` stands for; `InvalidCursor` for anything else.

    A cursor comes from the command line: untrusted, and never more than a position.
    """
    problem = _problem(listing, cursor)
    if isinstance(problem, Position):
        return problem
    raise InvalidCursor(
        f"{cursor[:40]!r}{'…' if len(cursor) > 40 else ''} is not a cursor of {listing} "
        f"({problem}): pass the `cursor` of the last record of the page before (--json), "
        "or leave it out for the first page"
    )


def _problem(listing: str, cursor: str) -> Position | str:
    if not cursor or len(cursor) > MAX_CURSOR_LENGTH:
        return f"a cursor has 1 to {MAX_CURSOR_LENGTH} characters"
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data: Any = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError):
        return "not the encoding of a cursor"
    if not (isinstance(data, list) and len(data) == 3 and all(isinstance(v, str) for v in data)):
        return "not the shape of a cursor"
    kind, at_text, key = data
    if kind != listing:
        return f"it is a cursor of {kind[:40]!r}"
    try:
        at = dt.datetime.fromisoformat(at_text)
    except ValueError:
        return "its time is not an ISO-8601 time"
    if at.tzinfo is None or not 0 < len(key) <= MAX_KEY_LENGTH or "\x00" in key:
        return "its position is not one a listing gives"
    return Position(at, key)


# The order and the conditions are written once, as SQL text on column names: statements
# written as text (services/listing_sql.py) take them as they are, and SQLAlchemy
# queries (the dead-letter listing) through `order` and `after`.


def sortable_sql(dialect: str, expression: str) -> str:
    """A time as listings order and compare it: itself, or on SQLite (the demo) one text format.

    SQLite keeps times as text written two ways (its CURRENT_TIMESTAMP, and the
    driver's with microseconds), which do not compare as the times they stand for.
    """
    if dialect == "sqlite":
        return f"strftime('{SQLITE_TIME_FORMAT}', {expression})"
    return expression


def order_sql(dialect: str, at: str, key: str) -> str:
    """What follows ORDER BY in a listing: `at` newest first, ties by `key`."""
    return f"{sortable_sql(dialect, at)} DESC, {key}"


def after_sql(dialect: str, at: str, key: str, position: Position | None) -> list[str]:
    """Conditions for what comes after `position` in `order_sql(at, key)` (none: all), on
    the parameters `:after_at` and `:after_key` (`after_params`).

    Written as a range on `at` (which an index on it bounds) and the tie-break.
    """
    if position is None:
        return []
    at, mark = sortable_sql(dialect, at), sortable_sql(dialect, ":after_at")
    return [f"{at} <= {mark}", f"({at} < {mark} OR ({at} = {mark} AND {key} > :after_key))"]


def after_params(position: Position | None) -> dict[str, Any]:
    """The parameters of `after_sql`'s conditions (`after_at` is a time)."""
    return {} if position is None else {"after_at": position.at, "after_key": position.key}


def order(session: Session, at: Any, key: Any) -> list[TextClause]:
    """`order_sql` for a SQLAlchemy query on the columns `at` and `key` of one table."""
    from sqlalchemy import text

    return [text(order_sql(session.get_bind().dialect.name, at.name, key.name))]


def after(session: Session, at: Any, key: Any, position: Position | None) -> list[TextClause]:
    """`after_sql` for a SQLAlchemy query on the columns `at` and `key` of one table."""
    if position is None:
        return []
    from sqlalchemy import DateTime, bindparam, text

    conditions = " AND ".join(
        after_sql(session.get_bind().dialect.name, at.name, key.name, position)
    )
    return [
        text(conditions).bindparams(
            bindparam("after_at", position.at, type_=DateTime(timezone=True)),
            bindparam("after_key", position.key),
        )
    ]
