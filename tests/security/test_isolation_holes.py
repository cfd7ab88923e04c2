"""One test per isolation hole found by crafted messages: each failed before its fix.

A real worker consumes; the crafted bodies are published with pika straight
to tenant A's queue, as any holder of the broker's credentials could.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from actors import ingest_resources
from actors.base import InvalidArguments, TaskyardActor
from settings import Settings
from tests.reliability.kill_actors import record_effect
from tests.reliability.kill_support import Rig
from tests.security.support import (
    TenantB,
    body,
    letters_of,
    one_letter,
    publish,
    start_worker,
    tenant_rows,
)
from tests.support import wait_for

pytestmark = [pytest.mark.integration]


def effects(rig: Rig, keys: list[str]) -> list[str]:
    """Which of `keys` have a `rel_effects` row (each written by a run of record_effect)."""
    with rig.engine.connect() as conn:
        found = conn.scalars(text("SELECT key FROM rel_effects WHERE key = ANY(:k)"), {"k": keys})
        return sorted(found)


def test_system_actors_published_to_a_tenant_queue_are_refused_before_they_run(
    rig: Rig, tenant_b: TenantB
) -> None:
    # Given a worker serving tenant A, and tenant B with rows everywhere
    start_worker(rig, "worker", [rig.tenant_id])
    before = tenant_rows(rig, tenant_b.id, tenant_b.job_ids)
    # When every system actor is published to A's queue (delete_tenant naming B)
    crafted = {
        "delete_tenant": {"tenant_id": tenant_b.id},
        "reencrypt_locker": {},
        "purge_job_records": {},
        "scheduler_tick": {},
    }
    ids = publish(
        rig.broker_url, rig.queue, [body(rig.queue, actor, kw) for actor, kw in crafted.items()]
    )
    # Then each is dead-lettered as on the wrong queue, credited to no tenant
    for message_id, actor in zip(ids, crafted, strict=True):
        letter = one_letter(rig, message_id)
        assert (letter["reason"], letter["tenant_id"], letter["queue"]) == (
            "wrong_queue",
            None,
            rig.queue,
        )
        assert f"{actor} runs only from queue" in letter["error"]
        # And none became a job
        assert letter["message_id"] != message_id
    # And B is still there, every row of it unchanged
    assert tenant_rows(rig, tenant_b.id, tenant_b.job_ids) == before


def test_a_reused_message_id_cannot_take_over_another_tenants_job(
    rig: Rig, tenant_b: TenantB
) -> None:
    # Given a worker serving A and B, and B's jobs: queued (not yet delivered), succeeded, dead
    start_worker(rig, "worker", [rig.tenant_id, tenant_b.id])
    before = tenant_rows(rig, tenant_b.id, tenant_b.job_ids)
    # When A's queue gets well-formed jobs of A's that carry B's message ids
    crafted = [
        body(
            rig.queue,
            record_effect.actor_name,
            {"tenant_id": rig.tenant_id, "key": f"{rig.prefix}crafted-{n}"},
            message_id=message_id,
        )
        for n, message_id in enumerate(tenant_b.job_ids)
    ]
    publish(rig.broker_url, rig.queue, crafted)
    # Then each is refused as taking another job's id, kept as A's dead letter under a new id
    for message_id in tenant_b.job_ids:
        letters = wait_for(
            lambda m=message_id: [
                x for x in letters_of(rig, m) if x["reason"] == "message_id_taken"
            ],
            what=f"the refusal of {message_id}",
        )
        assert [(x["tenant_id"], x["message_id"] != message_id) for x in letters] == [
            (rig.tenant_id, True)
        ]
    # And none of them ran, and B's records and dead letter are unchanged
    assert effects(rig, [f"{rig.prefix}crafted-{n}" for n in range(3)]) == []
    assert tenant_rows(rig, tenant_b.id, tenant_b.job_ids) == before
    # When B's real queued message arrives on B's queue
    real = body(
        rig.routing.queue_for(tenant_b.id),
        record_effect.actor_name,
        {"tenant_id": tenant_b.id, "key": f"b{tenant_b.id}-queued"},
        message_id=tenant_b.queued_job,
    )
    publish(rig.broker_url, real["queue_name"], [real])
    # Then it runs, once, as B's job (it was not skipped as "already finished")
    wait_for(lambda: rig.job(tenant_b.queued_job).status == "succeeded", what="B's real job")
    assert effects(rig, [f"b{tenant_b.id}-queued"]) == [f"b{tenant_b.id}-queued"]


def test_refused_bodies_are_credited_to_no_tenant(rig: Rig, tenant_b: TenantB) -> None:
    # Given a worker serving A
    start_worker(rig, "worker", [rig.tenant_id])
    before = tenant_rows(rig, tenant_b.id, tenant_b.job_ids)
    b_queue = rig.routing.queue_for(tenant_b.id)
    # When A's queue gets a body that claims B's queue, an unknown actor naming B,
    # and a job of B's (the tenant mismatch)
    crafted = [
        body(b_queue, record_effect.actor_name, {"tenant_id": tenant_b.id, "key": "claim"}),
        body(rig.queue, "no_such_actor", {"tenant_id": tenant_b.id}),
        body(rig.queue, record_effect.actor_name, {"tenant_id": tenant_b.id, "key": "mismatch"}),
    ]
    ids = publish(rig.broker_url, rig.queue, crafted)
    # Then each is a dead letter of no tenant, with its reason
    reasons = [one_letter(rig, message_id) for message_id in ids]
    assert [(x["reason"], x["tenant_id"]) for x in reasons] == [
        ("queue_mismatch", None),
        ("unknown_actor", None),
        ("tenant_mismatch", None),
    ]
    # And B's dead-letter list (and every other row of B's) is unchanged
    assert tenant_rows(rig, tenant_b.id, tenant_b.job_ids) == before


BAD_ARGUMENTS: list[tuple[TaskyardActor, list[Any], dict[str, Any]]] = [
    # (actor, positional args, keyword args): each one send() refuses
    (record_effect, ["A"], {"key": "positional"}),
    (record_effect, [], {"tenant_id": "TENANT", "key": "string-tenant"}),
    (record_effect, [], {"tenant_id": True, "key": "bool-tenant"}),
    (record_effect, [], {"tenant_id": "A", "key": "unknown", "surprise": 1}),
    (record_effect, [], {"tenant_id": "A"}),
    (ingest_resources, [], {"tenant_id": "A", "source_url": 5}),
]


def test_the_worker_refuses_exactly_the_arguments_send_refuses(
    rig: Rig, settings: Settings
) -> None:
    # Given a worker serving A
    start_worker(rig, "worker", [rig.tenant_id])
    crafted = []
    for actor, args, kwargs in BAD_ARGUMENTS:
        kwargs = {k: rig.tenant_id if v == "A" else v for k, v in kwargs.items()}
        kwargs = {k: str(rig.tenant_id) if v == "TENANT" else v for k, v in kwargs.items()}
        args = [rig.tenant_id if v == "A" else v for v in args]
        # When the producer is asked to send them, it refuses each
        with pytest.raises(InvalidArguments):
            actor.send_with_options(args=tuple(args), kwargs=kwargs)
        crafted.append(body(rig.queue, actor.actor_name, kwargs, args=args))
    # And when they are published raw to A's queue
    ids = publish(rig.broker_url, rig.queue, crafted)
    # Then the worker refuses each as invalid_arguments, before anything ran
    letters = [one_letter(rig, message_id) for message_id in ids]
    assert [x["reason"] for x in letters] == ["invalid_arguments"] * len(BAD_ARGUMENTS)
    keys = [kwargs.get("key") for _, _, kwargs in BAD_ARGUMENTS]
    assert effects(rig, [key for key in keys if isinstance(key, str)]) == []
