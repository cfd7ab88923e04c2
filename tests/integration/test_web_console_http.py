"""The web console over HTTP (Flask's test client) on the run's PostgreSQL: who may do what.

Every route is tried anonymous, as a viewer, as an admin and as operators limited
to one tenant; every state-changing route with and without its CSRF token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pika.exceptions import AMQPConnectionError
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from cli.summary import read_queues as real_read_queues
from db.models import DeadLetter, Job, Schedule, Tenant
from services.dead_letters import record_dead_letter
from services.schedules import create_schedule
from services.tenants import create_tenant
from services.web_users import remove_web_user
from settings import Settings
from tests.integration.web_support import Login, add_job, add_operator, csrf_of, sign_in
from tests.support import wait_for
from web import queue_readings
from web.app import create_app
from web.console import EXTENSION
from web.queue_readings import QueueReadings
from web.security import SignInLimiter

pytestmark = pytest.mark.integration

SCRIPT = "<script>alert('owned')</script><b>bold</b>"
URL_SECRET = "pw-secret-123"


@dataclass(frozen=True)
class World:
    """Two tenants with a job, a dead letter and a schedule each; a job with hostile args."""

    a: int
    b: int
    a_name: str
    b_name: str
    job_a: str
    job_b: str
    hostile_job: str
    letter_a: str
    letter_b: str
    schedule_a: int
    schedule_b: int


def _letter(session: object, tenant_id: int, reason: str = "tenant_disabled") -> str:
    message_id = str(uuid.uuid4())
    queue = f"q.tenant.{tenant_id}"
    message = {
        "queue_name": queue,
        "actor_name": "test_pipe_count",
        "args": [],
        "kwargs": {"tenant_id": tenant_id, "label": "dl"},
        "options": {},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    record_dead_letter(
        session,  # type: ignore[arg-type]
        message_id=message_id,
        queue=queue,
        reason=reason,
        error=f"TenantDisabled: {SCRIPT}",
        traceback="Traceback (most recent call last):\n  boom",
        attempts=1,
        actor="test_pipe_count",
        tenant_id=tenant_id,
        message=message,
    )
    return message_id


@pytest.fixture(scope="module")
def world(engine: Engine) -> World:
    """The module's records, committed."""
    now = dt.datetime.now(dt.UTC)
    actors = {"test_pipe_count": None}
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        a = create_tenant(s, f"web-a-{uuid.uuid4().hex[:8]}")
        b = create_tenant(s, f"web-b-{uuid.uuid4().hex[:8]}")
        hostile_args = {
            "tenant_id": a.id,
            "label": SCRIPT,
            "source_url": f"http://ops:{URL_SECRET}@feeds.example/x",
        }
        world = World(
            a=a.id,
            b=b.id,
            a_name=a.name,
            b_name=b.name,
            job_a=add_job(s, a.id),
            job_b=add_job(s, b.id),
            hostile_job=add_job(s, a.id, status="dead", args=hostile_args, error=SCRIPT),
            letter_a=_letter(s, a.id),
            letter_b=_letter(s, b.id),
            schedule_a=create_schedule(
                s, a.id, actor="test_pipe_count", args={"label": "s"}, cron="0 3 * * *",
                actors=actors, now=now, timezone="Europe/Paris",
            ).id,
            schedule_b=create_schedule(
                s, b.id, actor="test_pipe_count", args={"label": "s"}, cron="0 3 * * *",
                actors=actors, now=now,
            ).id,
        )  # fmt: skip
    return world


@pytest.fixture(scope="module")
def app(settings: Settings, engine: Engine) -> Flask:
    """The console on the run's database and broker."""
    return create_app(settings, engine=engine)


@pytest.fixture(scope="module")
def logins(engine: Engine, world: World) -> dict[str, Login]:
    """One operator per role and scope."""
    return {
        "viewer": add_operator(engine, "viewer"),
        "admin": add_operator(engine, "admin"),
        "scoped_viewer": add_operator(engine, "viewer", [world.a]),
        "scoped_admin": add_operator(engine, "admin", [world.a]),
    }


