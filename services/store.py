"""How big Taskyard's tables are: rows, bytes, the oldest record, retention lag, stuck records.

Cheap enough for every health check and metrics scrape on a large record, at
any number of records: the rows are PostgreSQL's estimate (pg_class.reltuples
scaled to the table's pages now, as the planner reads it; a table whose pages
were never counted, the statistics' count of its live rows; one with neither
is counted, up to COUNT_CAP), the bytes its own sizes from the
catalogue, the oldest record one read from an index (of the oldest partition
only, where `jobs` is partitioned by day), and the stuck count one index range
per partition old enough to hold such a record, stopping at `STUCK_CAP`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

from sqlalchemy import Connection, bindparam, column, func, literal, select, text
from sqlalchemy import table as sa_table
from sqlalchemy.orm import Session

from db.base import Base
from db.models import JOB_QUEUED, JOB_RETRYING, Job
from services import partitions
from services.workers import STALE_WORKER_AGE

# The stuck count stops here: past it the exact number does not change what to do.
STUCK_CAP = 10_000
# A table with neither a row estimate nor a live-row count (statistics reset) is
# counted, up to this.
COUNT_CAP = 100_000
# What one reading may take at most; a health check or a scrape never waits on it longer.
STATEMENT_TIMEOUT_MS = 2_000
# Non-final states a record waits in (running is never a record's own status).
WAITING_STATES = (JOB_QUEUED, JOB_RETRYING)
# The tables whose records age, with the column that dates a record and the indexed
# column whose smallest value finds the oldest one (the id follows insertion order).
DATED: dict[str, tuple[str, str]] = {
    "jobs": ("created_at", "created_at"),
    "dead_letters": ("created_at", "created_at"),
    "outbox": ("created_at", "id"),
    "ingests": ("created_at", "id"),
    "ingest_items": ("updated_at", "id"),
    "schedule_runs": ("created_at", "id"),
    "cancel_requests": ("requested_at", "message_id"),
    "workers": ("heartbeat_at", "heartbeat_at"),
}
# The tables the daily retention job empties of records older than
# TASKYARD_JOB_RETENTION_DAYS (services/retention.py; `workers`: of heartbeats older than
# STALE_WORKER_AGE).  `dead_letters` keeps an untouched letter until an operator
# purges it (only requeued ones expire), and the outbox empties itself: no retention lag.
JOB_RETAINED = ("jobs", "schedule_runs", "ingests", "ingest_items", "cancel_requests")


class TableStats(TypedDict):
    """One table: rows (an estimate), bytes of its heap (with TOAST) and of its indexes, oldest."""

    table: str
    rows: int
    heap_bytes: int | None
    index_bytes: int | None
    oldest_at: str | None
    oldest_age_seconds: float | None
    # How long the table keeps a record (None: no retention), and how far past it the
    # oldest record is (0 when on time or empty; None: no retention).
    retention_seconds: float | None
    retention_lag_seconds: float | None


class StoreStats(TypedDict):
    """Every Taskyard table, and the job records stuck past retention."""

    tables: list[TableStats]
    # Job records still queued or retrying, sent longer ago than the retention.
    stuck_jobs: int
    # True when `stuck_jobs` stopped at STUCK_CAP: there are at least that many.
    stuck_capped: bool
    retention_days: int


def table_names() -> list[str]:
    """Taskyard's tables, by name."""
    return sorted(Base.metadata.tables)


