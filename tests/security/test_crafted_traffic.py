"""Property: random crafted traffic on tenant A's queue never changes a row of tenant B's.

A real worker serves both tenants. Only A's queue receives traffic: messages
built at random from every actor the worker knows (system actors too) and
unknown ones, the queue names of A, B and the system, tenant ids of every
shape, B's message ids, positional and unexpected arguments, and options
(retry counts, ones Dramatiq would misread: `throws`, a bad priority, and
callbacks and pipeline stages naming B or a system actor).
Every row of B's (each table with a `tenant_id`, its tenant row, and the job
records and dead letters of B's message ids) is compared as JSON text before
and after. The seed is printed, and `TASKYARD_SECURITY_SEED` replays it.
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from db.models import JOB_FINAL_STATES
from tests.reliability.kill_actors import record_effect
from tests.reliability.kill_support import Rig
from tests.security.support import TenantB, body, letters_of, publish, start_worker, tenant_rows
from tests.support import wait_for

pytestmark = [pytest.mark.integration]

MESSAGES = 200
ACTORS = [
    "ingest_resources",
    "process_resource",
    "sync_integration",
    "notify_webhook",
    "delete_tenant",
    "reencrypt_locker",
    "purge_job_records",
    "scheduler_tick",
    record_effect.actor_name,
    "no_such_actor",
]


def crafted(rnd: random.Random, rig: Rig, b: TenantB) -> dict[str, Any]:
    """One random message for A's queue: mostly well formed for its actor, often mutated."""
    a_queue, b_queue = rig.queue, rig.routing.queue_for(b.id)
    queue = rnd.choice([a_queue] * 6 + [b_queue, rig.routing.system_queue, f"{a_queue}.DQ"])
    tenant = rnd.choice([rig.tenant_id, b.id, b.id])
    resource = {"id": "rb", "name": "Taken over", "creation_date": "2024-01-01T00:00:00Z"}
    well_formed: dict[str, dict[str, Any]] = {
        "delete_tenant": {"tenant_id": b.id},
        "reencrypt_locker": {},
        "purge_job_records": {},
        "scheduler_tick": {},
        "process_resource": {"tenant_id": tenant, "ingest_id": b.ingest_id, "resource": resource},
        "sync_integration": {"tenant_id": tenant, "integration_id": rnd.randint(1, 50)},
        "notify_webhook": {"tenant_id": tenant, "event": "crafted", "payload": {"from": "A"}},
        # Refuses connections at once: a transient failure, retried, then dead.
        "ingest_resources": {"tenant_id": tenant, "source_url": "http://127.0.0.1:1/feed"},
        record_effect.actor_name: {
            "tenant_id": tenant,
            "key": f"{rig.prefix}crafted-{rnd.randint(0, 10**6)}",
        },
        "no_such_actor": {"tenant_id": tenant},
    }
    actor = rnd.choice(list(well_formed))
    kwargs = dict(well_formed[actor])
    mutation = rnd.choice(["none"] * 5 + ["tenant", "extra", "drop"])
    if mutation == "tenant":
        kwargs["tenant_id"] = rnd.choice([str(rig.tenant_id), str(b.id), 0, -1, True, None, 2**64])
    elif mutation == "extra":
        kwargs[rnd.choice(["surprise", "batch_size", "tenant_id"])] = rnd.choice([1, b.id, "x"])
    elif mutation == "drop" and kwargs:
        del kwargs[rnd.choice(list(kwargs))]
    message_id = rnd.choice([*b.job_ids, str(uuid.uuid4()), str(uuid.uuid4())])
    args = rnd.choice([[], [], [], [], [rig.tenant_id], [b.id]])
    options = rnd.choice(
        [
            {},
            {},
            {},
            {"retries": rnd.randint(0, 5)},
            {"throws": 1},
            {"broker_priority": "x"},
            {"eta": 0},
            {"max_attempts": 10**6, "max_backoff": 0},
            # Follow-ups: a next stage naming B (on B's queue), a callback to a system
            # actor, and a callback of A's own the actor cannot take.
            {"pipe_target": body(b_queue, record_effect.actor_name, {"tenant_id": b.id})},
            {"on_success": "delete_tenant", "pipe_ignore": True},
            {"on_failure": record_effect.actor_name, "delay": 1},
        ]
    )
    return body(queue, actor, kwargs, message_id=message_id, args=args, options=options)


def settled(rig: Rig, b: TenantB, messages: list[dict[str, Any]]) -> bool:
    """Whether every crafted message is done with: a final job record, or a dead letter.

    A message carrying one of B's ids never gets B's record or dead letter: its
    dead letter is kept under a new id that names it, one per such message.
    """
    for message_id in {m["message_id"] for m in messages}:
        letters = [x for x in letters_of(rig, message_id) if x["message_id"] != message_id]
        if message_id in b.job_ids:
            sent = sum(m["message_id"] == message_id for m in messages)
            if len(letters) < sent:
                return False
            continue
        with rig.engine.connect() as conn:
            status = conn.scalar(
                text("SELECT status FROM jobs WHERE message_id = :m"), {"m": message_id}
            )
        if status not in JOB_FINAL_STATES and not letters_of(rig, message_id):
            return False
    return True


def test_random_crafted_traffic_on_one_queue_never_changes_another_tenant(
    rig: Rig, tenant_b: TenantB
) -> None:
    seed = int(os.environ.get("TASKYARD_SECURITY_SEED") or random.randrange(2**32))
    print(f"TASKYARD_SECURITY_SEED={seed}")
    rnd = random.Random(seed)
    # Given a worker serving A and B, and B with rows everywhere and jobs in three states
    worker = start_worker(rig, "worker", [rig.tenant_id, tenant_b.id])
    before = tenant_rows(rig, tenant_b.id, tenant_b.job_ids)
    # When A's queue (and only A's) receives random crafted messages
    messages = [crafted(rnd, rig, tenant_b) for _ in range(MESSAGES)]
    publish(rig.broker_url, rig.queue, messages)
    # Then every one of them is done with: run for A, or refused and kept as a dead letter
    wait_for(
        lambda: settled(rig, tenant_b, messages),
        timeout=90,
        what=f"{MESSAGES} crafted messages settled (seed {seed})",
    )
    # And no row of B's changed: B's rows, B's job records and dead letters
    after = tenant_rows(rig, tenant_b.id, tenant_b.job_ids)
    changed = {table: after[table] for table in after if after[table] != before[table]}
    assert changed == {}, f"seed {seed}"
    # And the worker goes on serving A
    job = rig.send("after-crafted")
    wait_for(lambda: rig.job(job.message_id).status == "succeeded", what="A's job after")
    assert worker.proc.poll() is None
