"""The job store at volume: a `jobs` table of N records, its listings, its storage, row versions.

The table is filled once per run with set-based SQL (`INSERT ... SELECT
generate_series`), with a spread of tenants, actors, statuses and times like
a month of traffic, then reused while it has the size asked for.  Measured on
it: the first page of every listing filter `taskyard jobs list`, `dead-letters
list`, `health` and the metrics use (the services the commands call, so the
command's start-up is not counted); storage per million records (heap with
TOAST, and indexes); the row versions a job leaves (pg_stat_user_tables
around a run of real jobs through a worker); and the retention: the filled
day past the retention dropped by `services.partitions.drop_expired` while a
worker runs DB-writing jobs, their rate compared before and during the drop.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench.bodies import RECORD_BYTES
from bench.env import BenchError
from bench.mounts import describe_mount
from bench.report import Figure
from bench.systems import Taskyard, engine_of
from db.models import JOB_DEAD, JOB_QUEUED, JOB_RETRYING, JOB_SUCCEEDED
from services import partitions
from services.dead_letters import DeadLetterFilter, list_dead_letters
from services.job_views import job_cursor
from services.jobs import list_jobs
from services.pagination import decode_cursor
from services.store import store_stats
from services.workers import SCHEDULER_TICK_ACTOR, last_scheduler_tick

SCENARIO = "10. Job store"
LISTING_SCENARIO = "10. Job store: first page of each listing"
# Rows inserted per statement while filling (each its own transaction).
FILL_CHUNK = 1_000_000
TENANTS = 1_000
ACTORS = 20
# Days of traffic the filled records span, the newest now.
SPAN_DAYS = 30
# First-page timings per listing; the median is reported.
TIMED_RUNS = 7
# Seconds for every idle connection's table counters to reach pg_stat_user_tables.
STATS_SETTLE_SECONDS = 11.0
# The share of the records sent on one day already past the retention (its partition is
# the one the retention figure drops); the rest spread over the last SPAN_DAYS.
EXPIRED_SHARE = 0.5
# The bench's retention (TASKYARD_JOB_RETENTION_DAYS's default).
RETENTION_DAYS = 30
# Seconds of work compared before and from the start of the expired day's drop.
DROP_WINDOW = 5.0
# The bound on removing an expired period.
DROP_MS = 1_000.0
# The bound on each first page.
PAGE_MS = 50.0
PAGE = 50

# One record per generated number i (1..N): tenants skewed (a few large, many small),
# actors skewed, one scheduler tick a minute, statuses as a busy system leaves them, and
# creation times rising with i over the last SPAN_DAYS (as records are written).
_FILL = f"""
INSERT INTO jobs (message_id, tenant_id, actor, queue, args, status, attempts, deliveries,
                  enqueued_at, started_at, finished_at, error, result, created_at, updated_at)
SELECT v.id,
       v.tenant,
       v.actor,
       CASE WHEN v.actor = '{SCHEDULER_TICK_ACTOR}' THEN 'taskyard.system'
            ELSE 'tenant.' || v.tenant END,
       jsonb_build_object('tenant_id', v.tenant, 'n', g.i),
       v.status,
       CASE WHEN v.status IN ('{JOB_QUEUED}') THEN 0 WHEN v.status = '{JOB_DEAD}' THEN 3 ELSE 1 END,
       0,
       v.at,
       CASE WHEN v.status = '{JOB_QUEUED}' THEN NULL ELSE v.at + interval '20 ms' END,
       CASE WHEN v.status IN ('{JOB_QUEUED}', '{JOB_RETRYING}') THEN NULL
            ELSE v.at + interval '70 ms' END,
       CASE WHEN v.status IN ('{JOB_DEAD}', '{JOB_RETRYING}') THEN 'RuntimeError: upstream said no'
            END,
       CASE WHEN v.status = '{JOB_SUCCEEDED}' THEN '{{"ok": true}}'::jsonb END,
       v.at,
       v.at + interval '70 ms'
