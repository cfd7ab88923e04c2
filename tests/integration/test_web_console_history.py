"""The console's attempts, schedule runs, serving hosts and time ranges, on the run's PostgreSQL.

Each with an operator limited to another tenant, who must see none of it.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from db.models import Job, ScheduleRun
from services.dead_letters import record_dead_letter
from services.jobs import record_failure
from services.records import JobRecord
from services.schedules import LAST_RUNS, create_schedule
from services.tenants import create_tenant
from services.workers import beat
from settings import Settings
from tests.integration.web_support import add_job, add_operator, sign_in, unconsumed_tenant_queue
from web.app import create_app

pytestmark = pytest.mark.integration

SCRIPT = "<script>alert('x')</script>"
SECRET = "pw-attempt-secret"
# A fixed moment, so that the time ranges below select known records.
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class World:
    a: int
    b: int
    failed_job: str
    schedule_a: int
    schedule_b: int
    run_jobs: tuple[str, str]
    old_job: str
    new_job: str
    old_letter: str
    new_letter: str
    host: str


def _dated_job(session: object, tenant_id: int, created_at: dt.datetime) -> str:
    message_id = add_job(session, tenant_id)  # type: ignore[arg-type]
    job = session.get(Job, message_id)  # type: ignore[attr-defined]
    job.created_at = created_at
    return message_id


def _letter(session: object, tenant_id: int, created_at: dt.datetime) -> str:
    message_id = str(uuid.uuid4())
    record_dead_letter(
        session,  # type: ignore[arg-type]
        message_id=message_id, queue="q", reason="range_test", error="E", traceback="tb",
        attempts=1, actor="range_actor", tenant_id=tenant_id, message=None,
    )  # fmt: skip
    from db.models import DeadLetter

    session.get(DeadLetter, message_id).created_at = created_at  # type: ignore[attr-defined]
    return message_id


@pytest.fixture(scope="module")
def world(engine: Engine, settings: Settings) -> World:
    now = dt.datetime.now(dt.UTC)
    actors = {"test_pipe_count": None}
    host = f"host-{uuid.uuid4().hex[:8]}"
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        a = create_tenant(s, f"hist-a-{uuid.uuid4().hex[:8]}")
        b = create_tenant(s, f"hist-b-{uuid.uuid4().hex[:8]}")
        # A job of A that failed twice, its errors hostile and holding a credential.
        failed = JobRecord(str(uuid.uuid4()), a.id, "test_pipe_count", "q", {}, None)
        for attempt in (1, 2):
            failed.attempts = attempt
            failed.started_at = now
            error = f"Boom: {SCRIPT} #{attempt} http://ops:{SECRET}@db.example/x"
            trace = f'Traceback:\n  File "feed.py", line {attempt}, in fetch\n{error}'
            record_failure(s, failed, error=error, dead=attempt == 2, traceback=trace)
        sa = create_schedule(
            s, a.id, actor="test_pipe_count", args={}, cron="0 * * * *", actors=actors, now=now
        )
        sb = create_schedule(
            s, b.id, actor="test_pipe_count", args={}, cron="0 * * * *", actors=actors, now=now
        )
        run_jobs = []
        for hours, status in ((2, "succeeded"), (1, "dead")):
            slot = T0 - dt.timedelta(hours=hours)
            s.add(ScheduleRun(tenant_id=a.id, schedule_id=sa.id, slot_at=slot))
            job_id = add_job(s, a.id, status=status)
            job = s.get(Job, job_id)
            assert job is not None
            job.schedule_id, job.slot_at = sa.id, slot
            run_jobs.append(job_id)
        # Claims whose job has no record (past retention): the newest, and older ones
        # than the list shows.
        for hours in (0, 10, 11, 12, 13, 14, 15):
            slot = T0 - dt.timedelta(hours=hours)
            s.add(ScheduleRun(tenant_id=a.id, schedule_id=sa.id, slot_at=slot))
        beat(
            s, worker_id=f"{host}:1:x", host=host, pid=1,
            queues=[settings.tenant_queue(a.id)], threads=1, in_progress=0, running=[],
            started_at=now, now=now,
        )  # fmt: skip
        world = World(
            a=a.id,
            b=b.id,
            failed_job=failed.message_id,
            schedule_a=sa.id,
            schedule_b=sb.id,
            run_jobs=(run_jobs[0], run_jobs[1]),
            old_job=_dated_job(s, a.id, T0 - dt.timedelta(days=2)),
            new_job=_dated_job(s, a.id, T0),
            old_letter=_letter(s, a.id, T0 - dt.timedelta(days=2)),
            new_letter=_letter(s, a.id, T0),
            host=host,
        )
    return world


@pytest.fixture(scope="module")
def app(settings: Settings, engine: Engine) -> Flask:
    return create_app(settings, engine=engine)


@pytest.fixture(scope="module")
def clients(app: Flask, engine: Engine, world: World) -> Iterator[dict[str, FlaskClient]]:
    made = {}
    for name, role, scope in (("admin", "admin", None), ("other", "viewer", [world.b])):
        made[name] = app.test_client()
        sign_in(made[name], add_operator(engine, role, scope))
    yield made


def test_a_jobs_page_lists_every_attempt_escaped_and_redacted(
    clients: dict[str, FlaskClient], world: World
) -> None:
    page = clients["admin"].get(f"/jobs/{world.failed_job}").get_data(as_text=True)

    rows = re.findall(r"<tr>\s*<td>(\d+)</td>\s*<td><span class=\"status-(\w+)\"", page)
    assert rows == [("1", "retrying"), ("2", "dead")]
    assert "#1" in page and "#2" in page and "<code>Boom</code>" in page
    # each with the end of its traceback, escaped and redacted as the rest
    assert page.count("Traceback (its end)") == 2 and "line 2, in fetch" in page
    assert SCRIPT not in page and "&lt;script&gt;" in page
    assert SECRET not in page
    assert clients["other"].get(f"/jobs/{world.failed_job}").status_code == 404


def test_schedules_show_their_last_runs_with_their_jobs_outcome(
    clients: dict[str, FlaskClient], world: World
) -> None:
    listing = clients["admin"].get(f"/schedules?tenant={world.a}").get_data(as_text=True)
    row = listing.split(f'id="schedule-{world.schedule_a}"', 1)[1].split("</tr>", 1)[0]
    # The newest slots first: the claim with no record, then dead, then succeeded, ...
    found = re.findall(r">(no record|dead|succeeded)<", row)
    assert found == ["no record", "dead", "succeeded"] + ["no record"] * (LAST_RUNS - 3)
    assert world.run_jobs[1] in row

    page = clients["admin"].get(f"/schedules/{world.schedule_a}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert text.index(world.run_jobs[1]) < text.index(world.run_jobs[0])
    assert "no job record" in text

    other = clients["other"]
    assert other.get(f"/schedules/{world.schedule_a}").status_code == 404
    assert other.get(f"/schedules/{world.schedule_b}").status_code == 200
    assert world.run_jobs[0] not in other.get("/schedules").get_data(as_text=True)
    assert clients["admin"].get(f"/schedules/{2**63}").status_code == 404
    assert clients["admin"].get("/schedules/987654321").status_code == 404


def _tenant_row(client: FlaskClient, tenant_id: int) -> str:
    """The tenant's row of the tenants page: the page that starts with it (other tests'
    tenants share the database, and the page shows 50)."""
    page = client.get(f"/tenants?after={tenant_id - 1}&limit=1").get_data(as_text=True)
    return page.split(f'id="tenant-{tenant_id}"', 1)[1].split("</tr>", 1)[0]


def test_tenants_show_the_hosts_of_the_live_workers_serving_them(
    clients: dict[str, FlaskClient], world: World
) -> None:
    row_a = _tenant_row(clients["admin"], world.a)
    row_b = _tenant_row(clients["admin"], world.b)

    assert world.host in row_a
    assert world.host not in row_b
    other = clients["other"].get(f"/tenants?after={world.a - 1}").get_data(as_text=True)
    assert f'id="tenant-{world.a}"' not in other


def test_jobs_and_dead_letters_take_an_until_and_page_within_the_range(
    clients: dict[str, FlaskClient], world: World
) -> None:
    admin = clients["admin"]
    since = (T0 - dt.timedelta(days=3)).isoformat()
    until = (T0 - dt.timedelta(days=1)).isoformat()
    jobs = admin.get("/jobs", query_string={"tenant": world.a, "since": since, "until": until})
    text = jobs.get_data(as_text=True)
    assert world.old_job in text and world.new_job not in text
    one = admin.get(
        "/jobs", query_string={"tenant": world.a, "until": T0.isoformat(), "limit": 1}
    ).get_data(as_text=True)
    assert world.old_job in one and "until=" in one.split("Next page", 1)[0].rsplit("href", 1)[-1]

    letters = admin.get("/dead-letters", query_string={"tenant": world.a, "until": until})
    assert world.old_letter in letters.get_data(as_text=True)
    assert world.new_letter not in letters.get_data(as_text=True)
    confirm = admin.get(
        "/dead-letters/confirm",
        query_string={"action": "purge", "tenant": world.a, "reason": "range_test", "until": until},
    ).get_data(as_text=True)
    assert '<strong id="confirm-count">1</strong>' in confirm and "dead before" in confirm

    for query in ({"until": "soon"}, {"since": until, "until": since}):
        for path in ("/jobs", "/dead-letters"):
            answer = admin.get(path, query_string=query)
            assert answer.status_code == 400, (path, query)
            assert "until" in answer.get_data(as_text=True)
    assert clients["other"].get(f"/jobs?tenant={world.a}&until={until}").status_code == 404


def test_tenants_and_the_overview_show_each_queue_in_rabbitmq_now(
    clients: dict[str, FlaskClient], engine: Engine, settings: Settings
) -> None:
    # Given a tenant whose queue holds three messages, none consumed
    with unconsumed_tenant_queue(engine, settings, 3) as tenant_id:
        name = settings.tenant_queue(tenant_id)
        # When an admin opens the tenants page, its queue column (read after the page), and
        # the overview's queues
        admin = clients["admin"]
        row = _tenant_row(admin, tenant_id)
        column_url = f"/tenants/figures?limit=1&amp;after={tenant_id - 1}"
        column = admin.get(column_url.replace("&amp;", "&"), headers={"HX-Request": "true"})
        queues = admin.get("/overview/queues", headers={"HX-Request": "true"})
        listed = queues.get_data(as_text=True)

        # Then the page asks for its column, whose cell for the tenant shows its ready
        # messages (unacked: unknown without the management API), as does the overview
        assert f'id="tenant-queue-{tenant_id}"' in row
        assert f'hx-get="{column_url}" hx-trigger="intersect once"' in admin.get(
            f"/tenants?after={tenant_id - 1}&limit=1"
        ).get_data(as_text=True)
        cell = f'<td class="queue" id="tenant-queue-{tenant_id}" hx-swap-oob="true">3 / -</td>'
        assert cell in column.get_data(as_text=True)
        # (without JavaScript, the column is a page of its own)
        page = admin.get(column_url.replace("&amp;", "&")).get_data(as_text=True)
        assert "Sign out" in page and '<td class="queue">3 / -' in page
        assert f'id="queue-{tenant_id}"' in listed and name in listed
        assert 'id="overview-queues"' in clients["admin"].get("/").get_data(as_text=True)
        # And an operator limited to another tenant sees nothing of it
        other = clients["other"].get("/overview/queues").get_data(as_text=True)
        assert f'id="queue-{tenant_id}"' not in other and name not in other
        other_column = clients["other"].get(
            f"/tenants/figures?after={tenant_id - 1}&limit=1", headers={"HX-Request": "true"}
        )
        assert f'id="tenant-queue-{tenant_id}"' not in other_column.get_data(as_text=True)
