"""Two tenants on a real worker, crafted bytes published straight to RabbitMQ, rows compared.

Tenant A is the kill rig's tenant (`tests.reliability.kill_support`); tenant B
is made here with a row in every table a job can reach, and jobs in every state.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pika
from sqlalchemy import text
from sqlalchemy.orm import Session

from db.models import Ingest, IngestItem, Schedule
from middleware.outbox_rows import job_record
from services import jobs
from services.dead_letters import record_dead_letter
from services.job_control import record_queued
from services.locker import set_secret
from services.records import JobRecord
from services.tenants import create_tenant
from settings import Settings
from tests.reliability.kill_actors import record_effect
from tests.reliability.kill_support import Rig
from tests.support import WorkerProcess, wait_for, worker_env

SECRET_B = f"tenant-b-secret-{uuid.uuid4().hex}"


def body(queue: str, actor: str, kwargs: Any, **fields: Any) -> dict[str, Any]:
    """A well-formed Dramatiq message as a dict (fields may be overridden)."""
    return {
        "queue_name": queue,
        "actor_name": actor,
        "args": [],
        "kwargs": kwargs,
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    } | fields


def publish(broker_url: str, queue: str, messages: list[dict[str, Any]]) -> list[str]:
    """Publish messages straight to `queue`, confirmed, around Taskyard; returns their ids."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for message in messages:
            channel.basic_publish(
                "",
                queue,
                json.dumps(message).encode(),
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
    finally:
        connection.close()
    return [str(message["message_id"]) for message in messages]


def tenant_rows(rig: Rig, tenant_id: int, message_ids: Sequence[str] = ()) -> dict[str, list[str]]:
    """Every row of a tenant as JSON text: each table with a `tenant_id`, its tenant row,
    and the job records and dead letters of `message_ids` whatever tenant they name."""
    with rig.engine.connect() as conn:
        tables = conn.scalars(
            text(
                "SELECT table_name FROM information_schema.columns WHERE table_schema ="
                " 'public' AND column_name = 'tenant_id' ORDER BY table_name"
            )
        ).all()
        rows = {
            table: sorted(
                conn.scalars(
                    text(f'SELECT row_to_json(t)::text FROM "{table}" t WHERE tenant_id = :id'),
                    {"id": tenant_id},
                )
            )
            for table in tables
        }
        rows["tenants"] = list(
            conn.scalars(
                text("SELECT row_to_json(t)::text FROM tenants t WHERE id = :id"), {"id": tenant_id}
            )
        )
        for table in ("jobs", "dead_letters", "cancel_requests", "outbox"):
            rows[f"{table} by id"] = sorted(
                conn.scalars(
                    text(
                        f'SELECT row_to_json(t)::text FROM "{table}" t WHERE message_id = ANY(:ids)'
                    ),
                    {"ids": list(message_ids)},
                )
            )
    return rows


def letters_of(rig: Rig, message_id: str) -> list[dict[str, Any]]:
    """Dead letters kept for a message: under its id, or under a new one naming it."""
    with rig.engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT message_id, reason, error, tenant_id, queue FROM dead_letters"
                " WHERE message_id = :m OR error LIKE :like OR raw_body LIKE :like"
            ),
            {"m": message_id, "like": f"%{message_id}%"},
        )
        return [dict(row) for row in found.mappings()]


def one_letter(rig: Rig, message_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for the one dead letter of a message and return it."""
    letters = wait_for(lambda: letters_of(rig, message_id), timeout=timeout, what=message_id)
    assert len(letters) == 1, letters
    return letters[0]


@dataclass
class TenantB:
    """Tenant B and ids of its rows: jobs queued (unpublished), succeeded and dead."""

    id: int
    ingest_id: int
    queued_job: str
    succeeded_job: str
    dead_job: str

    @property
    def job_ids(self) -> list[str]:
        """Every job id of B's."""
        return [self.queued_job, self.succeeded_job, self.dead_job]


def make_tenant_b(rig: Rig, settings: Settings) -> TenantB:
    """Tenant B: an ingest with an item, a locker secret, a schedule, jobs in three states."""
    with Session(rig.engine) as session, session.begin():
        b = create_tenant(session, f"sec-b-{uuid.uuid4().hex[:8]}").id
        ingest = Ingest(tenant_id=b, source_url="https://feeds.example/b.json", status="running")
        session.add(ingest)
        session.flush()
        ingest_id = ingest.id
        session.add(
            IngestItem(
                tenant_id=b, ingest_id=ingest.id, position=0, resource_id="rb", status="pending"
            )
        )
        set_secret(session, b, "github.token", SECRET_B, secret_keys=settings.secret_keys)
        session.add(
            # No next slot: no tick ever sends it, so only crafted traffic could change it.
            Schedule(tenant_id=b, actor=record_effect.actor_name, cron="0 0 1 1 *", args={})
        )
        ids = []
        for key in ("queued", "succeeded", "dead"):
            message = record_effect.message_with_options(
                kwargs={"tenant_id": b, "key": f"b{b}-{key}"}
            ).copy(queue_name=rig.routing.queue_for(b))
            record_queued(session, [job_record(rig.producer, message)])
            ids.append(message.message_id)
        record = {"actor": record_effect.actor_name, "queue": rig.routing.queue_for(b)}
        now = dt.datetime.now(dt.UTC)
        jobs.finish(
            session,
            JobRecord(
                message_id=ids[1],
                tenant_id=b,
                args={"tenant_id": b, "key": f"b{b}-succeeded"},
                enqueued_at=now,
                attempts=1,
                started_at=now,
                finished_at=now,
                result={"ok": True},
                **record,
            ),
        )
        failed = JobRecord(ids[2], b, args={"tenant_id": b}, enqueued_at=None, **record)
        failed.attempts = 3
        jobs.record_failure(session, failed, error="Boom", dead=True)
        record_dead_letter(
            session,
            message_id=ids[2],
            **record,
            tenant_id=b,
            reason="max_attempts_exceeded",
            error="Boom",
            traceback=None,
            attempts=3,
            message={"message_id": ids[2], "queue_name": record["queue"]},
        )
    return TenantB(b, ingest_id, *ids)


def start_worker(rig: Rig, name: str, tenants: list[int], **env: str) -> WorkerProcess:
    """A ready worker of the rig's database and prefix serving exactly `tenants`."""
    worker = WorkerProcess(
        rig.tmp_path / f"{name}.log",
        worker_env(
            DATABASE_URL=rig.database_url,
            TASKYARD_QUEUE_PREFIX=rig.prefix,
            TASKYARD_TENANTS=",".join(str(t) for t in tenants),
            TASKYARD_METRICS_PORT="0",
            **env,
        ),
        modules=["tests.reliability.kill_actors"],
    )
    rig.workers.append(worker)
    worker.wait_ready()
    return worker
