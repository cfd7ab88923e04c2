"""The `jobs` table in daily partitions: created ahead, dropped whole once expired.

`jobs` is partitioned by range of `message_id` (PostgreSQL's declarative
partitioning).  Taskyard mints its ids as UUIDv7 (`services.message_ids`),
whose text sorts by the time it was minted, so the partition `jobs_pYYYYMMDD`
holds the records of the jobs sent that UTC day.  A record's id is its key
and its partition key at once: every statement that reads or writes a record
by its id touches one partition, and the engine's statements are unchanged.

- **Ahead**: `ensure_partitions` creates the partitions of the next
  `AHEAD_DAYS` days (the daily maintenance job and `taskyard migrate` call
  it). A partition is attached (`ATTACH PARTITION`, which does not block
  reads or writes of `jobs`), after moving into it any row of its range that
  the default partition took meanwhile.
- **Expired**: `drop_expired` drops a day's partition whole once every record
  in it is older than the retention: no DELETE, no vacuum, no bloat.  It is
  detached first, which needs a moment's exclusive lock on `jobs`: it waits at
  most `LOCK_TIMEOUT_MS` for it (so running jobs wait at most that long), and
  tries again, then on the next run; then dropped, which frees its files
  without holding `jobs`.
- **Default**: ids not minted by Taskyard (a plain Dramatiq producer's uuid4,
  a crafted message's) and ids of days with no partition go to
  `jobs_default`, which retention empties with batched DELETEs as before.

Records are kept by the day they were sent: a record is dropped with its
day, whatever its state, once the day is older than the retention.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import Any

from sqlalchemy import Connection, text

from services.message_ids import id_floor

logger = logging.getLogger(__name__)

TABLE = "jobs"
DEFAULT_PARTITION = "jobs_default"
PARTITION_PREFIX = "jobs_p"
_NAME = re.compile(r"^jobs_p(\d{8})$")
# Days of partitions kept ready ahead of today.
AHEAD_DAYS = 7
# How long a DROP waits for its lock before giving way to the jobs (and trying again).
LOCK_TIMEOUT_MS = 200
DROP_TRIES = 5


# Autovacuum per partition (PostgreSQL keeps no such setting on a partitioned parent).
# Every job leaves one dead row version in its day's partition (its queued insert,
# replaced by its final update: `status` is indexed, so the update is never heap-only),
# and that partition grows from empty to a day of traffic.  With PostgreSQL's defaults
# (20 % of the rows) the hot day would be vacuumed ever more rarely as it grows, each
# pass then cleaning millions of rows and every index at once; at 2 % it is vacuumed and
# analyzed in small steps (the row estimates `taskyard health` and the planner read stay
# within a few %).  Rows are frozen by those passes once about a million transactions
# old (minutes of traffic): a finished day is then all-frozen, and the anti-wraparound
# vacuum PostgreSQL forces on every table every 200 million transactions skips it,
# instead of rewriting a month of days at once.
AUTOVACUUM: dict[str, float | int] = {
    "autovacuum_vacuum_scale_factor": 0.02,
    "autovacuum_vacuum_insert_scale_factor": 0.02,
    "autovacuum_analyze_scale_factor": 0.02,
    "autovacuum_freeze_min_age": 1_000_000,
}


def autovacuum_clause() -> str:
    """The storage parameters every partition of `jobs` carries, as `k = v, ...`."""
    return ", ".join(f"{key} = {value}" for key, value in AUTOVACUUM.items())


def partition_name(day: dt.date) -> str:
    """The partition of the records sent on `day` (UTC)."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def day_bounds(day: dt.date) -> tuple[str, str]:
    """The id range of `day`'s partition: [first id of the day, first id of the next)."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return id_floor(start), id_floor(start + dt.timedelta(days=1))


def is_partitioned(connection: Connection) -> bool:
    """Whether `jobs` is a partitioned table here (PostgreSQL after migration 0010)."""
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.scalar(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:table)"), {"table": TABLE}
    )
    return bool(kind == "p")


def partitions(connection: Connection) -> dict[dt.date, str]:
    """The daily partitions that exist, by day."""
    rows = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": TABLE},
    )
    found: dict[dt.date, str] = {}
    for (name,) in rows:
        match = _NAME.match(name)
        if match:
            found[dt.datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return found


def create_partition(connection: Connection, day: dt.date) -> None:
    """Create and attach `day`'s partition (with the AUTOVACUUM settings), moving its rows out
    of the default partition.

    Runs in the connection's transaction (the caller commits).
    """
    low, high = day_bounds(day)
    attach_range(connection, partition_name(day), low, high)


def attach_range(connection: Connection, name: str, low: str, high: str) -> None:
    """Create the partition `name` of the ids in [low, high) and attach it, moving its rows
    out of the default partition (`create_partition` for a day; the bench's soak for
    shorter periods).  Runs in the connection's transaction (the caller commits)."""
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS * 10}ms'"))
    connection.execute(
        text(
            f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
            f"WITH ({autovacuum_clause()})"
        )
    )
    connection.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
            "WHERE message_id >= :low AND message_id < :high RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        ),
        {"low": low, "high": high},
    )
    connection.execute(
        text(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM (:low) TO (:high)"),
        {"low": low, "high": high},
    )


def ensure_partitions(
    connection: Connection, *, today: dt.date, ahead_days: int = AHEAD_DAYS, commit: bool = True
) -> list[str]:
    """Create the partitions of today and the next `ahead_days` days that are missing.

    Each in a transaction of its own (`commit=False`: all in the caller's, as
    in a migration); returns the names created.
    """
    if not is_partitioned(connection):
        return []
    have = partitions(connection)
    if commit:
        connection.commit()
    created = []
    for offset in range(ahead_days + 1):
        day = today + dt.timedelta(days=offset)
        if day in have:
            continue
        create_partition(connection, day)
        if commit:
            connection.commit()
        created.append(partition_name(day))
    return created


def expired_days(
    have: dict[dt.date, str], *, now: dt.datetime, retention_days: int
) -> list[dt.date]:
    """The days whose every record was sent more than `retention_days` before `now`."""
    cutoff = now - dt.timedelta(days=retention_days)
    return sorted(
        day
        for day in have
        if dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=1) <= cutoff
    )