@pytest.fixture(scope="module")
def clients(app: Flask, logins: dict[str, Login]) -> Iterator[dict[str, FlaskClient]]:
    """A signed-in client per operator (signing in hashes: once per module); one anonymous."""
    made = {"anonymous": app.test_client()}
    for role, login in logins.items():
        made[role] = app.test_client()
        sign_in(made[role], login)
    yield made


def _gets(w: World) -> dict[str, str]:
    return {
        "overview": "/",
        "panel": "/overview/panel",
        "hours": "/overview/hours",
        "jobs": "/jobs",
        "job": f"/jobs/{w.job_a}",
        "dead_letters": "/dead-letters",
        "letter": f"/dead-letters/{w.letter_a}",
        "confirm": f"/dead-letters/confirm?action=purge&tenant={w.a}",
        "schedules": "/schedules",
        "schedule": f"/schedules/{w.schedule_a}",
        "tenants": "/tenants",
        "workers": "/workers",
        "workers_panel": "/workers/panel",
    }


@pytest.mark.parametrize(
    "who, expected",
    [("anonymous", 302), ("viewer", 200), ("admin", 200), ("scoped_viewer", 200)],
)
def test_every_page_needs_a_signed_in_operator(
    clients: dict[str, FlaskClient], world: World, who: str, expected: int
) -> None:
    for name, path in _gets(world).items():
        answer = clients[who].get(path)
        assert answer.status_code == expected, (name, path, answer.status_code)
        if expected == 302:
            assert answer.headers["Location"].startswith("/sign-in"), name


def _posts(w: World, tenant: int, job: str, letter: str, schedule: int) -> list[str]:
    return [
        f"/jobs/{job}/cancel",
        f"/jobs/{job}/retry",
        f"/dead-letters/{letter}/requeue",
        f"/dead-letters/{letter}/purge",
        f"/schedules/{schedule}/pause",
        f"/schedules/{schedule}/resume",
        f"/schedules/{schedule}/run",
        f"/tenants/{tenant}/disable",
        f"/tenants/{tenant}/enable",
        f"/tenants/{tenant}/delete",
    ]


def test_anonymous_and_viewers_cannot_act(clients: dict[str, FlaskClient], world: World) -> None:
    """Given every state-changing route, when posted anonymous or as a viewer, then refused."""
    posts = [
        *_posts(world, world.a, world.job_a, world.letter_a, world.schedule_a),
        "/dead-letters/act",
    ]
    for path in posts:
        assert clients["anonymous"].post(path).status_code == 401, path
        for viewer in ("viewer", "scoped_viewer"):
            token = csrf_of(clients[viewer])
            data = {"csrf_token": token, "action": "purge", "id": world.letter_a}
            assert clients[viewer].post(path, data=data).status_code == 403, (viewer, path)
    with sessionmaker(engine_of(clients))() as s:
        assert s.get(Schedule, world.schedule_a).enabled  # type: ignore[union-attr]
        assert s.get(DeadLetter, world.letter_a) is not None
        assert s.get(Tenant, world.a).status == "active"  # type: ignore[union-attr]


def engine_of(clients: dict[str, FlaskClient]) -> Engine:
    """The engine of the app the clients talk to."""
    console = clients["admin"].application.extensions["taskyard"]
    bind = console.sessions.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


