"""`--error` finds jobs and dead letters by their error; what the CLI shows of them is redacted."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.dead_letters import record_dead_letter
from tests.integration.cli_harness import as_json, taskyard
from tests.integration.web_support import add_job

pytestmark = pytest.mark.integration


def test_jobs_and_dead_letters_are_found_by_their_error_and_shown_without_secrets(
    sessions: sessionmaker[Session], make_tenant: Callable[[str], int]
) -> None:
    tenant_id = make_tenant("cli-error")
    marker = f"refused-{uuid.uuid4().hex[:8]}"
    error = f"FetchFailed: GET https://ops:hunter2@feeds.example/x {marker}"
    args = {"tenant_id": tenant_id, "source_url": "https://ops:hunter2@feeds.example/x"}
    with sessions.begin() as s:
        job = add_job(s, tenant_id, status="dead", args=args, error=error)
        add_job(s, tenant_id, status="dead", error="FetchFailed: something else")
        record_dead_letter(
            s, message_id=job, queue=f"q.tenant.{tenant_id}", reason="r", error=error,
            traceback=None,
            attempts=1, actor="test_pipe_count", tenant_id=tenant_id,
            message={"kwargs": args, "options": {"token": "t0k3n"}},
        )  # fmt: skip
    tenant = str(tenant_id)
    jobs = as_json(
        taskyard("jobs", "list", "--tenant", tenant, "--error", marker.upper(), "--json")
    )
    letters = as_json(
        taskyard("dead-letters", "list", "--tenant", tenant, "--error", marker, "--json")
    )
    shown = as_json(taskyard("jobs", "show", job, "--json"))
    assert [j["message_id"] for j in jobs] == [job]
    assert [d["message_id"] for d in letters] == [job]
    for printed in (jobs, letters, shown):
        assert "hunter2" not in str(printed) and "t0k3n" not in str(printed)
    assert shown["args"]["source_url"] == "https://feeds.example/x"
    assert letters[0]["message"]["options"]["token"] == "***"
