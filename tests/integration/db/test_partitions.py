"""The jobs table's daily partitions on PostgreSQL: a record goes to its send day's
partition, partitions are made ahead, expired days are dropped whole without
waiting on a busy table, and the default partition's old records are deleted."""

from __future__ import annotations

import datetime as dt
import importlib
import threading
import uuid

import pytest
from sqlalchemy import Engine, text

from services.message_ids import minted_at, new_message_id
from services.partitions import (
    AUTOVACUUM,
    DEFAULT_PARTITION,
    create_partition,
    drop_expired,
    ensure_partitions,
    partition_name,
    partitions,
    purge_default,
)
from services.store import store_stats, stuck_jobs

pytestmark = pytest.mark.integration

# Days far in the past, which no other test's records use.
BASE = dt.date(2001, 3, 1)


def ms_of(day: dt.date, hour: int = 12) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC).timestamp() * 1000)


def insert(engine: Engine, message_id: str, *, finished: dt.datetime | None = None) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (message_id, actor, queue, args, status, attempts, "
                "deliveries, finished_at, updated_at) VALUES (:m, 'a', 'q', '{}', :s, 1, 0, "
                ":f, COALESCE(:f, now()))"
            ),
            {"m": message_id, "s": "succeeded" if finished else "queued", "f": finished},
        )


def home(engine: Engine, message_id: str) -> str | None:
    with engine.connect() as connection:
        return connection.scalar(
            text("SELECT tableoid::regclass::text FROM jobs WHERE message_id = :m"),
            {"m": message_id},
        )


def test_a_sent_job_is_in_its_days_partition_and_others_in_the_default(engine: Engine) -> None:
    today = dt.datetime.now(dt.UTC).date()
    with engine.connect() as connection:
        ensure_partitions(connection, today=today)
        days = partitions(connection)
    assert all(today + dt.timedelta(days=n) in days for n in range(8))

    minted, foreign = new_message_id(), str(uuid.uuid4())
    insert(engine, minted)
    insert(engine, foreign)
    day = minted_at(minted)  # today, or tomorrow if midnight passed meanwhile
    assert day is not None and home(engine, minted) == partition_name(day.date())
    assert home(engine, foreign) == DEFAULT_PARTITION


def test_a_new_partition_takes_its_rows_from_the_default(engine: Engine) -> None:
    day = BASE
    early = new_message_id(ms_of(day))
    insert(engine, early)
    assert home(engine, early) == DEFAULT_PARTITION

    with engine.begin() as connection:
        create_partition(connection, day)

    assert home(engine, early) == partition_name(day)


def test_a_new_partition_carries_the_autovacuum_settings(engine: Engine) -> None:
    day = BASE + dt.timedelta(days=5)
    with engine.connect() as connection:
        # Made the way the daily job makes them
        ensure_partitions(connection, today=day, ahead_days=0)
        options = connection.scalar(
            text("SELECT reloptions FROM pg_class WHERE relname = :n"), {"n": partition_name(day)}
        )
    assert set(options) == {f"{key}={value}" for key, value in AUTOVACUUM.items()}


def test_expired_days_are_dropped_whole_and_the_rest_kept(engine: Engine) -> None:
    days = [BASE + dt.timedelta(days=10 + n) for n in range(3)]
    ids = {}
    for day in days:
        with engine.begin() as connection:
            create_partition(connection, day)
        ids[day] = new_message_id(ms_of(day))
        insert(engine, ids[day])
    # "Now" is 30 days and 1 hour after the end of the second day: the first two expired.
    now = dt.datetime(days[1].year, days[1].month, days[1].day, tzinfo=dt.UTC) + dt.timedelta(
        days=31, hours=1
    )

    with engine.connect() as connection:
        dropped, left = drop_expired(connection, now=now, retention_days=30)

    assert {partition_name(days[0]), partition_name(days[1])} <= set(dropped) and left == []
    assert home(engine, ids[days[0]]) is None and home(engine, ids[days[1]]) is None
    assert home(engine, ids[days[2]]) == partition_name(days[2])
    with engine.connect() as connection:
        drop_expired(connection, now=now + dt.timedelta(days=2), retention_days=30)