def test_a_scoped_operator_sees_nothing_of_other_tenants(
    clients: dict[str, FlaskClient], world: World
) -> None:
    """Given an operator limited to tenant A, tenant B is absent from lists and its ids 404."""
    client = clients["scoped_viewer"]
    for path in ("/jobs", "/dead-letters", "/schedules", "/tenants", "/"):
        page = client.get(path).get_data(as_text=True)
        for secret in (world.job_b, world.letter_b, world.b_name, f"schedule-{world.schedule_b}"):
            assert secret not in page, (path, secret)
    jobs_page = client.get("/jobs").get_data(as_text=True)
    assert world.job_a in jobs_page
    # Their tenant filter offers their tenants only.
    assert (
        f'<option value="{world.a}" selected>' in jobs_page
        and f'value="{world.b}"' not in jobs_page
    )
    for path in (
        f"/jobs/{world.job_b}",
        f"/dead-letters/{world.letter_b}",
        f"/jobs?tenant={world.b}",
        f"/dead-letters?tenant={world.b}",
        f"/schedules?tenant={world.b}",
        f"/schedules/{world.schedule_b}",
        f"/jobs?tenant={world.b}&until=1d",
        f"/dead-letters/confirm?action=purge&tenant={world.b}",
    ):
        assert client.get(path).status_code == 404, path
    # An admin limited to A acts on nothing of B's, whatever id it guesses.
    admin = clients["scoped_admin"]
    token = csrf_of(admin)
    for path in _posts(world, world.b, world.job_b, world.letter_b, world.schedule_b):
        assert admin.post(path, data={"csrf_token": token}).status_code == 404, path
    act = {"csrf_token": token, "action": "purge", "tenant": str(world.b)}
    assert admin.post("/dead-letters/act", data=act).status_code == 404
    # A selection of B's letter under A's scope matches nothing of B's.
    act = {"csrf_token": token, "action": "purge", "id": world.letter_b}
    admin.post("/dead-letters/act", data=act)
    with sessionmaker(engine_of(clients))() as s:
        assert s.get(DeadLetter, world.letter_b) is not None
        assert s.get(Tenant, world.b).status == "active"  # type: ignore[union-attr]


def test_state_changes_need_the_session_token_and_this_origin(
    clients: dict[str, FlaskClient], world: World
) -> None:
    admin = clients["admin"]
    path = f"/schedules/{world.schedule_a}/pause"
    assert admin.post(path).status_code == 400
    assert admin.post(path, data={"csrf_token": "forged"}).status_code == 400
    token = csrf_of(admin)
    foreign = {"Origin": "https://evil.example"}
    assert admin.post(path, data={"csrf_token": token}, headers=foreign).status_code == 403
    # Another operator's token is not this session's.
    assert admin.post(path, data={"csrf_token": csrf_of(clients["viewer"])}).status_code == 400
    with sessionmaker(engine_of(clients))() as s:
        assert s.get(Schedule, world.schedule_a).enabled  # type: ignore[union-attr]
    assert admin.post(path, data={"csrf_token": token}).status_code == 302
    with sessionmaker(engine_of(clients))() as s:
        assert not s.get(Schedule, world.schedule_a).enabled  # type: ignore[union-attr]
    page = admin.get("/schedules").get_data(as_text=True)
    assert "paused" in page
    resume = f"/schedules/{world.schedule_a}/resume"
    assert admin.post(resume, data={"csrf_token": token}).status_code == 302
    with sessionmaker(engine_of(clients))() as s:
        assert s.get(Schedule, world.schedule_a).enabled  # type: ignore[union-attr]


