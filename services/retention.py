"""Retention for every table that grows with traffic: expired rows deleted in short batches.

`jobs` keeps its records by daily partitions, dropped whole (services/partitions.py);
what such a drop cannot reach (the default partition, an unpartitioned `jobs`) and
every other table that grows with traffic is pruned here, by the daily retention job:

- `jobs`: the default partition's records past the retention (final or stuck), or,
  where `jobs` is one table (SQLite), its final records past the retention;
- `schedule_runs`: claimed slots made before the retention (a tick never needs an old
  claim: it only claims slots at or after its schedule's `next_slot_at`);
- groups (`job_groups`, their members and completions), with their jobs' records;
- `ingest_items`, then `ingests`: an ingest and its items are kept for the retention
  from the ingest's start; its items go first, a batch at a time, and the ingest once
  it has none left (so no delete cascades through a whole feed at once);
- `cancel_requests` made before the retention;
- `dead_letters` requeued before the retention (the requeued job has its own record);
  a dead letter nobody requeued is kept until an operator purges it;
- `workers` rows silent for `STALE_WORKER_AGE`.

Each batch is its own short transaction (on PostgreSQL), so no lock is held for long
and autovacuum can follow; the tables take turns, a batch each, until every one is
done or the run's time budget is spent. What a run leaves shows as retention lag
(services/store.py) and goes in the next run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from services import jobs, partitions
from services.groups import purge_groups
from services.schedule_slots import purge_schedule_runs
from services.workers import STALE_WORKER_AGE, purge_stale_workers

# Rows one transaction deletes at most: its locks are held for one short statement.
BATCH_SIZE = 5_000
# How long one run prunes at most; the rest waits for the next run (and shows as lag).
BUDGET_SECONDS = 300.0


@dataclass(frozen=True)
class Pruning:
    """One table's retention: `batch(connection, older_than, now, size)` deletes up to
    `size` expired rows and says how many."""

    table: str
    batch: Callable[[Connection, dt.datetime, dt.datetime, int], int]
    # A table whose pruning must be finished first (an ingest goes after its items).
    after: str | None = None


def _deleted(connection: Connection, sql: str, older_than: dt.datetime, size: int) -> int:
    result = connection.execute(text(sql), {"older_than": older_than, "size": size})
    return int(result.rowcount or 0)


def _jobs(connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int) -> int:
    if partitions.is_partitioned(connection):
        return partitions.purge_default(connection, older_than=older_than, batch_size=size)
    with Session(bind=connection) as session:
        return jobs.purge_finished_jobs(session, older_than=older_than, batch_size=size)


def _schedule_runs(
    connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int
) -> int:
    with Session(bind=connection) as session:
        return purge_schedule_runs(session, older_than=older_than, batch_size=size)


def _groups(connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int) -> int:
    with Session(bind=connection) as session:
        return purge_groups(session, older_than=older_than, batch_size=size)


def _ingest_items(
    connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int
) -> int:
    return _deleted(
        connection,
        "DELETE FROM ingest_items WHERE id IN ("
        "SELECT i.id FROM ingest_items AS i JOIN ingests AS g ON g.id = i.ingest_id "
        "WHERE g.created_at < :older_than LIMIT :size)",
        older_than,
        size,
    )


def _ingests(connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int) -> int:
    # Only an ingest whose items are gone: deleting one with items would cascade to all of
    # them in this transaction.
    return _deleted(
        connection,
        "DELETE FROM ingests WHERE id IN ("
        "SELECT g.id FROM ingests AS g WHERE g.created_at < :older_than AND NOT EXISTS ("
        "SELECT 1 FROM ingest_items AS i WHERE i.ingest_id = g.id) LIMIT :size)",
        older_than,
        size,
    )


def _cancel_requests(
    connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int
) -> int:
    return _deleted(
        connection,
        "DELETE FROM cancel_requests WHERE message_id IN ("
        "SELECT message_id FROM cancel_requests WHERE requested_at < :older_than LIMIT :size)",
        older_than,
        size,
    )


def _requeued_dead_letters(
    connection: Connection, older_than: dt.datetime, _now: dt.datetime, size: int
) -> int:
    return _deleted(
        connection,
        "DELETE FROM dead_letters WHERE message_id IN ("
        "SELECT message_id FROM dead_letters WHERE requeued_at IS NOT NULL "
        "AND requeued_at < :older_than LIMIT :size)",
        older_than,
        size,
    )


def _workers(connection: Connection, _older_than: dt.datetime, now: dt.datetime, size: int) -> int:
    # A worker that vanished without a clean shutdown (SIGKILL, a lost host) leaves its
    # heartbeat row; a day of silence is proof enough that it is gone.  Few rows: one go.
    with Session(bind=connection) as session:
        return purge_stale_workers(session, older_than=now - STALE_WORKER_AGE)


PRUNINGS: tuple[Pruning, ...] = (
    Pruning("jobs", _jobs),
    Pruning("schedule_runs", _schedule_runs),
    Pruning("job_groups", _groups),
    Pruning("ingest_items", _ingest_items),
    Pruning("ingests", _ingests, after="ingest_items"),
    Pruning("cancel_requests", _cancel_requests),
    Pruning("dead_letters", _requeued_dead_letters),
    Pruning("workers", _workers),
)


def batches_for(session: Session) -> Callable[[], AbstractContextManager[Connection]]:
    """Where each batch runs, given the retention job's session.

    On PostgreSQL, a transaction of its own on the session's engine, committed at
    once.  SQLite (the demo, the unit tests) allows one writer at a time and the
    job's transaction already writes: there every batch goes in the job's own
    transaction.
    """
    bind = session.get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql":
        return bind.begin
    return lambda: contextlib.nullcontext(session.connection())


def prune_expired(
    begin: Callable[[], AbstractContextManager[Connection]],
    *,
    older_than: dt.datetime,
    now: dt.datetime,
    batch_size: int = BATCH_SIZE,
    budget_seconds: float = BUDGET_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    prunings: tuple[Pruning, ...] = PRUNINGS,
) -> tuple[dict[str, int], list[str]]:
    """Delete every expired row, a batch per transaction (`begin()` opens one), the
    tables taking turns; (rows deleted per table, tables left unfinished by the budget)."""
    deadline = clock() + budget_seconds
    deleted = {pruning.table: 0 for pruning in prunings}
    pending = list(prunings)
    while pending and clock() < deadline:
        waiting = {pruning.table for pruning in pending}
        for pruning in list(pending):
            if pruning.after in waiting:
                continue
            with begin() as connection:
                count = pruning.batch(connection, older_than, now, batch_size)
            deleted[pruning.table] += count
            if count < batch_size:
                pending.remove(pruning)
            if clock() >= deadline:
                break
    return deleted, [pruning.table for pruning in pending]
