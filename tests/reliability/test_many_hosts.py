"""Workers on two hosts share a tenant; when its only hosts die, its jobs wait and `health` says so.

A database of this test's own (so that `health` sees only its tenants), the
shared RabbitMQ with queues of its own prefix.  Host names are given with
`TASKYARD_HOSTNAME`, as two machines would report their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from db.migrate import upgrade_to_head
from services.tenants import create_tenant
from settings import Settings
from tests.reliability.kill_support import Rig
from tests.support import delete_queues, wait_for

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT = {"TASKYARD_HEARTBEAT_SECONDS": "0.5"}


@pytest.fixture
def own_database(settings: Settings) -> Iterator[str]:
    """A migrated database for this test alone; dropped after."""
    url = make_url(settings.database_url).set(database=f"taskyard_hosts_{uuid.uuid4().hex[:8]}")
    database_url = url.render_as_string(hide_password=False)
    upgrade_to_head(database_url)
    yield database_url
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    admin.dispose()


def taskyard(rig: Rig, *args: str) -> Any:
    """`taskyard ARGS --json` on the rig's database and queue prefix; its JSON output."""
    env = {
        **os.environ,
        "DATABASE_URL": rig.database_url,
        "TASKYARD_QUEUE_PREFIX": rig.prefix,
        **HEARTBEAT,
    }
    result = subprocess.run(
        [sys.executable, "-m", "cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def workers_check(rig: Rig) -> dict[str, Any]:
    checks = {check["check"]: check for check in taskyard(rig, "health")}
    check: dict[str, Any] = checks["workers"]
    return check


def test_two_hosts_share_a_tenant_and_its_lost_hosts_show_in_health(
    own_database: str, settings: Settings, tmp_path: Path
) -> None:
    rig = Rig(own_database, settings, tmp_path)
    with Session(rig.engine) as session, session.begin():
        other = create_tenant(session, f"other-{uuid.uuid4().hex[:8]}").id
    other_queue = rig.routing.queue_for(other)
    try:
        # Given workers on two hosts, both pinned to the tenant
        hosts = [
            rig.start_worker(host, extra_env={"TASKYARD_HOSTNAME": host, **HEARTBEAT})
            for host in ("host-a", "host-b")
        ]
        # Then `taskyard workers` lists both hosts, each consuming the tenant's queue
        listed = taskyard(rig, "workers")
        assert sorted(w["host"] for w in listed) == ["host-a", "host-b"]
        assert all(rig.queue in w["queues"] for w in listed)
        for n in range(20):
            rig.send(f"shared{n}")
        wait_for(rig.all_succeeded, what="the jobs both hosts share")

        # When both hosts die (no goodbye: their rows go stale), and a worker of
        # another tenant stays up
        for worker in hosts:
            worker.kill()
        rig.start_worker(
            "other",
            extra_env={"TASKYARD_TENANTS": str(other), "TASKYARD_HOSTNAME": "host-c"} | HEARTBEAT,
        )
        waiting = [rig.send(f"waiting{n}").message_id for n in range(10)]

        # Then health fails its workers check, naming the tenant and that nothing is lost
        def failing() -> dict[str, Any] | None:
            check = workers_check(rig)
            return None if check["ok"] else check

        check = wait_for(failing, what="health to see the tenant unserved")
        assert f"({rig.tenant_id})" in check["detail"], check
        assert "nothing is lost" in check["detail"]
        # And its jobs wait, none run
        assert rig.statuses().get("succeeded", 0) == 20

        # When a host serving it starts again, Then every waiting job runs, once
        rig.start_worker("host-a-again", extra_env={"TASKYARD_HOSTNAME": "host-a", **HEARTBEAT})
        wait_for(rig.all_succeeded, what="the jobs that waited")
        rig.assert_exactly_once()
        assert set(waiting) <= set(rig.sent)
        # And health's workers check passes again
        wait_for(lambda: workers_check(rig)["ok"], what="health to pass again")
    finally:
        rig.close()
        delete_queues(rig.broker_url, [other_queue, f"{other_queue}.DQ", f"{other_queue}.XQ"])
