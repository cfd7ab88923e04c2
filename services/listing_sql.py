"""The SQL of the jobs listing and of what workers run: written once, read two ways.

`services.jobs.list_jobs` and `services.workers.running_jobs` run these
statements through SQLAlchemy (`db.session.fetch`: PostgreSQL, and SQLite for
the demo); the command line's `jobs list` runs the same statements with plain
psycopg2 (`cli/quick.py`), so that it need not import SQLAlchemy at all.  No
SQLAlchemy here.

Each statement names its parameters `:name`.  It says which of them are times
(SQLite compares times as the text SQLAlchemy writes, so they are bound as
SQLAlchemy's times there) and which are lists (`IN :name`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.pagination import Position, after_params, after_sql, order_sql

# Every column of `jobs` (db.models.Job), in the order a statement selects them; a test
# checks that this is the model's set.
JOB_COLUMNS = (
    "message_id", "tenant_id", "actor", "queue", "args", "status", "attempts", "deliveries",
    "enqueued_at", "started_at", "finished_at", "error", "attempt_history", "result",
    "result_dropped", "schedule_id", "slot_at", "created_at", "updated_at",
)  # fmt: skip
# What `running` reads of a worker's heartbeat row (services.job_views.HeartbeatRow).
HEARTBEAT_COLUMNS = ("worker_id", "host", "pid", "running")
# The character that escapes `%`, `_` and itself in a LIKE pattern.
LIKE_ESCAPE = "/"
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@dataclass(frozen=True)
class Statement:
    """A SELECT with named parameters (`:name`), and the columns it returns, in order."""

    sql: str
    params: dict[str, Any]
    columns: tuple[str, ...]
    # Parameters that are times (bound as SQLAlchemy's times on SQLite).
    times: frozenset[str] = field(default_factory=frozenset)
    # Parameters that are lists (`IN :name`).
    lists: frozenset[str] = field(default_factory=frozenset)

    def pyformat(self) -> str:
        """The SQL with psycopg2's `%(name)s` parameters (a literal `%` doubled)."""
        return _NAMED.sub(r"%(\1)s", self.sql.replace("%", "%%"))

    def driver_params(self) -> dict[str, Any]:
        """The parameters as psycopg2 takes them (a list as a tuple, for `IN`)."""
        return {k: tuple(v) if k in self.lists else v for k, v in self.params.items()}


def like_contains(text: str) -> str:
    """The LIKE pattern for `text` anywhere: its `%`, `_` and `/` escaped (`ESCAPE '/'`)."""
    escaped = (
        text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


def _select(columns: Sequence[str], table: str) -> str:
    return f"SELECT {', '.join(columns)} FROM {table}"


def jobs_page(
    dialect: str,
    *,
    tenant_id: int | None = None,
    status: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    error_contains: str | None = None,
    exclude_queue: str | None = None,
    after: Position | None = None,
    limit: int = 50,
) -> Statement:
    """One page of job records, newest first (by creation), filtered (`list_jobs`).

    Each filter and combination reads an index in this order (migration 0009);
    `error_contains` (any case) is checked on the rows read, so narrow it with another.
    `exclude_queue` (the system queue, say) only drops rows of the pages read.
    `since` and `until` bound the creation time (`until` excluded): both narrow the
    range of the same index, and a cursor resumes within it.  `after`: the keyset
    (services/pagination.py), as a range on `created_at` and the tie-break.
    """
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    times: set[str] = set()
    if exclude_queue is not None:
        where.append("queue <> :exclude_queue")
        params["exclude_queue"] = exclude_queue
    if tenant_id is not None:
        where.append("tenant_id = :tenant_id")
        params["tenant_id"] = tenant_id
    if status is not None:
        where.append("status = :status")
        params["status"] = status
    if actor is not None:
        where.append("actor = :actor")
        params["actor"] = actor
    if since is not None:
        where.append("created_at >= :since")
        params["since"] = since
        times.add("since")
    if until is not None:
        where.append("created_at < :until")
        params["until"] = until
        times.add("until")
    if error_contains is not None:
        error = (
            "error ILIKE :error" if dialect == "postgresql" else "lower(error) LIKE lower(:error)"
        )
        where.append(f"{error} ESCAPE '{LIKE_ESCAPE}'")
        params["error"] = like_contains(error_contains)
    where += after_sql(dialect, "created_at", "message_id", after)
    if after is not None:
        params.update(after_params(after))
        times.add("after_at")
    sql = _select(JOB_COLUMNS, "jobs")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order_sql(dialect, 'created_at', 'message_id')} LIMIT :limit"
    return Statement(sql, params, JOB_COLUMNS, times=frozenset(times))


def jobs_with_ids(message_ids: Sequence[str]) -> Statement:
    """The records of these messages (any order); the list must not be empty."""
    if not message_ids:
        raise ValueError("jobs_with_ids needs at least one message id")
    sql = _select(JOB_COLUMNS, "jobs") + " WHERE message_id IN :ids"
    return Statement(sql, {"ids": list(message_ids)}, JOB_COLUMNS, lists=frozenset({"ids"}))


def live_heartbeats(since: dt.datetime) -> Statement:
    """The heartbeat rows written since `since`: the live workers' (`running_jobs`)."""
    sql = _select(HEARTBEAT_COLUMNS, "workers") + " WHERE heartbeat_at >= :since"
    return Statement(sql, {"since": since}, HEARTBEAT_COLUMNS, times=frozenset({"since"}))
