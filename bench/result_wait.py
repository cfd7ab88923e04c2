"""`python -m bench.result_wait`: the cost of waiting for results by LISTEN/NOTIFY, not polling.

`message.get_result(block=True)` polls the job's record (`middleware.results`).
The alternative is a NOTIFY when a record becomes final, which the waiting
producer LISTENs for.  This measures, on a table of its own in the configured
database (dropped at the end):

- commits/s of THREADS threads each finishing records one per transaction
  (an UPDATE and a commit, as a job's final statement), three ways: plain;
  with `pg_notify` as a statement of its own; with `pg_notify` in a row
  trigger (no extra round trip);
- the time of one poll: the record read by its primary key.

Prints one line per round and one for the poll.  No target: it explains the
choice of polling made in `middleware/results.py`.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any

from sqlalchemy import Engine

from db.session import make_engine
from settings import load_settings

_TABLE = "bench_result_wait"


def _raw(engine: Engine) -> Any:
    return engine.raw_connection()


def _finish(engine: Engine, threads: int, per_thread: int, *, notify: bool, trigger: bool) -> float:
    """Commits/s of `threads` threads each finishing `per_thread` records, one per commit."""
    admin = _raw(engine)
    cursor = admin.cursor()
    cursor.execute(f"DROP TRIGGER IF EXISTS {_TABLE}_t ON {_TABLE}")
    if trigger:
        cursor.execute(
            f"CREATE TRIGGER {_TABLE}_t AFTER UPDATE ON {_TABLE} FOR EACH ROW "
            f"EXECUTE FUNCTION {_TABLE}_notify()"
        )
    chunks = [[str(uuid.uuid4()) for _ in range(per_thread)] for _ in range(threads)]
    for chunk in chunks:
        cursor.execute(
            f"INSERT INTO {_TABLE} SELECT unnest(%s::varchar[]), 'queued', NULL", (chunk,)
        )
    admin.commit()
    admin.close()

    def work(chunk: list[str]) -> None:
        connection = _raw(engine)
        cur = connection.cursor()
        for message_id in chunk:
            cur.execute(
                f"UPDATE {_TABLE} SET status = 'succeeded', result = '1' WHERE message_id = %s",
                (message_id,),
            )
            if notify:
                cur.execute("SELECT pg_notify('taskyard_results', %s)", (message_id,))
            connection.commit()
        connection.close()

    workers = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * per_thread / (time.perf_counter() - started)


def _polls(engine: Engine, count: int) -> list[float]:
    """Microseconds of each of `count` reads of one record by its primary key."""
    connection = _raw(engine)
    cursor = connection.cursor()
    cursor.execute(f"SELECT message_id FROM {_TABLE} LIMIT 1")
    (message_id,) = cursor.fetchone()
    connection.rollback()
    took = []
    for _ in range(count):
        started = time.perf_counter()
        cursor.execute(f"SELECT status, result FROM {_TABLE} WHERE message_id = %s", (message_id,))
        cursor.fetchone()
        connection.rollback()
        took.append((time.perf_counter() - started) * 1e6)
    connection.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--per-thread", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = make_engine(load_settings())
    admin = _raw(engine)
    cursor = admin.cursor()
    cursor.execute(f"DROP TABLE IF EXISTS {_TABLE}")
    cursor.execute(
        f"CREATE TABLE {_TABLE} (message_id varchar(36) PRIMARY KEY, status varchar(16), "
        "result jsonb)"
    )
    cursor.execute(
        f"CREATE OR REPLACE FUNCTION {_TABLE}_notify() RETURNS trigger AS $$ BEGIN "
        "PERFORM pg_notify('taskyard_results', NEW.message_id); RETURN NEW; END $$ "
        "LANGUAGE plpgsql"
    )
    admin.commit()
    try:
        for round_ in range(args.rounds):
            rates = {
                name: _finish(engine, args.threads, args.per_thread, notify=n, trigger=t)
                for name, n, t in (
                    ("plain", False, False),
                    ("notify statement", True, False),
                    ("notify trigger", False, True),
                )
            }
            plain = rates["plain"]
            print(
                f"round {round_ + 1}: commits/s "
                + ", ".join(f"{k} {v:.0f} ({v / plain - 1:+.0%})" for k, v in rates.items())
            )
        polls = sorted(_polls(engine, 2_000))
        print(
            f"poll by primary key: median {statistics.median(polls):.0f} us, "
            f"p95 {polls[int(len(polls) * 0.95)]:.0f} us"
        )
    finally:
        cursor.execute(f"DROP TABLE IF EXISTS {_TABLE}")
        cursor.execute(f"DROP FUNCTION IF EXISTS {_TABLE}_notify()")
        admin.commit()
        admin.close()
        engine.dispose()


if __name__ == "__main__":
    main()
