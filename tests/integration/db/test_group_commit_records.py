"""The group commit on the real PostgreSQL: one statement for many records, and what it refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from db.models import DeadLetter, Job
from middleware.group_commit import GroupCommit
from services.records import JobRecord

pytestmark = pytest.mark.integration


def finished(**changes: object) -> JobRecord:
    now = dt.datetime.now(dt.UTC)
    job = JobRecord(
        message_id=str(uuid.uuid4()),
        tenant_id=None,
        actor="group_test",
        queue="group.q",
        args={"n": 1, "text": "50% done, 'quoted'"},
        enqueued_at=now - dt.timedelta(seconds=1),
        attempts=1,
        started_at=now,
        finished_at=now,
    )
    return dataclasses.replace(job, **changes)  # type: ignore[arg-type]


def stored(engine: Engine, message_id: str) -> Job | None:
    with Session(engine) as session:
        return session.scalar(select(Job).where(Job.message_id == message_id))


def test_many_records_are_written_as_given_and_a_final_one_is_left_alone(engine: Engine) -> None:
    group = GroupCommit(engine)
    first, second = finished(result={"rows": 2}), finished(tenant_id=None)
    done = finished()
    assert group.submit(done).wait(10)
    # Again, as a copy that finished later: the record is final, nothing is changed.
    again = group.submit(dataclasses.replace(done, attempts=2, result={"copy": True}))
    tickets = [group.submit(first), group.submit(second)]
    assert all(t.wait(10) for t in [again, *tickets])
    group.stop()

    assert [t.written for t in tickets] == [True, True] and again.written is False
    record = stored(engine, first.message_id)
    assert record is not None
    assert (record.status, record.attempts, record.result) == ("succeeded", 1, {"rows": 2})
    assert record.args == {"n": 1, "text": "50% done, 'quoted'"}
    assert record.started_at == first.started_at and record.enqueued_at == first.enqueued_at
    kept = stored(engine, done.message_id)
    assert kept is not None and (kept.attempts, kept.result) == (1, None)


def test_a_record_postgresql_refuses_holds_up_no_other_and_is_settled_all_the_same(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL's jsonb cannot store a NUL character: the batch fails, then each alone.
    group = GroupCommit(engine, linger_seconds=0.05)
    bad = finished(args={"text": "nul\u0000here"})
    good = finished()
    with caplog.at_level(logging.ERROR, logger="GroupCommit"):
        tickets = [group.submit(bad), group.submit(good)]
        assert all(t.wait(10) for t in tickets)
    group.stop()

    assert [t.written for t in tickets] == [False, True]
    assert stored(engine, bad.message_id) is None
    good_record = stored(engine, good.message_id)
    assert good_record is not None and good_record.status == "succeeded"
    assert f"Could not write the record of group_test {bad.message_id}" in caplog.text


def test_two_copies_in_one_batch_write_the_record_once(engine: Engine) -> None:
    group = GroupCommit(engine, linger_seconds=0.05)
    job = finished()
    tickets = [group.submit(job), group.submit(dataclasses.replace(job, attempts=2))]
    assert all(t.wait(10) for t in tickets)
    group.stop()

    assert [t.written for t in tickets] == [True, False]
    record = stored(engine, job.message_id)
    assert record is not None and record.attempts == 1


def test_a_message_reusing_another_tenants_id_leaves_that_record_alone(engine: Engine) -> None:
    # Tenant 1's job is queued; a crafted message of tenant 2 (or another actor or queue)
    # names its id: the group commit writes nothing over it.
    group = GroupCommit(engine)
    owner = finished(tenant_id=1, queue="tenant.1", args={"tenant_id": 1})
    with Session(engine) as session, session.begin():
        session.add(
            Job(
                message_id=owner.message_id,
                tenant_id=1,
                actor="group_test",
                queue="tenant.1",
                args={"tenant_id": 1},
                status="queued",
            )
        )
    intruders = [
        dataclasses.replace(owner, tenant_id=2, queue="tenant.2", result={"taken": True}),
        dataclasses.replace(owner, actor="another_actor", result={"taken": True}),
    ]
    tickets = [group.submit(job) for job in intruders]  # type: ignore[arg-type]
    assert all(t.wait(10) for t in tickets)
    group.stop()

    assert [t.written for t in tickets] == [False, False]
    record = stored(engine, owner.message_id)
    assert record is not None and (record.tenant_id, record.actor) == (1, "group_test")
    assert (record.status, record.result) == ("queued", None)
    # Each intruder is kept as a dead letter of its own, as the transactional path keeps it
    assert group.duplicates == 0
    with Session(engine) as session:
        letters = session.scalars(
            select(DeadLetter).where(DeadLetter.error.contains(owner.message_id))
        ).all()
    assert sorted((d.reason, d.tenant_id, d.actor) for d in letters) == [
        ("message_id_taken", 1, "another_actor"),
        ("message_id_taken", 2, "group_test"),
    ]
    assert all(d.message_id != owner.message_id for d in letters)