FROM generate_series(:first, :last) AS g(i)
CROSS JOIN LATERAL (
    SELECT 1 + floor({TENANTS} * power(random(), 3))::bigint AS tenant,
           CASE WHEN g.i % :tick_every = 0 THEN '{SCHEDULER_TICK_ACTOR}'
                ELSE 'actor_' || lpad(floor({ACTORS} * power(random(), 2))::int::text, 2, '0')
           END AS actor,
           CASE WHEN r < 0.93 THEN '{JOB_SUCCEEDED}' WHEN r < 0.95 THEN '{JOB_DEAD}'
                WHEN r < 0.96 THEN '{JOB_RETRYING}' WHEN r < 0.98 THEN '{JOB_QUEUED}'
                WHEN r < 0.99 THEN 'cancelled' WHEN r < 0.995 THEN 'skipped'
                ELSE 'expired' END AS status,
           x.at,
           -- A UUIDv7 minted at `at` (services/message_ids.py): the record goes to its day's
           -- partition, as a record Taskyard writes does.
           substr(x.ms, 1, 8) || '-' || substr(x.ms, 9, 4) || '-7' || substr(x.h, 1, 3) || '-8'
               || substr(x.h, 4, 3) || '-' || substr(x.h, 7, 12) AS id
    FROM (SELECT r, at, md5(:seed || g.i::text) AS h,
                 lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0') AS ms
          FROM (SELECT random() AS r,
                       CASE WHEN g.i <= :expired
                            -- The expired day's records, spread over that UTC day.
                            THEN CAST(:expired_day AS timestamptz)
                                 + interval '1 day' * (g.i::float8 / (:expired + 1))
                            ELSE now() - interval '{SPAN_DAYS} days'
                                 * (1 - (g.i - :expired)::float8 / (:total - :expired))
                       END AS at) AS y) AS x
) AS v
"""

# The dead letters of the dead records, as the worker keeps them.
_DEAD_LETTERS = f"""
INSERT INTO dead_letters (message_id, tenant_id, actor, queue, reason, error, attempts,
                          message, created_at)
SELECT message_id, tenant_id, actor, queue,
       CASE WHEN tenant_id % 7 = 0 THEN 'fetch_refused' ELSE 'failed' END,
       error, attempts,
       jsonb_build_object('message_id', message_id, 'actor_name', actor, 'queue_name', queue,
                          'args', '[]'::jsonb, 'kwargs', args, 'options', '{{}}'::jsonb,
                          'message_timestamp', 0),
       finished_at
