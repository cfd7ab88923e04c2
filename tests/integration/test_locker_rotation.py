"""reencrypt_locker through a real worker: after a rotation only the new key is needed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors import reencrypt_locker
from db.models import Job, LockerEntry
from services import locker
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def test_rotation_then_reencrypt_leaves_only_the_new_key_needed(
    start_worker: Callable[..., WorkerProcess],
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
    worker = start_worker(TASKYARD_SECRET_KEYS=f"{new},{old}")
    message = reencrypt_locker.send()

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