def test_a_script_in_a_jobs_arguments_and_error_is_inert_and_secrets_are_redacted(
    clients: dict[str, FlaskClient], world: World
) -> None:
    answer = clients["viewer"].get(f"/jobs/{world.hostile_job}")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert "<script>alert" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(" in page
    assert URL_SECRET not in page and "http://feeds.example/x" in page
    for path in ("/jobs", f"/dead-letters/{world.letter_a}", "/dead-letters"):
        listing = clients["viewer"].get(path).get_data(as_text=True)
        assert "<script>alert" not in listing and URL_SECRET not in listing, path
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Cache-Control"] == "no-store"


def test_an_admin_purges_a_selection_after_a_confirmation_that_counts_it(
    clients: dict[str, FlaskClient], engine: Engine, make_tenant_id: int
) -> None:
    with sessionmaker(engine).begin() as s:
        picked = [_letter(s, make_tenant_id, "bulk") for _ in range(2)]
        kept = _letter(s, make_tenant_id, "bulk")
    admin = clients["admin"]
    query = f"/dead-letters/confirm?action=purge&id={picked[0]}&id={picked[1]}"
    page = admin.get(query).get_data(as_text=True)
    assert 'id="confirm-count">2<' in page
    data = {"csrf_token": csrf_of(admin), "action": "purge", "id": picked}
    assert admin.post("/dead-letters/act", data=data).status_code == 302
    assert "purged 2 dead letter(s)" in admin.get("/dead-letters").get_data(as_text=True)
    with sessionmaker(engine)() as s:
        left = set(s.scalars(select(DeadLetter.message_id).where(DeadLetter.reason == "bulk")))
    assert kept in left and not left & set(picked)


def test_an_admin_requeues_every_letter_matching_a_filter_and_follows_its_progress(
    clients: dict[str, FlaskClient], engine: Engine, make_tenant_id: int
) -> None:
    with sessionmaker(engine).begin() as s:
        letters = [_letter(s, make_tenant_id, "match-me") for _ in range(3)]
    admin = clients["admin"]
    page = admin.get(
        f"/dead-letters/confirm?action=requeue&tenant={make_tenant_id}&reason=match-me"
    ).get_data(as_text=True)
    assert 'id="confirm-count">3<' in page
    data = {
        "csrf_token": csrf_of(admin),
        "action": "requeue",
        "tenant": str(make_tenant_id),
        "reason": "match-me",
    }
    started = admin.post("/dead-letters/act", data=data)
    progress = started.headers["Location"]
    assert started.status_code == 302 and progress.startswith("/dead-letters/requeues/")
    panel = wait_for(
        lambda: (
            "done: requeued 3 of 3"
            in admin.get(progress, headers={"HX-Request": "true"}).get_data(as_text=True)
        ),
        what="the requeue to finish",
    )
    assert panel
    # Another operator's requeue is not theirs to watch.
    assert clients["viewer"].get(progress).status_code == 404
    with sessionmaker(engine)() as s:
        requeued = s.scalars(select(DeadLetter).where(DeadLetter.message_id.in_(letters))).all()
    assert len(requeued) == 3 and all(d.requeued_at is not None for d in requeued)


@pytest.fixture
def make_tenant_id(make_tenant: Callable[[str], int]) -> int:
    """A fresh tenant of this test's own."""
    return make_tenant("web")


def test_an_admin_cancels_a_queued_job_and_deletes_a_tenant_only_by_its_typed_name(
    clients: dict[str, FlaskClient], engine: Engine, make_tenant_id: int
) -> None:
    with sessionmaker(engine).begin() as s:
        job = add_job(s, make_tenant_id)
        name = s.get(Tenant, make_tenant_id).name  # type: ignore[union-attr]
    admin = clients["admin"]
    token = csrf_of(admin)
    admin.post(f"/jobs/{job}/cancel", data={"csrf_token": token})
    with sessionmaker(engine)() as s:
        assert s.get(Job, job).status == "cancelled"  # type: ignore[union-attr]
    delete = f"/tenants/{make_tenant_id}/delete"
    assert name in admin.get(delete).get_data(as_text=True)
    wrong = admin.post(delete, data={"csrf_token": token, "confirm_name": name + "x"})
    assert wrong.status_code == 400
    assert admin.post(delete, data={"csrf_token": token, "confirm_name": name}).status_code == 302
    with sessionmaker(engine)() as s:
        sent = s.scalars(
            select(Job).where(
                Job.actor == "delete_tenant", Job.args["tenant_id"].as_integer() == make_tenant_id
            )
        ).all()
    assert len(sent) == 1


@pytest.mark.parametrize(
    "path, words",
    [
        ("/jobs?tenant=abc", "is not a tenant id"),
        ("/jobs?tenant=0", "is not a tenant id"),
        ("/jobs?status=exploded", "is not one of"),
        ("/jobs?since=yesterday", "neither an age"),
        ("/jobs?after=not-a-cursor", "is not a cursor of jobs"),
        ("/jobs?limit=0", "from 1 to"),
        ("/dead-letters?since=%00", "neither an age"),
        ("/jobs?status=running&error=x", "error does not apply to status running"),
        ("/jobs?actor=" + "a" * 201, "longer than 200 characters"),
    ],
)
def test_bad_filters_get_one_clear_error(
    clients: dict[str, FlaskClient], path: str, words: str
) -> None:
    answer = clients["viewer"].get(path)
    assert answer.status_code == 400
    assert words in answer.get_data(as_text=True)


def test_jobs_and_dead_letters_are_found_by_their_error(
    clients: dict[str, FlaskClient], world: World
) -> None:
    found = (
        clients["viewer"].get(f"/jobs?tenant={world.a}&error=ALERT('OWNED").get_data(as_text=True)
    )
    assert world.hostile_job in found and world.job_a not in found
    letters = (
        clients["viewer"].get("/dead-letters?error=tenantdisabled: <script").get_data(as_text=True)
    )
    assert world.letter_a in letters and world.letter_b in letters


def test_a_jobs_page_offers_only_what_its_status_and_the_role_allow(
    clients: dict[str, FlaskClient], world: World
) -> None:
    dead = clients["admin"].get(f"/jobs/{world.hostile_job}").get_data(as_text=True)
    queued = clients["admin"].get(f"/jobs/{world.job_a}").get_data(as_text=True)
    assert "Retry now" in dead and ">Cancel<" not in dead
    assert ">Cancel<" in queued and "Retry now" not in queued
    read_only = clients["viewer"].get(f"/jobs/{world.job_a}").get_data(as_text=True)
    assert ">Cancel<" not in read_only and "Retry now" not in read_only


def test_the_overview_and_tenants_count_from_the_job_records(
    clients: dict[str, FlaskClient], world: World
) -> None:
    overview = clients["scoped_viewer"].get("/").get_data(as_text=True)
    assert 'hx-get="/overview/hours" hx-trigger="intersect once"' in overview
    hours = clients["scoped_viewer"].get("/overview/hours", headers={"HX-Request": "true"})
    assert "Finished per hour" in hours.get_data(as_text=True)
    # Without JavaScript the chart is a page of its own, in the console's frame.
    assert "Sign out" in clients["scoped_viewer"].get("/overview/hours").get_data(as_text=True)
    # (The page of tenants that starts with A: other tests' tenants share the database.)
    # Its counts load after it, each cell swapped in by id.
    tenants = clients["admin"].get(f"/tenants?after={world.a - 1}").get_data(as_text=True)
    assert f'id="tenant-waiting-{world.a}"' in tenants and "status=queued" not in tenants
    figures = (
        clients["admin"]
        .get(f"/tenants/figures?after={world.a - 1}", headers={"HX-Request": "true"})
        .get_data(as_text=True)
    )
    waiting = figures.split(f'id="tenant-waiting-{world.a}"', 1)[1].split("</td>", 1)[0]
    assert f'/jobs?tenant={world.a}&amp;status=queued">1</a>' in waiting
    assert f'id="tenant-finished-{world.a}" hx-swap-oob="true">' in figures


def test_the_tenants_page_shows_a_page_at_a_time_and_reads_only_its_queues(
    app: Flask,
    clients: dict[str, FlaskClient],
    engine: Engine,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given three more tenants, made after A and B
    with sessionmaker(engine).begin() as s:
        made = [create_tenant(s, f"web-page-{i}-{uuid.uuid4().hex[:8]}").id for i in range(3)]
    read: list[list[int]] = []

    def read_queues(settings: Settings, tenant_ids: list[int]) -> Any:
        read.append(list(tenant_ids))
        return real_read_queues(settings, tenant_ids)

    # Every request reads afresh here (the console keeps a reading a few seconds).
    console = app.extensions[EXTENSION]
    monkeypatch.setattr(console, "queues", QueueReadings(console.settings, read=read_queues))
    monkeypatch.setattr(queue_readings, "MAX_AGE_SECONDS", 0.0)
    admin = clients["admin"]
    # When an admin asks for two tenants from the first of them
    first = admin.get(f"/tenants?after={made[0] - 1}&limit=2").get_data(as_text=True)
    # Then the page holds those two and offers the next page, reading no queue itself
    assert f'id="tenant-{made[0]}"' in first and f'id="tenant-{made[1]}"' in first
    assert f'id="tenant-{made[2]}"' not in first
    assert f'href="/tenants?limit=2&amp;after={made[1]}">Next page</a>' in first
    assert read == []
    # And its queue column, loaded after it, reads only their queues
    column = admin.get(f"/tenants/figures?limit=2&after={made[0] - 1}", headers={"HX-Request": "1"})
    assert column.status_code == 200
    assert read == [[made[0], made[1]]]
    read.clear()
    # And the next page goes on from there, with the way back to the first
    second = admin.get(f"/tenants?limit=2&after={made[1]}").get_data(as_text=True)
    assert f'id="tenant-{made[2]}"' in second and f'id="tenant-{made[1]}"' not in second
    assert 'href="/tenants?limit=2">First page</a>' in second
    # And past the last tenant, the page says so and reads no queue
    read.clear()
    past = admin.get(f"/tenants?after={made[2]}").get_data(as_text=True)
    assert "No tenant after those of the pages before." in past and "Next page" not in past
    admin.get(f"/tenants/figures?after={made[2]}", headers={"HX-Request": "1"})
    assert read == []
    # And an operator limited to A pages through A alone, however many tenants there are
    scoped = clients["scoped_viewer"]
    page = scoped.get("/tenants?limit=1").get_data(as_text=True)
    assert f'id="tenant-{world.a}"' in page and "Next page" in page
    after_a = scoped.get(f"/tenants?limit=1&after={world.a}").get_data(as_text=True)
    assert 'id="tenant-' not in after_a and world.b_name not in after_a
    # (and its queue column reads A's queue alone, from wherever the page starts)
    read.clear()
    scoped.get("/tenants/figures", headers={"HX-Request": "1"})
    assert read == [[world.a]]
    # And a bad `after` or `limit` is one clear 400, not a crash
    for query, words in (
        ("after=abc", "is not an id: give the last id of the page before"),
        ("after=-1", "is not an id"),
        ("after=" + "9" * 30, "is not an id"),
        ("limit=0", "must be a whole number from 1 to"),
    ):
        for path in ("/tenants", "/tenants/figures"):
            refused = admin.get(f"{path}?{query}")
            assert refused.status_code == 400, (path, query)
            assert words in refused.get_data(as_text=True), (path, query)


def test_an_unknown_or_overlong_id_is_404_not_a_crash(clients: dict[str, FlaskClient]) -> None:
    for path in (
        "/jobs/" + "x" * 300,
        "/jobs/nope",
        "/dead-letters/nope",
        "/tenants/99999999/delete",
    ):
        assert clients["admin"].get(path).status_code == 404, path


def test_sign_in_is_throttled_sessions_expire_and_removed_users_are_out(
    settings: Settings, engine: Engine
) -> None:
    app = create_app(settings, engine=engine, limiter=SignInLimiter(per_name=3))
    login = add_operator(engine, "viewer")
    client = app.test_client()
    token = csrf_of(client)
    wrong = {"name": login.name, "password": "wrong-password", "csrf_token": token}
    assert client.post("/sign-in", data=wrong).status_code == 401
    assert client.post("/sign-in", data=wrong).status_code == 401
    assert client.post("/sign-in", data=wrong).status_code == 401
    right = {**wrong, "password": login.password}
    assert client.post("/sign-in", data=right).status_code == 429
    other = app.test_client()
    sign_in(other, add_operator(engine, "viewer"))
    with other.session_transaction() as session:
        session["since"] = time.time() - settings.web_session_minutes * 60 - 1
    assert other.get("/jobs").headers["Location"].startswith("/sign-in")
    polled = other.get("/overview/panel", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/sign-in"
    third = app.test_client()
    removed = add_operator(engine, "viewer")
    sign_in(third, removed)
    assert third.get("/jobs").status_code == 200
    with sessionmaker(engine).begin() as s:
        remove_web_user(s, removed.name)
    assert third.get("/jobs").status_code == 302


def test_sign_in_goes_back_to_the_console_only(settings: Settings, engine: Engine) -> None:
    app = create_app(settings, engine=engine)
    login = add_operator(engine, "viewer")
    client = app.test_client()
    data = {
        "name": login.name,
        "password": login.password,
        "csrf_token": csrf_of(client),
        "next": "//evil.example/x",
    }
    answer = client.post("/sign-in", data=data)
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    # The token changes at sign-in: one planted before is worthless after.
    assert client.post("/sign-in", data=data).status_code == 400
    # Signing out is a state change like any other: it needs the token.
    assert client.post("/sign-out").status_code == 400
    assert client.get("/jobs").status_code == 200
    assert client.post("/sign-out", data={"csrf_token": csrf_of(client)}).status_code == 302
    assert client.get("/jobs").status_code == 302


def test_an_opted_in_proxy_header_names_the_operator(settings: Settings, engine: Engine) -> None:
    proxied = dataclasses.replace(settings, web_proxy_user_header="X-Forwarded-User")
    client = create_app(proxied, engine=engine).test_client()
    viewer = add_operator(engine, "viewer")
    as_viewer = {"X-Forwarded-User": viewer.name}
    assert client.get("/jobs", headers=as_viewer).status_code == 200
    token = csrf_of(client)
    refused = client.post("/tenants/1/disable", data={"csrf_token": token}, headers=as_viewer)
    assert refused.status_code == 403
    stranger = client.get("/jobs", headers={"X-Forwarded-User": "nobody-at-all"})
    assert stranger.status_code == 403 and "not a web user" in stranger.get_data(as_text=True)
    assert client.get("/jobs").status_code == 302
    # Without the opt-in, the same header is just a header.
    plain = create_app(settings, engine=engine).test_client()
    assert plain.get("/jobs", headers=as_viewer).status_code == 302


def test_a_bulk_requeue_that_cannot_reach_the_broker_says_so_and_requeues_nothing(
    settings: Settings, engine: Engine, make_tenant_id: int
) -> None:
    def broker_down() -> Any:
        raise AMQPConnectionError("connection refused")

    client = create_app(settings, engine=engine, load_broker=broker_down).test_client()
    sign_in(client, add_operator(engine, "admin"))
    with sessionmaker(engine).begin() as s:
        letters = [_letter(s, make_tenant_id, "down") for _ in range(2)]
    data = {"csrf_token": csrf_of(client), "action": "requeue", "tenant": str(make_tenant_id)}
    progress = client.post("/dead-letters/act", data=data).headers["Location"]

    def stopped() -> str | None:
        text = client.get(progress).get_data(as_text=True)
        return text if "stopped" in text else None

    page = wait_for(stopped, what="the requeue to stop")
    assert "stopped after 0 of 2" in page and "cannot reach the broker" in page
    with sessionmaker(engine)() as s:
        kept = s.scalars(select(DeadLetter).where(DeadLetter.message_id.in_(letters))).all()
    assert len(kept) == 2 and all(d.requeued_at is None for d in kept)
