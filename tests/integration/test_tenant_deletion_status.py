"""A tenant being deleted: its messages do not run, workers do not serve it, it stays deleting."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from actors import notify_webhook
from db.models import DeadLetter, Job
from services import tenant_deletion
from services.errors import ValidationFailed
from services.tenants import served_tenant_ids, set_tenant_status
from tests.support import WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def job_in(sessions: sessionmaker[Session], message_id: str, status: str) -> Job | None:
    with sessions() as session:
        job = session.get(Job, message_id)
        return job if job is not None and job.status == status else None


def test_a_deleting_tenants_message_is_dead_lettered_and_it_cannot_be_enabled(
    worker: WorkerProcess,
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    # Given a tenant a worker serves (a first message ran), then marked deleting
    tenant_id, other = make_tenant("deleting"), make_tenant("active")
    first = notify_webhook.send(tenant_id=tenant_id, event="x.y", payload={})
    wait_for(lambda: job_in(sessions, first.message_id, "succeeded"), what="first message")
    with sessions.begin() as session:
        assert tenant_deletion.mark_deleting(session, tenant_id) is True

    # Then workers stop serving it, and its status cannot be changed back
    with sessions() as session:
        served = served_tenant_ids(session)
        assert tenant_id not in served and other in served
        with pytest.raises(ValidationFailed, match="being deleted"):
            set_tenant_status(session, tenant_id, "active")

    # When a message for it still arrives (the worker declared its queue earlier)
    message = notify_webhook.send(tenant_id=tenant_id, event="x.y", payload={})

    # Then it is dead-lettered like a disabled tenant's, not run
    job = wait_for(lambda: job_in(sessions, message.message_id, "dead"), what="dead letter")
    assert job.result is None
    with sessions() as session:
        letter = session.get(DeadLetter, message.message_id)
        assert letter is not None and letter.reason == "tenant_disabled"
