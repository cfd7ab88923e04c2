"""Scenario 5: poison bodies published straight to a tenant queue are dead-lettered; work goes on.

Published with pika, around Taskyard's producer: a body that is not JSON, an
unknown actor, arguments the actor's schema refuses, a pickle (whose loading
would create a file) and a 10 MB body.  RabbitMQ 3.10 takes messages up to
`max_message_size`, 128 MiB by default, so the 10 MB one reaches the worker,
whose own limit is 1 MiB.
"""

from __future__ import annotations

import json
import pickle
import re
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import text

from settings import Settings
from tests.reliability.kill_support import Rig, open_rig
from tests.support import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration]

TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """This scenario's tenant, queues, producer and workers."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


class CreatesFile:
    """Unpickling this opens (so creates) `path` for writing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def message_body(queue: str, actor: str, kwargs: dict[str, Any], message_id: str) -> bytes:
    """A well-formed Dramatiq message body."""
    return json.dumps(
        {
            "queue_name": queue,
            "actor_name": actor,
            "args": [],
            "kwargs": kwargs,
            "options": {},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
    ).encode()


def dead_letter_count(worker: WorkerProcess) -> float:
    """The worker's `taskyard_dead_letters_total`, summed over its labels, from its /metrics."""
    found = wait_for(
        lambda: re.search(r"Serving metrics on (http://\S+/metrics)", worker.log()),
        timeout=10,
        what="the worker's metrics server",
    )
    with urllib.request.urlopen(found.group(1), timeout=10) as response:
        exposition = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("taskyard_dead_letters_total{")
    )


def publish_raw(rig: Rig, bodies: Iterable[bytes]) -> None:
    """Publish bodies straight to the rig's tenant queue; each confirmed by RabbitMQ."""
    connection = pika.BlockingConnection(pika.URLParameters(rig.broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", rig.queue, body, mandatory=True)
    finally:
        connection.close()


def dead_letters(rig: Rig) -> dict[str, list[dict[str, Any]]]:
    """The rig's queue's dead letters, by reason."""
    with rig.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT message_id, reason, error, actor FROM dead_letters WHERE queue = :q"),
            {"q": rig.queue},
        ).mappings()
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(row["reason"], []).append(dict(row))
        return found


def test_poison_messages_are_dead_lettered_with_reasons_and_the_worker_goes_on(
    rig: Rig, tmp_path: Path
) -> None:
    # Given a worker serving the tenant, which has run a job already (its queue exists)
    worker = rig.start_worker("worker")
    before = rig.send("before")
    wait_for(lambda: rig.job(before.message_id).status == "succeeded", what="the first job")
    planted = tmp_path / "unpickled-here"
    unknown_id, invalid_id, large_id = (str(uuid.uuid4()) for _ in range(3))
    bodies = {
        "not JSON": b"\x80\x04 this is not { JSON",
        "unknown actor": message_body(
            rig.queue, "no_such_actor", {"tenant_id": rig.tenant_id}, unknown_id
        ),
        "schema refuses": message_body(
            rig.queue, "ingest_resources", {"tenant_id": rig.tenant_id, "source_url": 7}, invalid_id
        ),
        "pickle": pickle.dumps(CreatesFile(planted)),
        "10 MB": message_body(
            rig.queue,
            "rel_record_effect",
            {"tenant_id": rig.tenant_id, "key": "x" * TEN_MB},
            large_id,
        ),
    }
    assert len(bodies["10 MB"]) > TEN_MB

    # When they are published straight to its queue (each confirmed by RabbitMQ)
    publish_raw(rig, bodies.values())

    # Then each is dead-lettered with its reason
    def all_kept() -> dict[str, list[dict[str, Any]]] | None:
        found = dead_letters(rig)
        return found if sum(map(len, found.values())) >= len(bodies) else None

    found = wait_for(all_kept, timeout=30, what="five dead letters")
    reasons = {reason: len(rows) for reason, rows in found.items()}
    print("dead letters by reason:", reasons)
    assert reasons == {"undecodable": 2, "unknown_actor": 1, "invalid_arguments": 1, "too_large": 1}
    # A refused body is kept under a new id; its error names the id it claimed
    assert [unknown_id in row["error"] for row in found["unknown_actor"]] == [True]
    assert [row["message_id"] for row in found["invalid_arguments"]] == [invalid_id]
    assert "source_url" in found["invalid_arguments"][0]["error"]
    assert (
        str(TEN_MB) in found["too_large"][0]["error"]
        or "over the limit" in (found["too_large"][0]["error"])
    )
    # And the pickle was never loaded
    assert not planted.exists()

    # And the worker goes on: it is alive, and a job sent afterwards succeeds
    after = rig.send("after")
    wait_for(lambda: rig.job(after.message_id).status == "succeeded", what="the job after")
    assert worker.proc.poll() is None
    # And the dead-letter counter counts all five: two nacked, three refused unread
    assert dead_letter_count(worker) == len(bodies)
    # Jobs with a record: the two ordinary ones succeeded, the refused arguments dead
    assert rig.statuses() == {"succeeded": 2, "dead": 1}
    assert rig.job(invalid_id).status == "dead"
    assert set(rig.effects()) == {before.message_id, after.message_id}


def test_a_refused_body_is_counted_as_a_dead_letter(rig: Rig) -> None:
    # (Regression: Metrics counted dead letters in after_nack only, and a refused body
    # is rejected without Dramatiq's nack; the broker now tells after_refuse_message.)
    # Given a worker serving the tenant, its queue declared by a first job
    worker = rig.start_worker("worker")
    first = rig.send("first")
    wait_for(lambda: rig.job(first.message_id).status == "succeeded", what="the first job")
    # When a body that is not JSON is published to its queue and kept as a dead letter
    publish_raw(rig, [b"not JSON"])
    wait_for(lambda: dead_letters(rig).get("undecodable"), what="the dead letter")
    # Then the dead-letter counter counts it
    assert dead_letter_count(worker) == 1
