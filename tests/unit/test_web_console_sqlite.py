"""The web console on SQLite, as `taskyard demo --web` serves it: every page reads, actions act."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy.orm import sessionmaker

from db.migrate import upgrade_to_head
from db.models import Job, Schedule, ScheduleRun
from db.session import make_engine
from services.dead_letters import record_dead_letter
from services.schedules import create_schedule
from services.tenants import create_tenant
from services.web_users import add_web_user
from services.workers import beat
from settings import Settings
from web.app import create_app

PASSWORD = "a long enough password"


def _signed_in(client: FlaskClient) -> None:
    page = client.get("/sign-in").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    data = {"name": "ops", "password": PASSWORD, "csrf_token": token}
    assert client.post("/sign-in", data=data).status_code == 302


def test_every_page_reads_and_an_admin_acts_on_a_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'console.db'}"
    upgrade_to_head(url)
    settings = dataclasses.replace(Settings(), database_url=url)
    engine = make_engine(settings)
    now = dt.datetime.now(dt.UTC)
    job_id, letter_id = str(uuid.uuid4()), str(uuid.uuid4())
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        add_web_user(s, "ops", password=PASSWORD, role="admin")
        tenant = create_tenant(s, "acme")
        s.add(Job(message_id=job_id, tenant_id=tenant.id, actor="a", queue="q", args={}))
        record_dead_letter(
            s, message_id=letter_id, queue="q", reason="boom", error="<i>x</i>",
            traceback="tb", attempts=1, actor="a", tenant_id=tenant.id,
        )  # fmt: skip
        schedule = create_schedule(
            s, tenant.id, actor="a", args={}, cron="0 * * * *", actors={"a": None}, now=now
        )
        s.add(ScheduleRun(tenant_id=tenant.id, schedule_id=schedule.id, slot_at=now))
        beat(
            s, worker_id="w1", host="h", pid=1, queues=[settings.tenant_queue(tenant.id)],
            threads=2, in_progress=1,
            running=[{"message_id": job_id, "actor": "a", "queue": "q",
                      "tenant_id": tenant.id, "thread": "t1", "started_at": now.isoformat()}],
            started_at=now, now=now,
        )  # fmt: skip
    client = create_app(settings, engine=engine).test_client()
    _signed_in(client)
    for path in (
        "/", "/overview/panel", "/overview/hours", "/jobs", "/jobs?status=running",
        f"/jobs/{job_id}", "/dead-letters?error=X", f"/dead-letters/{letter_id}",
        "/schedules", f"/schedules/{schedule.id}", "/tenants", "/workers",
        "/jobs?since=2d&until=1m", "/dead-letters?until=1m",
        f"/dead-letters/confirm?action=purge&tenant={tenant.id}",
    ):  # fmt: skip
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.get_data(as_text=True)[-500:])
    assert job_id in client.get("/workers").get_data(as_text=True)
    assert "no record" in client.get("/schedules").get_data(as_text=True)
    assert '<td class="hosts">h</td>' in client.get("/tenants").get_data(as_text=True)
    assert letter_id in client.get("/dead-letters?error=X").get_data(as_text=True)
    token = client.get("/workers").get_data(as_text=True).split('name="csrf_token" value="')[1]
    token = token.split('"', 1)[0]
    assert (
        client.post(f"/schedules/{schedule.id}/pause", data={"csrf_token": token}).status_code
        == 302
    )
    with sessionmaker(engine)() as s:
        assert s.get(Schedule, schedule.id).enabled is False  # type: ignore[union-attr]
    engine.dispose()


def test_a_database_that_does_not_answer_gets_one_line_not_a_traceback() -> None:
    down = dataclasses.replace(
        Settings(), database_url="postgresql+psycopg2://postgres:s3cret@127.0.0.1:1/nothing"
    )
    client = create_app(down).test_client()
    page = client.get("/sign-in").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    answer = client.post("/sign-in", data={"name": "ops", "password": "x", "csrf_token": token})
    text = answer.get_data(as_text=True)
    assert answer.status_code == 500
    assert "cannot reach the database at postgresql+psycopg2://postgres:***@127.0.0.1:1" in text
    assert "Traceback" not in text and "s3cret" not in text
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