FROM jobs WHERE status = '{JOB_DEAD}'
ON CONFLICT DO NOTHING
"""


def _say(line: str) -> None:
    print(f"    store: {line}", file=sys.stderr, flush=True)


def expired_day(today: dt.date) -> dt.date:
    """The day of the filled records already past RETENTION_DAYS (its partition expired)."""
    return today - dt.timedelta(days=RETENTION_DAYS + 2)


def fill(engine: Engine, rows: int, *, seed: str = "taskyard-bench") -> float:
    """Make `jobs` hold `rows` generated records (kept if it has them already); seconds taken.

    The table's secondary indexes are dropped for the fill and made again after
    (faster than maintaining them row by row); then it is vacuumed and analyzed.
    """
    with engine.connect() as conn:
        have = int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())
    if have == rows:
        _say(f"jobs already holds {rows:,} records: reused")
        return 0.0
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs, dead_letters"))
        indexes = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        ).all()
        for name, _definition in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
    tick_every = max(2, rows // (SPAN_DAYS * 24 * 60))
    today = dt.datetime.now(dt.UTC).date()
    day = expired_day(today)
    expired = int(rows * EXPIRED_SHARE)
    # Every day's partition from the expired day's on, as the daily job leaves them.
    with engine.connect() as conn:
        made = partitions.partitions(conn)
        conn.commit()
        for offset in range((today - day).days + 1):
            if day + dt.timedelta(days=offset) not in made:
                partitions.create_partition(conn, day + dt.timedelta(days=offset))
                conn.commit()
    for first in range(1, rows + 1, FILL_CHUNK):
        last = min(rows, first + FILL_CHUNK - 1)
        with engine.begin() as conn:
            conn.execute(
                text(_FILL),
                {
                    "seed": seed,
                    "first": first,
                    "last": last,
                    "total": rows,
                    "tick_every": tick_every,
                    "expired": expired,
                    "expired_day": day.isoformat() + "T00:00:00+00:00",
                },
            )
        _say(f"{last:,} of {rows:,} records ({time.monotonic() - started:.0f} s)")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        for name, definition in indexes:
            # A partitioned table's index is defined `ON ONLY` the parent: made that way it
            # would cover no partition.
            conn.execute(text(definition.replace(" ON ONLY ", " ON ")))
            _say(f"index {name} made ({time.monotonic() - started:.0f} s)")
        conn.execute(text(_DEAD_LETTERS))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) jobs"))
        conn.execute(text("VACUUM (ANALYZE) dead_letters"))
        # The fill's gigabytes are still being written out; the scenarios after it would
        # time their commits beside that (stalls of tenths of a second for half a minute).
        checkpoint = time.monotonic()
        conn.execute(text("CHECKPOINT"))
        _say(f"checkpoint after the fill: {time.monotonic() - checkpoint:.1f} s")
    _say(f"filled in {time.monotonic() - started:.0f} s")
    return time.monotonic() - started


@dataclass(frozen=True)
class Picks:
    """Filter values taken from the filled table: a large and a small tenant, actors."""

    big_tenant: int
    small_tenant: int
    common_actor: str
    rare_actor: str
    deep_cursor: str


def _picks(session: Session) -> Picks:
    def one(sql: str) -> Any:
        return session.execute(text(sql)).scalar_one()

    # Most common values as the planner sees them; the least common from the tail.
    big = one("SELECT tenant_id FROM jobs WHERE tenant_id = 1 LIMIT 1")
    small = one(f"SELECT tenant_id FROM jobs WHERE tenant_id > {TENANTS * 9 // 10} LIMIT 1")
    common = one("SELECT actor FROM jobs WHERE actor = 'actor_00' LIMIT 1")
    rare = one(f"SELECT actor FROM jobs WHERE actor = 'actor_{ACTORS - 1:02d}' LIMIT 1")
    # A cursor 10,000 records deep: a page far from the first costs what the first does.
    deep = list_jobs(session, limit=10_000)[-1]
    return Picks(int(big), int(small), str(common), str(rare), job_cursor(deep))


def listings(p: Picks, retention_days: int) -> list[tuple[str, Callable[[Session], object]]]:
    """(what, read) of every listing filter the commands and the metrics use."""
    deep = decode_cursor("jobs", p.deep_cursor)
    hour = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    big, small = p.big_tenant, p.small_tenant

    def jobs(**kw: Any) -> Callable[[Session], object]:
        return lambda s: list_jobs(s, limit=PAGE, **kw)

    def dead(**kw: Any) -> Callable[[Session], object]:
        after = kw.pop("after", None)
        return lambda s: list_dead_letters(s, DeadLetterFilter(**kw), after=after, limit=100)

    return [
        ("jobs list", jobs()),
        ("jobs list --tenant (largest tenant)", jobs(tenant_id=big)),
        ("jobs list --tenant (a small tenant)", jobs(tenant_id=small)),
        ("jobs list --status succeeded", jobs(status=JOB_SUCCEEDED)),
        ("jobs list --status dead", jobs(status=JOB_DEAD)),
        ("jobs list --status queued", jobs(status=JOB_QUEUED)),
        ("jobs list --status retrying", jobs(status=JOB_RETRYING)),
        ("jobs list --actor (most common)", jobs(actor=p.common_actor)),
        ("jobs list --actor (least common)", jobs(actor=p.rare_actor)),
        ("jobs list --actor (no such actor)", jobs(actor="nope")),
        ("jobs list --since 1h", jobs(since=hour)),
        ("jobs list --tenant --status dead (small)", jobs(tenant_id=small, status=JOB_DEAD)),
        ("jobs list --tenant --status dead (largest)", jobs(tenant_id=big, status=JOB_DEAD)),
        (
            "jobs list --tenant --actor (small, least common)",
            jobs(tenant_id=small, actor=p.rare_actor),
        ),
        (
            "jobs list --status dead --actor (least common)",
            jobs(status=JOB_DEAD, actor=p.rare_actor),
        ),
        (
            "jobs list --tenant --status --actor (small, dead, least common)",
            jobs(tenant_id=small, status=JOB_DEAD, actor=p.rare_actor),
        ),
        ("jobs list --tenant --since 1h (small)", jobs(tenant_id=small, since=hour)),
        ("jobs list --status dead --since 1h", jobs(status=JOB_DEAD, since=hour)),
        ("jobs list --after (10,000 records deep)", jobs(after=deep)),
        ("dead-letters list", dead()),
        ("dead-letters list --tenant (small)", dead(tenant_id=small)),
        ("dead-letters list --actor (least common)", dead(actor=p.rare_actor)),
        ("dead-letters list --reason fetch_refused", dead(reason="fetch_refused")),
        ("dead-letters list --since 1h", dead(since=hour)),
        ("health: last scheduler tick", last_scheduler_tick),
        (
            "health and metrics: table sizes, oldest, stuck",
            lambda s: store_stats(s.connection(), retention_days=retention_days),
        ),
    ]


def _time_ms(engine: Engine, read: Callable[[Session], object]) -> list[float]:
    values = []
    for _ in range(TIMED_RUNS):
        with Session(engine) as session:
            session.connection()  # connected before the clock starts
            started = time.perf_counter()
            read(session)
            values.append((time.perf_counter() - started) * 1000)
            session.rollback()
    return values


def row_versions(taskyard: Taskyard, count: int) -> tuple[float, float]:
    """Row versions per job and the share of updates that were heap-only, over `count` jobs.

    Read from pg_stat_user_tables once the worker is up and before the jobs are
    sent, and after it has recorded them all and stopped.
    """
    engine = engine_of(taskyard.env)
    # Summed over the table and its partitions (a partitioned table keeps no counters).
    query = text(
        "SELECT COALESCE(sum(n_tup_ins), 0), COALESCE(sum(n_tup_upd), 0), "
        "COALESCE(sum(n_tup_hot_upd), 0) FROM pg_stat_user_tables "
        "WHERE relid IN (SELECT relid FROM pg_partition_tree('jobs'))"
    )

    def read() -> tuple[int, int, int]:
        # An idle backend publishes its counters within PostgreSQL's idle interval (10 s);
        # the harness's and the worker's own connections are idle by now.
        time.sleep(STATS_SETTLE_SECONDS)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            ins, upd, hot = conn.execute(query).one()
        return int(ins), int(upd), int(hot)

    def recorded() -> int:
        with engine.connect() as conn:
            return int(conn.execute(recorded_query, {"actor": "bench_noop"}).scalar_one())

    recorded_query = text(
        f"SELECT count(*) FROM jobs WHERE actor = :actor AND status = '{JOB_SUCCEEDED}'"
    )
    # Started and settled first: what a worker writes once at boot (each thread rehearses
    # the record's statement, rolled back) is not a job's.
    worker = taskyard.start("store", settle=True)
    try:
        before = read()
        taskyard.send("noop", count)
        worker.wait_done("noop", count, timeout=60 + count / 20)
        deadline = time.monotonic() + 30
        while recorded() < count and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
    after = read()
    inserted, updated, hot = (a - b for a, b in zip(after, before, strict=True))
    _say(f"{count:,} jobs: {inserted:,} rows inserted, {updated:,} updated ({hot:,} heap-only)")
    return (inserted + updated) / count, (hot / updated * 100 if updated else 0.0)


def measure_store(engine: Engine, rows: int, retention_days: int) -> list[Figure]:
    """Fill `jobs` to `rows` records, then time every listing and size the store."""
    fill(engine, rows)
    figures: list[Figure] = []
    with Session(engine) as session:
        picks = _picks(session)
    label = f"{rows:,} records"
    for what, read in listings(picks, retention_days):
        figures.append(
            Figure(
                LISTING_SCENARIO,
                f"{what} ({label})",
                "taskyard",
                "ms",
                [statistics.median(_time_ms(engine, read))],
                at_most=PAGE_MS,
                higher_is_better=False,
            )
        )
    with engine.begin() as conn:
        stats = store_stats(conn, retention_days=retention_days)
    jobs_table = next(t for t in stats["tables"] if t["table"] == "jobs")
    million = jobs_table["rows"] / 1_000_000
    heap = (jobs_table["heap_bytes"] or 0) / 2**20 / million
    index = (jobs_table["index_bytes"] or 0) / 2**20 / million
    note = f"jobs table of {jobs_table['rows']:,} records (estimate), as `taskyard health` reads it"
    figures += [
        Figure(SCENARIO, "storage per million jobs: heap (with TOAST)", "taskyard", "MiB", [heap],
               higher_is_better=False, note=note),
        Figure(SCENARIO, "storage per million jobs: indexes", "taskyard", "MiB", [index],
               higher_is_better=False, note=note),
        Figure(SCENARIO, "storage per job: heap + indexes", "taskyard", "bytes",
               [(heap + index) * 2**20 / 1_000_000], higher_is_better=False, note=note),
    ]  # fmt: skip
    return figures


def tally_ends(path: Path) -> list[float]:
    """The end times of the jobs recorded in a tally file so far (see bench.bodies)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return sorted(float(line.split()[1]) for line in lines if len(line) == RECORD_BYTES - 1)


