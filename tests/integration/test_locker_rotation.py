"""reencrypt_locker through a real worker: after a rotation only the new key is needed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors import reencrypt_locker
from db.models import Job, LockerEntry
from services import locker
from settings import Settings
from tests.support import WorkerProcess, delete_prefix_queues, wait_for
from transport.rabbitmq import publish_now

pytestmark = pytest.mark.integration


@pytest.fixture
def private_worker(
    start_worker: Callable[..., WorkerProcess], settings: Settings, engine: Engine
) -> Iterator[Callable[[str], tuple[WorkerProcess, Settings]]]:
    """Start a worker on a queue prefix of its own, so only it runs what is sent there.

    (Every worker of the run consumes the run's system queue, with the run's key.)
    """
    own = replace(settings, queue_prefix=f"{settings.queue_prefix}lck.")

    def start(secret_keys: str) -> tuple[WorkerProcess, Settings]:
        worker = start_worker(
            TASKYARD_QUEUE_PREFIX=own.queue_prefix, TASKYARD_SECRET_KEYS=secret_keys
        )
        return worker, own

    yield start
    delete_prefix_queues(own, engine)


def test_rotation_then_reencrypt_leaves_only_the_new_key_needed(
    private_worker: Callable[[str], tuple[WorkerProcess, Settings]],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given secrets of two tenants stored under the old key
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    tenants = [make_tenant("locker"), make_tenant("locker")]
    with sessions.begin() as session:
        for tenant_id in tenants:
            locker.set_secret(
                session, tenant_id, "github.token", f"t-{tenant_id}", secret_keys=[old]
            )
    with sessions() as session:
        before = {
            row.id: row.ciphertext
            for row in session.execute(
                select(LockerEntry.id, LockerEntry.ciphertext).where(
                    LockerEntry.tenant_id.in_(tenants)
                )
            )
        }

    # When a worker with NEW,OLD runs reencrypt_locker
    worker, own = private_worker(f"{new},{old}")
    message = reencrypt_locker.message_with_options().copy(queue_name=own.system_queue)
    publish_now(brokers.broker, message)

    def finished() -> Job | None:
        with sessions() as session:
            job = session.get(Job, message.message_id)
            return job if job is not None and job.status == "succeeded" else None

    job = wait_for(finished, what="reencrypt_locker")
    worker.stop()

    # Then every entry changed and reads with the new key alone, not the old one
    # (other tests' entries, under their own keys, may be counted unreadable)
    assert job.result is not None and job.result["reencrypted"] >= len(tenants)
    assert not any(
        name.split(":")[0] in map(str, tenants) for name in job.result["unreadable_entries"]
    )
    with sessions() as session:
        after = {
            row.id: row.ciphertext
            for row in session.execute(
                select(LockerEntry.id, LockerEntry.ciphertext).where(
                    LockerEntry.tenant_id.in_(tenants)
                )
            )
        }
        assert set(after) == set(before)
        assert all(after[i] != before[i] for i in before)
        for tenant_id in tenants:
            got = locker.get_secret(session, tenant_id, "github.token", secret_keys=[new])
            assert got.reveal() == f"t-{tenant_id}"
            with pytest.raises(locker.SecretUnreadable):
                locker.get_secret(session, tenant_id, "github.token", secret_keys=[old])
    # And the job record holds a count, never a value
    assert "t-" not in str(job.result) and "t-" not in str(job.args)