def test_a_drop_gives_way_to_a_busy_table_and_never_makes_it_wait(engine: Engine) -> None:
    day = BASE + dt.timedelta(days=20)
    with engine.begin() as connection:
        create_partition(connection, day)
    now = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=32)

    # Given a transaction that holds a lock on jobs (a job about to commit its record)
    holder = engine.connect()
    holder.begin()
    holder.execute(text("SELECT count(*) FROM jobs WHERE message_id = 'x'"))
    waited: list[float] = []

    def writer() -> None:
        # Another job's record, written while the drop is tried
        started = dt.datetime.now(dt.UTC)
        insert(engine, new_message_id())
        waited.append((dt.datetime.now(dt.UTC) - started).total_seconds())

    try:
        with engine.connect() as connection:
            thread = threading.Thread(target=writer)
            sleeps: list[float] = []

            def sleep(seconds: float) -> None:
                if not thread.is_alive() and not waited:
                    thread.start()
                sleeps.append(seconds)

            dropped, left = drop_expired(connection, now=now, retention_days=30, sleep=sleep)
            thread.join(10)
    finally:
        holder.rollback()
        holder.close()

    # Then the drop was left for the next run, and the other job's write was not held up
    assert dropped == [] and left == [partition_name(day)] and len(sleeps) >= 1
    assert waited and waited[0] < 1.0
    with engine.connect() as connection:
        dropped, left = drop_expired(connection, now=now, retention_days=30)
    assert partition_name(day) in dropped


def test_the_default_partitions_old_and_stuck_records_are_deleted(engine: Engine) -> None:
    now = dt.datetime.now(dt.UTC)
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    insert(engine, old, finished=now - dt.timedelta(days=40))
    insert(engine, new, finished=now - dt.timedelta(days=1))
    stuck = str(uuid.uuid4())
    insert(engine, stuck)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET updated_at = :t WHERE message_id = :m"),
            {"t": now - dt.timedelta(days=40), "m": stuck},
        )

    with engine.begin() as connection:
        deleted = purge_default(connection, older_than=now - dt.timedelta(days=30), batch_size=100)

    assert deleted >= 2
    assert home(engine, old) is None and home(engine, stuck) is None
    assert home(engine, new) == DEFAULT_PARTITION


def test_the_store_reads_the_oldest_record_and_the_stuck_ones_from_the_oldest_days(
    engine: Engine,
) -> None:
    # Given the oldest day of all (before every other test's days), with one record stuck
    # queued since then, and a newer day with a record as old as the retention allows
    day, newer = dt.date(2000, 6, 1), dt.date(2000, 6, 20)
    sent = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    stuck = new_message_id(ms_of(day))
    with engine.begin() as connection:
        create_partition(connection, day)
        create_partition(connection, newer)
        for message_id, at in ((stuck, sent), (new_message_id(ms_of(newer)), None)):
            connection.execute(
                text(
                    "INSERT INTO jobs (message_id, actor, queue, args, status, attempts, "
                    "deliveries, created_at) VALUES (:m, 'a', 'q', '{}', 'queued', 0, 0, "
                    "COALESCE(:t, now()))"
                ),
                {"m": message_id, "t": at},
            )
    now = sent + dt.timedelta(days=40)
    try:
        # When the store is read 40 days after the first, with 30 days of retention
        with engine.begin() as connection:
            stats = store_stats(connection, retention_days=30, now=now)
            days = partitions(connection)
            # (from the partitions up to the cut-off only: the newer day is past it)
            in_old_days = stuck_jobs(
                connection,
                older_than=now - dt.timedelta(days=30),
                days={d: n for d, n in days.items() if d <= newer},
            )

        # Then the oldest record is the first day's, 10 days past the retention
        jobs = next(t for t in stats["tables"] if t["table"] == "jobs")
        assert jobs["oldest_at"] == sent.isoformat()
        assert jobs["retention_lag_seconds"] == 10 * 86400
        # And the stuck record is counted
        assert stats["stuck_jobs"] >= 1 and in_old_days >= 1
    finally:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {partition_name(day)}"))
            connection.execute(text(f"DROP TABLE {partition_name(newer)}"))


def test_a_day_detached_but_not_dropped_is_dropped_on_the_next_run(engine: Engine) -> None:
    # Given an expired day whose drop stopped after its detach (a crash between the two)
    day = BASE + dt.timedelta(days=25)
    with engine.begin() as connection:
        create_partition(connection, day)
        connection.execute(text(f"ALTER TABLE jobs DETACH PARTITION {partition_name(day)}"))
    now = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=32)

    with engine.connect() as connection:
        dropped, left = drop_expired(connection, now=now, retention_days=30)
        exists = connection.scalar(text("SELECT to_regclass(:n)"), {"n": partition_name(day)})

    assert partition_name(day) in dropped and left == [] and exists is None


def test_the_pruned_tables_carry_their_autovacuum_settings(engine: Engine) -> None:
    # Given a database at the newest revision (migration 0014 sets them)
    retention = importlib.import_module("db.migrations.versions.0014_retention")
    with engine.connect() as connection:
        found = {
            name: set(options or [])
            for name, options in connection.execute(
                text("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:n)"),
                {"n": list(retention.PRUNED)},
            )
        }
    # Then every pruned table has them
    expected = {f"{key}={value}" for key, value in retention.PRUNED_AUTOVACUUM.items()}
    assert found == {name: expected for name in retention.PRUNED}