def _partition_rows(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())


def remove_files_seconds(scratch: Path, total: int, segment: int = 2**30) -> float:
    """Write `total` bytes in files of `segment` bytes, sync them, and time their removal."""
    block = b"\x5a" * (1 << 20)
    paths = []
    for n in range((total + segment - 1) // segment):
        path = scratch / f"segment.{n}"
        with path.open("wb") as file:
            for _ in range(min(segment, total - n * segment) // len(block)):
                file.write(block)
            file.flush()
            os.fsync(file.fileno())
        paths.append(path)
    os.sync()
    started = time.monotonic()
    for path in paths:
        path.unlink()
    os.sync()
    return time.monotonic() - started


def top_up(engine: Engine, day: dt.date, records: int, *, seed: str = "taskyard-top-up") -> int:
    """Make the partition of `day` (expired) hold `records` records; how many it holds.

    The pre-fill puts part of its records on the expired day; the drop's target is
    for a period of the issue's size.  The partition is detached, its indexes
    dropped, the missing records generated into it (on the same day, as the fill
    makes them), and it is attached again, which makes its indexes; then vacuumed.
    """
    name = partitions.partition_name(day)
    have = _partition_rows(engine, name)
    if have >= records:
        return have
    started = time.monotonic()
    low, high = partitions.day_bounds(day)
    with engine.connect() as conn:
        conn.execute(text(f'ALTER TABLE jobs DETACH PARTITION "{name}"'))
        for (index,) in conn.execute(
            text(
                "SELECT indexname FROM pg_indexes WHERE tablename = :t "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            ),
            {"t": name},
        ).all():
            conn.execute(text(f'DROP INDEX "{index}"'))
        conn.commit()
        extra = records - have
        for first in range(1, extra + 1, FILL_CHUNK):
            last = min(extra, first + FILL_CHUNK - 1)
            conn.execute(
                text(_FILL.replace("INSERT INTO jobs ", f'INSERT INTO "{name}" ', 1)),
                {
                    "seed": seed,
                    "first": first,
                    "last": last,
                    "total": extra,
                    "tick_every": max(2, records // (24 * 60)),
                    # Every generated record on the expired day.
                    "expired": extra,
                    "expired_day": day.isoformat() + "T00:00:00+00:00",
                },
            )
            conn.commit()
            _say(f"top-up: {last:,} of {extra:,} records ({time.monotonic() - started:.0f} s)")
        conn.execute(text("SET maintenance_work_mem = '512MB'"))
        conn.execute(
            text(f'ALTER TABLE jobs ATTACH PARTITION "{name}" FOR VALUES FROM (:low) TO (:high)'),
            {"low": low, "high": high},
        )
        conn.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'VACUUM (ANALYZE) "{name}"'))
    held = _partition_rows(engine, name)
    _say(f"top-up: {name} holds {held:,} records ({time.monotonic() - started:.0f} s)")
    return held


def retention_drop(
    taskyard: Taskyard, jobs: int, window: float = DROP_WINDOW, *, records: int
) -> list[Figure]:
    """Drop the filled table's expired day, of `records` records, while a worker runs `jobs`
    DB-writing jobs.

    Times `partitions.drop_expired` as the daily job calls it, and compares the
    jobs/s the worker finished in the `window` seconds from the drop's start (or
    the drop's time, if longer) with the `window` seconds just before it.
    """
    engine = engine_of(taskyard.env)
    now = dt.datetime.now(dt.UTC)
    # The fill's oldest day (not recomputed from today: the run may have passed midnight).
    with engine.connect() as conn:
        found = partitions.partitions(conn)
    expired = found[min(found)]
    records = top_up(engine, min(found), records)
    with engine.connect() as conn:
        day_bytes = int(conn.scalar(text("SELECT pg_total_relation_size(:p)"), {"p": expired}))
        # An expired day is a month old, its files long on disk; the fill wrote this one
        # seconds ago: a checkpoint writes it out, so that the drop does not wait for it.
        conn.execute(text("CHECKPOINT"))
        conn.commit()
        data_directory = Path(str(conn.scalar(text("SHOW data_directory"))))
    same_disk = (
        data_directory.exists()
        and data_directory.stat().st_dev == taskyard.env.scratch.stat().st_dev
    )
    # Online discard can make freeing several times slower (bench/mounts.py): say which.
    data_filesystem = (
        describe_mount(data_directory) if data_directory.exists() else "not on this machine"
    )
    # The baseline: the filesystem removing as many bytes in files of PostgreSQL's segment
    # size, written and synced the same way, on the same disk.
    unlink = remove_files_seconds(taskyard.env.scratch, day_bytes)
    taskyard.send("write_row", jobs)
    worker = taskyard.start("store-drop")
    path = Path(f"{worker.done_base}.write_row")
    try:
        # Past the worker's start-up, then one window of steady work before the drop.
        deadline = time.monotonic() + 60
        while len(tally_ends(path)) < jobs // 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(window)
        steps: dict[str, float] = {}
        with engine.connect() as conn:
            started = time.time()
            dropped, left = partitions.drop_expired(
                conn, now=now, retention_days=RETENTION_DAYS, took=steps
            )
            took = time.time() - started
        worker.wait_done("write_row", jobs, timeout=60 + jobs / 20)
    finally:
        worker.stop()
    if expired not in dropped:
        raise BenchError(f"the expired partition {expired} was not dropped (left: {left})")
    ends = tally_ends(path)
    after = max(window, took)
    before = sum(started - window <= end < started for end in ends) / window
    during = sum(started <= end < started + after for end in ends) / after
    detach = steps.get(f"{expired} detach", float("nan"))
    drop = steps.get(f"{expired} drop", float("nan"))
    tries = ", ".join(
        f"{steps.get(f'{expired} {step} tries', 0):.0f}" for step in ("detach", "drop")
    )
    _say(
        f"dropped {', '.join(dropped)} in {took * 1000:.0f} ms; the expired day of "
        f"{records:,} records: detach {detach * 1000:.0f} ms, drop {drop * 1000:.0f} ms "
        f"(tries: {tries}); "
        f"{before:.0f} jobs/s before, {during:.0f} jobs/s from the drop's start"
    )
    if ends[-1] < started + after:
        raise BenchError(f"the {jobs:,} jobs were done before the drop's window ended: send more")
    what = f"DB-writing jobs/s, {after:.1f} s from the drop's start against {window:.1f} s before"
    note = f"one worker process of 8 threads draining {jobs:,} DB-writing jobs"
    return [
        Figure(
            SCENARIO,
            f"retention: drop an expired day of {records:,} records (drop_expired)",
            "taskyard",
            "ms",
            [took * 1000],
            at_most=DROP_MS,
            higher_is_better=False,
            note=f"{len(dropped)} partitions dropped: the expired day's and the empty days after",
        ),
        Figure(
            SCENARIO,
            f"retention: the expired day's DETACH, which locks `jobs` ({records:,} records)",
            "taskyard",
            "ms",
            [detach * 1000],
            higher_is_better=False,
            note=f"at most {partitions.LOCK_TIMEOUT_MS} ms waited for the lock per try; "
            f"tries (detach, drop): {tries}",
        ),
        Figure(
            SCENARIO,
            f"retention: the expired day's DROP, after its DETACH ({records:,} records)",
            "taskyard",
            "ms",
            [drop * 1000],
            higher_is_better=False,
            baseline="filesystem removing as many bytes",
            note=f"frees the day's files ({day_bytes / 2**30:.2f} GiB); `jobs` is not locked",
        ),
        Figure(
            SCENARIO,
            f"retention: the expired day's DROP, after its DETACH ({records:,} records)",
            "filesystem removing as many bytes",
            "ms",
            [unlink * 1000],
            higher_is_better=False,
            note="files of 1 GiB (PostgreSQL's segment size) written, synced and removed "
            "in the bench's scratch directory, "
            + ("on the data directory's disk" if same_disk else "NOT on the data directory's disk")
            + f"; the data directory's filesystem: {data_filesystem}",
        ),
        Figure(SCENARIO, what, "taskyard before the drop", "jobs/s", [before], note=note),
        Figure(
            SCENARIO,
            what,
            "taskyard during the drop",
            "jobs/s",
            [during],
            baseline="taskyard before the drop",
            ratio_at_least=0.9,
            note=note,
        ),
    ]


def run(
    taskyard: Taskyard,
    *,
    rows: int,
    jobs: int,
    retention_days: int,
    drop_jobs: int,
    drop_window: float = DROP_WINDOW,
    drop_rows: int,
) -> list[Figure]:
    """The store's figures on `rows` records, the row versions of `jobs` real jobs, then the
    expired day's drop (topped up to `drop_rows` records) under `drop_jobs` DB-writing jobs."""
    figures = measure_store(engine_of(taskyard.env), rows, retention_days)
    versions, hot_share = row_versions(taskyard, jobs)
    note = f"{jobs:,} no-op jobs sent with send_many and run by one worker"
    figures += [
        Figure(SCENARIO, "row versions per job", "taskyard", "versions", [versions],
               at_most=2.0, higher_is_better=False, note=note),
        Figure(SCENARIO, "heap-only share of the record's updates", "taskyard", "%",
               [hot_share], note=note),
    ]  # fmt: skip
    figures += retention_drop(taskyard, drop_jobs, drop_window, records=drop_rows)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Fill a database's `jobs` table and time its listings (no worker: no row versions)."""
    import argparse

    from sqlalchemy import create_engine

    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    parser.add_argument("--database-url", required=True, help="a migrated Taskyard database")
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args(argv)
    for figure in measure_store(create_engine(args.database_url), args.rows, 30):
        print(f"{figure.what}: {figure.median:,.2f} {figure.unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
