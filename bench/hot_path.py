"""`python -m bench.hot_path`: the job record's cost per job, as it is and as the ORM builds it.

Runs the database work every job does around its actor (start the attempt
with the tenant's status, mark it succeeded, commit) in one thread against a
database of its own, two ways:

- `orm`: the statements built per call through the ORM (an upsert and an
  update on the mapped class), with the tenant read by a query of its own:
  how the worker did it before `db.hot`.
- `hot`: `services.jobs.begin_attempt` and `mark_succeeded` as they are.

Prints jobs/s and process CPU per job for each.  No peer, no target: it
explains where the throughput figures of `make bench` come from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from bench.env import BenchEnv
from db.migrate import upgrade_to_head
from db.models import JOB_FINAL_STATES, JOB_RUNNING, JOB_SUCCEEDED, Job, Tenant
from db.session import make_engine
from services import jobs
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
    message_id = str(uuid.uuid4())
    record = _record(tenant_id)
    attempt = jobs.begin_attempt(session, message_id, **record)  # type: ignore[arg-type]
    assert attempt.run and attempt.tenant_status is not None
    jobs.mark_succeeded(session, message_id, attempt=1, result=None)


def measure(
    factory: sessionmaker[Session], job: Callable[[Session, int], None], tenant: int, count: int
) -> tuple[float, float]:
    """Jobs per second and CPU microseconds per job for `count` jobs, one transaction each."""
    for _ in range(min(50, count)):
        with factory.begin() as session:
            job(session, tenant)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        with factory.begin() as session:
            job(session, tenant)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return count / wall, cpu / count * 1e6


def main(argv: list[str] | None = None) -> int:
    """Measure both ways `--runs` times and print each run."""
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__)
    parser.add_argument("--count", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    env = BenchEnv(Path(tempfile.mkdtemp(prefix="taskyard-hot-path-")))
    env.export()
    upgrade_to_head(env.database_url)
    engine = make_engine(load_settings())
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        with factory.begin() as session:
            tenant = create_tenant(session, f"hot-path-{env.run_id}").id
        for run in range(args.runs):
            for name, job in (("orm", orm_job), ("hot", hot_job)):
                rate, cpu = measure(factory, job, tenant, args.count)
                print(f"run {run + 1} {name}: {rate:,.0f} jobs/s, {cpu:,.0f} µs CPU per job")
    finally:
        engine.dispose()
        env.drop_database()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
