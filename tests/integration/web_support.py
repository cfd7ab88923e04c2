"""What the web console's tests share: operators, a signed-in test client, seeded records."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pika
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from db.models import TENANT_DELETING, Job
from services.tenants import create_tenant
from services.web_users import add_web_user
from settings import Settings
from tests.support import dead_letter_arguments, delete_queues

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Login:
    """An operator the tests made: name, password, role, scope."""

    name: str
    password: str
    role: str
    tenant_ids: tuple[int, ...] | None


def add_operator(engine: Engine, role: str, tenant_ids: Sequence[int] | None = None) -> Login:
    """A committed web user with a unique name."""
    name = f"{role}-{uuid.uuid4().hex[:10]}"
    with sessionmaker(engine).begin() as session:
        add_web_user(session, name, password=PASSWORD, role=role, tenant_ids=tenant_ids)
    return Login(name, PASSWORD, role, None if tenant_ids is None else tuple(tenant_ids))


def csrf_of(client: FlaskClient) -> str:
    """The client session's CSRF token, as a page's forms carry it."""
    page = client.get("/sign-in").get_data(as_text=True)
    found = _CSRF.search(page)
    if found is None:  # signed in: the sign-in page redirects; any page has the sign-out form
        page = client.get("/workers").get_data(as_text=True)
        found = _CSRF.search(page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def sign_in(client: FlaskClient, login: Login) -> None:
    """Sign `client` in as `login` (through the form, with its token)."""
    answer = client.post(
        "/sign-in",
        data={"name": login.name, "password": login.password, "csrf_token": csrf_of(client)},
    )
    assert answer.status_code == 302, answer.get_data(as_text=True)


def add_job(
    session: Session,
    tenant_id: int | None,
    *,
    status: str = "queued",
    args: dict[str, object] | None = None,
    error: str | None = None,
    actor: str = "test_pipe_count",
) -> str:
    """A job record written straight to the table (as a send would); its message id."""
    message_id = str(uuid.uuid4())
    session.add(
        Job(
            message_id=message_id,
            tenant_id=tenant_id,
            actor=actor,
            queue=f"q.tenant.{tenant_id}",
            args=args if args is not None else {"tenant_id": tenant_id, "label": "x"},
            status=status,
            attempts=1 if status != "queued" else 0,
            enqueued_at=dt.datetime.now(dt.UTC),
            error=error,
        )
    )
    session.flush()
    return message_id


@contextmanager
def unconsumed_tenant_queue(engine: Engine, settings: Settings, messages: int) -> Iterator[int]:
    """A tenant whose queue holds `messages`, none consumed: the tenant is being deleted, so
    no worker of the run serves it and the count stays.  Yields its id; deletes the queue."""
    with sessionmaker(engine, expire_on_commit=False).begin() as s:
        tenant = create_tenant(s, f"queue-{uuid.uuid4().hex[:8]}")
        tenant.status = TENANT_DELETING
    name = settings.tenant_queue(tenant.id)
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    try:
        channel = connection.channel()
        channel.queue_declare(name, durable=True, arguments=dead_letter_arguments(name))
        for n in range(messages):
            channel.basic_publish("", name, f"{n}".encode())
    finally:
        connection.close()
    try:
        yield tenant.id
    finally:
        delete_queues(settings.broker_url, [name])
