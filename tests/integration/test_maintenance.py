"""The daily retention job, run by a real worker: old job records, old slots, vanished workers."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.maintenance import purge_job_records
from db.models import JOB_SUCCEEDED, CancelRequest, DeadLetter, Job, Worker
from tests.support import WorkerProcess, wait_for


def test_retention_deletes_old_records_and_vanished_workers_only(
    worker: WorkerProcess, sessions: sessionmaker[Session]
) -> None:
    now = dt.datetime.now(dt.UTC)
    old_job, new_job = str(uuid.uuid4()), str(uuid.uuid4())
    gone, alive = f"gone:{uuid.uuid4().hex}", f"alive:{uuid.uuid4().hex}"
    with sessions.begin() as session:
        for message_id, finished in ((old_job, now - dt.timedelta(days=90)), (new_job, now)):
            session.add(
                Job(
                    message_id=message_id,
                    actor="ingest_resources",
                    queue="q",
                    args={},
                    status=JOB_SUCCEEDED,
                    attempts=1,
                    finished_at=finished,
                )
            )
        for worker_id, beat in ((gone, now - dt.timedelta(days=3)), (alive, now)):
            session.add(
                Worker(
                    worker_id=worker_id,
                    host="h",
                    pid=1,
                    queues=[],
                    threads=1,
                    in_progress=0,
                    started_at=beat,
                    heartbeat_at=beat,
                )
            )

        # A cancel request and a requeued dead letter past the retention, and a dead
        # letter nobody requeued (kept until an operator purges it)
        old = now - dt.timedelta(days=90)
        session.add(CancelRequest(message_id=old_job, requested_at=old))
        for letter_id, requeued in ((old_job, old), (new_job, None)):
            letter = DeadLetter(message_id=letter_id, queue="q", reason="failed")
            letter.created_at, letter.requeued_at = old, requeued
            session.add(letter)

    message = purge_job_records.send()

    def finished() -> Job | None:
        with sessions() as session:
            job = session.get(Job, message.message_id)
            return job if job is not None and job.status == JOB_SUCCEEDED else None

    job = wait_for(finished, what="the retention job")
    assert job.result is not None
    assert job.result["deleted"] >= 1 and job.result["stale_workers_deleted"] >= 1
    assert job.result["unfinished"] == []
    with sessions() as session:
        assert session.get(Job, old_job) is None
        assert session.get(Job, new_job) is not None
        assert session.get(CancelRequest, old_job) is None
        assert session.get(DeadLetter, old_job) is None
        assert session.get(DeadLetter, new_job) is not None
        ids = set(session.scalars(select(Worker.worker_id)))
    assert gone not in ids and alive in ids
    with sessions.begin() as session:
        session.delete(session.get(Worker, alive))