def detached(connection: Connection) -> dict[dt.date, str]:
    """Daily tables of `jobs` no longer attached: a drop stopped between its two steps."""
    rows = connection.execute(
        text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
            "AND relname LIKE :prefix AND pg_table_is_visible(oid)"
        ),
        {"prefix": PARTITION_PREFIX.replace("_", "\\_") + "%"},
    )
    found: dict[dt.date, str] = {}
    for (name,) in rows:
        match = _NAME.match(name)
        if match:
            found[dt.datetime.strptime(match.group(1), "%Y%m%d").date()] = name
    return found


def _give_way(
    connection: Connection, statement: str, sleep: Any, took: dict[str, float], key: str
) -> bool:
    """Run `statement` in a transaction of its own, waiting at most LOCK_TIMEOUT_MS for its
    locks, `DROP_TRIES` times; whether it ran (its last try's seconds in `took[key]`, the
    tries it took in `took[key + " tries"]`)."""
    for attempt in range(DROP_TRIES):
        started = time.monotonic()
        try:
            connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
            connection.execute(text(statement))
            connection.commit()
            took[key] = time.monotonic() - started
            took[f"{key} tries"] = attempt + 1
            return True
        except Exception as exc:
            connection.rollback()
            if "lock timeout" not in str(exc) and "lock_timeout" not in str(exc):
                raise
            sleep(0.5 * (attempt + 1))
    return False


def drop_partition(
    connection: Connection,
    name: str,
    *,
    attached: bool = True,
    sleep: Any = time.sleep,
    took: dict[str, float] | None = None,
) -> bool:
    """Detach the partition `name` (if `attached`), then drop it, each step giving way to
    the jobs (see `drop_expired`); whether it is gone."""
    took = {} if took is None else took
    detach = f"ALTER TABLE {TABLE} DETACH PARTITION {name}"
    return (
        not attached or _give_way(connection, detach, sleep, took, f"{name} detach")
    ) and _give_way(connection, f"DROP TABLE {name}", sleep, took, f"{name} drop")


def drop_expired(
    connection: Connection,
    *,
    now: dt.datetime,
    retention_days: int,
    sleep: Any = time.sleep,
    took: dict[str, float] | None = None,
) -> tuple[list[str], list[str]]:
    """Drop the partitions whose day is past the retention; (dropped, left for the next run).

    `took`, if given, gets each step's seconds: "<partition> detach", "<partition> drop"
    (and "... tries": how many tries each took).

    Each is detached first (`jobs` is locked for that catalogue change only), then
    dropped (which frees its files, a time that grows with its size, with no lock
    on `jobs`).  Each step waits at most `LOCK_TIMEOUT_MS` for its lock, so the
    jobs never wait longer; it is tried `DROP_TRIES` times, then left for the next
    run (a day detached but not dropped is dropped then).
    """
    if not is_partitioned(connection):
        return [], []
    have = partitions(connection)
    days = detached(connection) | have
    connection.commit()
    dropped: list[str] = []
    left: list[str] = []
    took = {} if took is None else took
    for day in expired_days(days, now=now, retention_days=retention_days):
        name = days[day]
        if drop_partition(connection, name, attached=day in have, sleep=sleep, took=took):
            dropped.append(name)
        else:
            logger.warning("Partition %s not dropped (its lock was busy); next run", name)
            left.append(name)
    return dropped, left


def purge_default(connection: Connection, *, older_than: dt.datetime, batch_size: int) -> int:
    """Delete up to `batch_size` old records of the default partition; how many.

    Final records finished before `older_than`, and records stuck in a
    non-final state (queued, retrying) not updated since: the same retention
    the daily partitions get by being dropped.
    """
    result = connection.execute(
        text(
            f"DELETE FROM {DEFAULT_PARTITION} WHERE message_id IN ("
            f"SELECT message_id FROM {DEFAULT_PARTITION} "
            "WHERE COALESCE(finished_at, updated_at) < :older_than LIMIT :batch)"
        ),
        {"older_than": older_than, "batch": batch_size},
    )
    return int(result.rowcount or 0)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter: the partitions (and their indexes) are made at run time, not by
    migrations; comparing the models with the database leaves them out."""
    if name is None:
        return True
    if type_ == "table":
        return not (name == DEFAULT_PARTITION or _NAME.match(name))
    if type_ == "index":
        table = (parent_names or {}).get("table_name") or ""
        return not (table == DEFAULT_PARTITION or _NAME.match(table))
    return True
