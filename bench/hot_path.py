"""`python -m bench.hot_path`: the job record's cost per job, as it is and as the ORM builds it.

Runs the database work every job does around its actor (start the attempt
with the tenant's status, mark it succeeded, commit) in one thread against a
database of its own, three ways:

- `orm`: the statements built per call through the ORM (an upsert and an
  update on the mapped class), with the tenant read by a query of its own:
  how the worker did it before `db.hot`.
- `hot`: `services.jobs.finish` (the record's one statement) with
  `TASKYARD_DB_PREPARED_STATEMENTS=false`: compiled once, parsed and planned
  by PostgreSQL on every call.
- `prepared`: the same as the worker runs them by default, prepared once per
  connection.

Prints jobs/s, this process's CPU per job and the PostgreSQL backend's CPU per
job (read from /proc; `n/a` where it cannot be read) for each.  No peer, no
target: it explains where the throughput figures of `make bench` come from.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from bench.env import BenchEnv
from db.migrate import upgrade_to_head
from db.models import JOB_FINAL_STATES, JOB_RUNNING, JOB_SUCCEEDED, Job, Tenant
from db.session import make_engine
from services import jobs
from services.records import JobRecord
from services.tenants import create_tenant
from settings import load_settings


def _record(tenant_id: int) -> dict[str, object]:
    return {
        "actor": "bench_noop",
        "queue": f"tenant.{tenant_id}",
        "tenant_id": tenant_id,
        "args": {"tenant_id": tenant_id},
        "attempt": 1,
        "enqueued_at": dt.datetime.now(dt.UTC),
    }


def orm_job(session: Session, tenant_id: int) -> None:
    """The job record through statements the ORM builds on every call."""
    message_id, record, now = str(uuid.uuid4()), _record(tenant_id), dt.datetime.now(dt.UTC)
    changes = {"status": JOB_RUNNING, "attempts": 1, "started_at": now}
    fields = {k: record[k] for k in ("tenant_id", "actor", "queue", "args", "enqueued_at")}
    insert = postgresql.insert(Job).values(message_id=message_id, **fields, **changes)
    upsert = insert.on_conflict_do_update(
        index_elements=[Job.message_id], set_=changes, where=Job.status.not_in(JOB_FINAL_STATES)
    )
    session.execute(upsert.returning(Job.message_id)).first()
    session.scalar(select(Tenant.status).where(Tenant.id == tenant_id))
    session.execute(
        update(Job)
        .where(Job.message_id == message_id)
        .values(status=JOB_SUCCEEDED, attempts=1, finished_at=now, result=None, error=None)
    )


def hot_job(session: Session, tenant_id: int) -> None:
    """The job record as the worker writes it."""
    now = dt.datetime.now(dt.UTC)
    done = jobs.finish(
        session,
        JobRecord(
            message_id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            actor="bench_noop",
            queue=f"tenant.{tenant_id}",
            args={"tenant_id": tenant_id},
            enqueued_at=now,
            attempts=1,
            started_at=now,
            finished_at=now,
        ),
    )
    assert done.written and done.tenant_status is not None


@dataclass(frozen=True)
class Measured:
    """One way's figures over `count` jobs."""

    rate: float
    cpu_us: float
    # The database backend's CPU per job; None where /proc cannot tell.
    server_cpu_us: float | None


def backend_cpu_seconds(pid: int) -> float | None:
    """The CPU time (user + system) a local PostgreSQL backend has used, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    factory: sessionmaker[Session], job: Callable[[Session, int], None], tenant: int, count: int
) -> Measured:
    """Rate, CPU and the backend's CPU per job for `count` jobs, one transaction each.

    One thread: the pool hands every transaction the same connection, so one
    backend does all the work (checked before and after).
    """
    for _ in range(min(50, count)):
        with factory.begin() as session:
            job(session, tenant)
    with factory.begin() as session:
        pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
    server = backend_cpu_seconds(pid)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        with factory.begin() as session:
            job(session, tenant)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with factory.begin() as session:
        same = session.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
    after = backend_cpu_seconds(pid)
    server_us = None
    if same and server is not None and after is not None:
        server_us = (after - server) / count * 1e6
    return Measured(count / wall, cpu / count * 1e6, server_us)


def _engine(prepared: bool) -> Engine:
    return make_engine(dataclasses.replace(load_settings(), db_prepared_statements=prepared))


def main(argv: list[str] | None = None) -> int:
    """Measure both ways `--runs` times and print each run."""
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--count", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-hot-path-")))
    env.export()
    upgrade_to_head(env.database_url)
    plain, prepared = _engine(False), _engine(True)
    ways = (
        ("orm", plain, orm_job),
        ("hot", plain, hot_job),
        ("prepared", prepared, hot_job),
    )
    try:
        with sessionmaker(plain).begin() as session:
            tenant = create_tenant(session, f"hot-path-{env.run_id}").id
        for run in range(args.runs):
            for name, engine, job in ways:
                factory = sessionmaker(engine, expire_on_commit=False)
                got = measure(factory, job, tenant, args.count)
                server = "n/a" if got.server_cpu_us is None else f"{got.server_cpu_us:,.0f} µs"
                print(
                    f"run {run + 1} {name}: {got.rate:,.0f} jobs/s, {got.cpu_us:,.0f} µs CPU"
                    f" per job, {server} database CPU per job",
                    flush=True,
                )
    finally:
        plain.dispose()
        prepared.dispose()
        env.drop_database()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