# Each table with its partitions (one level, as declarative partitioning by time makes
# them); a partitioned parent has no storage of its own and is left out.  Read from the
# catalogue, so the cost grows with the number of partitions, never with the rows:
# - rows as the planner estimates them: the density the last ANALYZE saw times today's
#   pages (one file size per table); for a table or partition whose pages were never
#   counted (never vacuumed or analyzed, or vacuumed when empty, as the outbox often is),
#   the cumulative statistics' live rows (kept by every insert and delete, read without
#   a scan: a count would read its dead rows too); one with data but no insert in the
#   statistics (they were reset) is `unknown` (and counted);
# - the heap's bytes: its main fork's size (the same file size) and its TOAST's pages as
#   last counted; the indexes' pages as last counted (VACUUM, ANALYZE, CREATE INDEX),
#   or their size where they were never counted (a new partition's).
_SIZES = text(
    """
    WITH named AS (
        SELECT t.name, to_regclass(t.name)::oid AS parent
        FROM unnest(CAST(:names AS text[])) AS t(name)
    ), rels AS (
        SELECT name, parent AS oid FROM named WHERE parent IS NOT NULL
        UNION ALL
        SELECT n.name, i.inhrelid FROM named AS n JOIN pg_inherits AS i ON i.inhparent = n.parent
    ), heaps AS (
        SELECT r.name, c.oid, c.relname, c.relpages, c.reltuples, c.reltoastrelid,
               pg_relation_size(c.oid) AS main_bytes,
               pg_stat_get_live_tuples(c.oid) AS live,
               pg_stat_get_tuples_inserted(c.oid) AS inserted
        FROM rels AS r JOIN pg_class AS c ON c.oid = r.oid AND c.relkind <> 'p'
    ), indexes AS (
        SELECT h.name,
               sum(CASE WHEN ic.relpages > 0
                        THEN ic.relpages::bigint * current_setting('block_size')::int
                        ELSE pg_relation_size(ic.oid) END)::bigint AS bytes
        FROM heaps AS h
        JOIN pg_index AS x ON x.indrelid = h.oid
        JOIN pg_class AS ic ON ic.oid = x.indexrelid
        GROUP BY h.name
    )
    SELECT h.name,
           sum(CASE WHEN h.relpages > 0
                    THEN h.reltuples / h.relpages * (h.main_bytes / 8192)
                    ELSE h.live END)::bigint AS rows,
           COALESCE(array_agg(h.relname) FILTER (WHERE h.relpages = 0 AND h.main_bytes > 0
                                                  AND h.inserted = 0),
                    '{}') AS unknown,
           (sum(h.main_bytes) + sum(COALESCE(t.relpages, 0))::bigint
               * current_setting('block_size')::int)::bigint AS heap_bytes,
           COALESCE(max(ix.bytes), 0) AS index_bytes
    FROM heaps AS h
    LEFT JOIN pg_class AS t ON t.oid = h.reltoastrelid
    LEFT JOIN indexes AS ix ON ix.name = h.name
    GROUP BY h.name
    """
)


def _sizes(connection: Connection, names: list[str]) -> dict[str, tuple[int, list[str], int, int]]:
    """Rows, the parts never analyzed, heap and index bytes of each table (with its partitions)."""
    rows = connection.execute(_SIZES, {"names": names}).all()
    return {
        r.name: (int(r.rows), list(r.unknown), int(r.heap_bytes), int(r.index_bytes)) for r in rows
    }


# Table and column names below are Taskyard's own (its metadata, DATED), never input.
def _count(connection: Connection, table: str, cap: int) -> int:
    capped = text(f'SELECT count(*) FROM (SELECT 1 FROM "{table}" LIMIT :cap) AS s')
    return int(connection.execute(capped, {"cap": cap}).scalar_one())


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def _first(connection: Connection, table: str, column: str, order: str) -> dt.datetime | None:
    query = text(f'SELECT "{column}" FROM "{table}" ORDER BY "{order}" LIMIT 1')
    return _aware(connection.execute(query).scalar_one_or_none())


def _oldest(connection: Connection, table: str, days: dict[dt.date, str]) -> dt.datetime | None:
    """The oldest record's date; for the partitioned `jobs` (`days`: its daily partitions),
    read from the default partition and the oldest daily one that holds a record only."""
    column, order = DATED[table]
    if table != partitions.TABLE or not days:
        return _first(connection, table, column, order)
    found = [_first(connection, partitions.DEFAULT_PARTITION, column, order)]
    # A day's records are all older than the next day's (a record's id is minted when it
    # is sent, `created_at` as it is written), so the first day that holds one has it.
    for day in sorted(days):
        first = _first(connection, days[day], column, order)
        if first is not None:
            found.append(first)
            break
    return min((value for value in found if value is not None), default=None)


