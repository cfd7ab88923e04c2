"""`python -m bench.round_trips`: what a DB-writing job's round trips cost, without the worker.

Eight threads, each on its own psycopg2 connection to a migrated database of
the run's own, repeat a DB-writing job's database work three ways:

- `four`: as the worker's job does it: `BEGIN`, the job's own `INSERT`, the
  record's statement (`services.jobs.finish`, prepared), `COMMIT`: four
  round trips;
- `two`: the same statements with `BEGIN` sent with the `INSERT` and
  `COMMIT` with the record's statement (the connection in autocommit, each
  pair one simple query): two round trips;
- `three`: bare Dramatiq's job: `BEGIN`, the `INSERT`, `COMMIT`, no record.

Prints jobs/s and this process's CPU per job for each, `--runs` times in
turn, after checking that every job's row was committed.  No target: it
tells how much of a DB-writing job's cost is round trips and how much is the
record's statement (bench/ANALYSIS.md, item 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.dialects import postgresql

from bench.env import BenchEnv, positive
from db.connect import libpq_url
from db.migrate import upgrade_to_head
from services.jobs import _FINISH
from services.message_ids import new_message_id

THREADS = 8
WAYS = ("four", "two", "three")
_INSERT = "INSERT INTO round_trip_rows (system) VALUES ('taskyard') RETURNING id"


def _record(fixed: dict[str, Any]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        **fixed,
        "message_id": new_message_id(),
        "tenant_id": None,
        "actor": "round_trips",
        "queue": "round_trips",
        "args": json.dumps({"n": 1}),
        "attempts": 1,
        "enqueued_at": now,
        "started_at": now,
        "finished_at": now,
        "result": None,
        "result_dropped": None,
    }


def _thread(dsn: str, way: str, count: int) -> None:
    compiled = _FINISH._compiled_for(postgresql.psycopg2.dialect())  # type: ignore[no-untyped-call]
    assert compiled.prepare is not None
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = way == "two"
        cursor = conn.cursor()
        cursor.execute(compiled.prepare)
        conn.commit()
        for _ in range(count):
            if way == "four":
                cursor.execute(_INSERT)
                cursor.fetchone()
                cursor.execute(compiled.execute, _record(compiled.fixed))
                cursor.fetchone()
                conn.commit()
            elif way == "two":
                cursor.execute("BEGIN;" + _INSERT)
                cursor.fetchone()
                cursor.execute(compiled.execute + ";COMMIT", _record(compiled.fixed))
            else:
                cursor.execute(_INSERT)
                cursor.fetchone()
                conn.commit()
    finally:
        conn.close()


def measure(dsn: str, way: str, count: int) -> tuple[float, float]:
    """(jobs/s, this process's CPU µs per job) for `count` jobs over `THREADS` threads."""
    threads = [
        threading.Thread(target=_thread, args=(dsn, way, count // THREADS)) for _ in range(THREADS)
    ]
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    done = count // THREADS * THREADS
    return done / elapsed, cpu / done * 1e6


def _rows(dsn: str) -> int:
    """How many rows the jobs' INSERTs have committed so far."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM round_trip_rows")
            row = cursor.fetchone()
            return int(row[0]) if row else 0
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """Run each way `--runs` times in turn."""
    parser = argparse.ArgumentParser(prog="python -m bench.round_trips", description=__doc__)
    parser.add_argument("--count", type=positive, default=16_000)
    parser.add_argument("--runs", type=positive, default=2)
    args = parser.parse_args(argv)
    if args.count < THREADS:
        parser.error(f"--count {args.count}: at least one job per thread ({THREADS})")
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-round-trips-")))
    env.export()
    try:
        upgrade_to_head(env.database_url)
        dsn = libpq_url(env.database_url)
        if dsn is None:
            raise SystemExit("python -m bench.round_trips: the bench database is not PostgreSQL")
        conn = psycopg2.connect(dsn)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute(
                    "CREATE TABLE round_trip_rows (id bigint GENERATED ALWAYS AS IDENTITY "
                    "PRIMARY KEY, system varchar(32), created_at timestamptz DEFAULT now())"
                )
        finally:
            conn.close()
        for run in range(1, args.runs + 1):
            for way in WAYS:
                before = _rows(dsn)
                rate, cpu_us = measure(dsn, way, args.count)
                written = _rows(dsn) - before
                if written != args.count // THREADS * THREADS:
                    raise SystemExit(f"way {way} committed {written:,} rows of {args.count:,}")
                print(f"run {run} {way}: {rate:,.0f} jobs/s, {cpu_us:,.0f} µs CPU per job")
    finally:
        env.drop_database()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
