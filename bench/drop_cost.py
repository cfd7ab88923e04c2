"""`python -m bench.drop_cost`: what dropping a day's partition costs on a disk.

Retention drops each expired day of `jobs` whole (`services.partitions.drop_expired`):
no rows are deleted, the day's files are freed.  Its time is then the time
the filesystem under PostgreSQL takes to free that many bytes, which differs
between disks and filesystems far more than between PostgreSQL's steps.  For
each place (the database's default tablespace, and each `--tablespace-dir`,
a directory PostgreSQL's server user may write, made a tablespace for the
run) this measures, `--runs` times:

- PostgreSQL dropping a table of `--mib` MiB (unlogged, made by set-based
  SQL, then checkpointed: its files are on disk, as an expired day's are);
- the filesystem alone removing as many bytes, in files of PostgreSQL's
  segment size (1 GiB), written, synced and removed (`bench.store`'s
  baseline), in `--scratch-dir` for the default tablespace (it must be on the
  data directory's filesystem to compare) and in the tablespace's directory
  for the others.

Prints, for each place, the filesystem it is on and whether that is mounted
with online `discard` (each freed extent discarded as the files go, which on
some disks makes freeing many times slower: docs/guides/jobs.md), then one line
per run.  No target: the drop's figure is section
10 of BENCHMARKS.md (`python -m bench --only store`); this tells where its
time goes, on the machine it runs on.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from bench.env import PG_SERVER_URL, BenchEnv, positive
from bench.mounts import describe_mount
from bench.store import remove_files_seconds
from db.migrate import ensure_database

# A row of the filler table: about 240 bytes on disk, as a job record's heap row.
_ROW_BYTES = 240


def table_drop_ms(engine: Engine, mib: int, tablespace: str | None) -> tuple[float, int]:
    """Make an unlogged table of about `mib` MiB, checkpoint, drop it: (ms, its bytes)."""
    rows = mib * 2**20 // _ROW_BYTES
    where = f" TABLESPACE {tablespace}" if tablespace else ""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP TABLE IF EXISTS drop_cost_filler"))
        conn.execute(
            text(
                f"CREATE UNLOGGED TABLE drop_cost_filler{where} AS "
                "SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, :rows) AS g"
            ),
            {"rows": rows},
        )
        size = int(conn.scalar(text("SELECT pg_total_relation_size('drop_cost_filler')")) or 0)
        conn.execute(text("CHECKPOINT"))
        started = time.perf_counter()
        conn.execute(text("DROP TABLE drop_cost_filler"))
        return (time.perf_counter() - started) * 1000, size


def main(argv: list[str] | None = None) -> int:
    """Time the drop and the filesystem's removal in each place."""
    parser = argparse.ArgumentParser(prog="python -m bench.drop_cost", description=__doc__)
    parser.add_argument("--mib", type=positive, default=4_096, help="the table's size (MiB)")
    parser.add_argument("--runs", type=positive, default=2)
    parser.add_argument(
        "--scratch-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the filesystem baseline of the default tablespace writes its files "
        "(on the data directory's filesystem)",
    )
    parser.add_argument(
        "--tablespace-dir",
        type=Path,
        action="append",
        default=[],
        help="also measure in a tablespace at this directory (empty, writable by the server)",
    )
    args = parser.parse_args(argv)
    for directory in args.tablespace_dir:
        if not directory.is_absolute() or not directory.is_dir():
            parser.error(f"--tablespace-dir {directory}: not an existing directory's absolute path")
        if "'" in str(directory):
            parser.error(
                f"--tablespace-dir {directory}: PostgreSQL refuses a tablespace location "
                "with a single quote in it; name another directory"
            )
    if not args.scratch_dir.is_dir():
        parser.error(f"--scratch-dir {args.scratch_dir}: not an existing directory")
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-drop-cost-", dir=args.scratch_dir)))
    ensure_database(env.database_url)
    engine = create_engine(env.database_url)
    places: list[tuple[str, str | None, Path]] = [("default tablespace", None, env.scratch)]
    for n, directory in enumerate(args.tablespace_dir):
        places.append((f"tablespace at {directory}", f"drop_cost_{env.run_id}_{n}", directory))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for _label, tablespace, directory in places[1:]:
                # LOCATION takes no parameter; the path has no quote (checked above).
                try:
                    conn.execute(text(f"CREATE TABLESPACE {tablespace} LOCATION '{directory}'"))
                except DBAPIError as exc:
                    message = str(exc.orig).strip().splitlines()[0]
                    print(
                        f"python -m bench.drop_cost: PostgreSQL made no tablespace at "
                        f"{directory} ({message}); give it an empty directory its server "
                        "user owns",
                        file=sys.stderr,
                    )
                    return 2
        for label, tablespace, directory in places:
            print(f"{label}: {describe_mount(directory)}")
            drops, removals = [], []
            for run in range(1, args.runs + 1):
                drop_ms, size = table_drop_ms(engine, args.mib, tablespace)
                scratch = Path(tempfile.mkdtemp(prefix="files-", dir=directory))
                try:
                    removal_ms = remove_files_seconds(scratch, size) * 1000
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                drops.append(drop_ms)
                removals.append(removal_ms)
                print(
                    f"run {run} {label}: DROP of {size / 2**20:,.0f} MiB {drop_ms:,.0f} ms; "
                    f"the filesystem removing as many bytes {removal_ms:,.0f} ms"
                )
            print(
                f"{label}: medians DROP {statistics.median(drops):,.0f} ms, "
                f"filesystem {statistics.median(removals):,.0f} ms"
            )
    finally:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("DROP TABLE IF EXISTS drop_cost_filler"))
        engine.dispose()
        env.drop_database()
        admin = create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for _label, tablespace, _directory in places[1:]:
                conn.execute(text(f"DROP TABLESPACE IF EXISTS {tablespace}"))
        admin.dispose()
        shutil.rmtree(env.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