def _waiting(table: str, cutoff: dt.datetime, cap: int) -> Any:
    rows = sa_table(table, column("status"), column("created_at"))
    return (
        select(literal(1))
        .select_from(rows)
        .where(rows.c.status.in_(WAITING_STATES), rows.c.created_at < cutoff)
        .limit(cap)
        .subquery()
    )


def stuck_jobs(
    connection: Connection | Session,
    *,
    older_than: dt.datetime,
    days: dict[dt.date, str] | None = None,
) -> int:
    """Job records still waiting (queued, retrying) that were sent before `older_than`.

    Counted up to STUCK_CAP, from the (status, created_at) index.  With `days`
    (`jobs`' daily partitions), only the partitions that can hold such a record
    are read: the default one and the days up to `older_than`'s.
    """
    if not days:
        waiting = (
            select(Job.message_id)
            .where(Job.status.in_(WAITING_STATES), Job.created_at < bindparam("cut"))
            .limit(STUCK_CAP)
            .subquery()
        )
        query = select(func.count()).select_from(waiting)
        return int(connection.execute(query, {"cut": older_than}).scalar_one())
    tables = [partitions.DEFAULT_PARTITION] + [
        days[day] for day in sorted(days) if day <= older_than.date()
    ]
    total = 0
    for table in tables:
        waiting = _waiting(table, older_than, STUCK_CAP - total)
        total += int(connection.execute(select(func.count()).select_from(waiting)).scalar_one())
        if total >= STUCK_CAP:
            break
    return total


def retention_of(table: str, retention_days: int) -> dt.timedelta | None:
    """How long `table`'s records are kept (None: until an operator removes them)."""
    if table in JOB_RETAINED:
        return dt.timedelta(days=retention_days)
    if table == "workers":
        return STALE_WORKER_AGE
    return None


def store_stats(
    connection: Connection, *, retention_days: int, now: dt.datetime | None = None
) -> StoreStats:
    """Read every table's size and age, and the stuck job records, in `connection`'s transaction."""
    now = now or dt.datetime.now(dt.UTC)
    names = table_names()
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        sizes = _sizes(connection, names)
    else:
        sizes = {}
    tables: list[TableStats] = []
    days = partitions.partitions(connection) if partitions.is_partitioned(connection) else {}
    for name in names:
        rows, unknown, heap, index = sizes.get(name, (0, [name], -1, -1))
        # Counted where neither estimated nor in the statistics, up to COUNT_CAP (a
        # partition: its own rows only).
        rows = max(rows, sum(_count(connection, part, COUNT_CAP) for part in unknown))
        oldest = _oldest(connection, name, days) if name in DATED else None
        # Never below 0: a record written as `now` was read can be dated a moment later by
        # PostgreSQL's clock.
        age = max(0.0, (now - oldest).total_seconds()) if oldest else None
        retention = retention_of(name, retention_days)
        lag = None
        if retention is not None:
            lag = max(0.0, (age or 0.0) - retention.total_seconds())
        tables.append(
            {
                "table": name,
                "rows": rows,
                "heap_bytes": heap if heap >= 0 else None,
                "index_bytes": index if index >= 0 else None,
                "oldest_at": oldest.isoformat() if oldest is not None else None,
                "oldest_age_seconds": age,
                "retention_seconds": retention.total_seconds() if retention else None,
                "retention_lag_seconds": lag,
            }
        )
    stuck = stuck_jobs(connection, older_than=now - dt.timedelta(days=retention_days), days=days)
    return {
        "tables": tables,
        "stuck_jobs": stuck,
        "stuck_capped": stuck >= STUCK_CAP,
        "retention_days": retention_days,
    }


def per_job_bytes(stats: StoreStats) -> float | None:
    """Bytes per job record (its heap and its indexes), from the `jobs` table's figures."""
    for table in stats["tables"]:
        if table["table"] == "jobs" and table["rows"] and table["heap_bytes"] is not None:
            return (table["heap_bytes"] + (table["index_bytes"] or 0)) / table["rows"]
    return None
