"""What every page of the console shares: the database, the broker, the operator, the scope."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from dramatiq.broker import Broker
from flask import abort, current_app, flash, g
from sqlalchemy.orm import Session, sessionmaker

from cli.common import describe_error
from db.models import WEB_ADMIN
from services.job_views import stale_window
from settings import Settings
from web.queue_readings import QueueReadings

T = TypeVar("T")
logger = logging.getLogger(__name__)
EXTENSION = "taskyard"


def load_installed_broker() -> Broker:
    """The installed broker with every actor declared (as the command line loads it)."""
    import actors  # noqa: F401  (declares the actors on the broker it installs)
    import brokers

    return brokers.broker


@dataclass
class Console:
    """The console's parts, built once per app: its settings, sessions and broker."""

    settings: Settings
    sessions: sessionmaker[Session]
    load_broker: Callable[[], Broker]
    # The tenants' queues in RabbitMQ, shared by every page and operator of the process.
    queues: QueueReadings = field(init=False)

    def __post_init__(self) -> None:
        self.queues = QueueReadings(self.settings)

    def transact(self, work: Callable[[Session], T], /) -> T:
        """Run `work` in one transaction and commit (the command line's `run`)."""
        with self.sessions.begin() as session:
            return work(session)

    @property
    def stale_after(self) -> dt.timedelta:
        """How old a worker's heartbeat may be for it to count as live."""
        return stale_window(self.settings.heartbeat_seconds)


def console() -> Console:
    """The console of the app handling this request."""
    found: Console = current_app.extensions[EXTENSION]
    return found


@dataclass(frozen=True)
class Operator:
    """The signed-in operator: a viewer reads, an admin acts; maybe limited to some tenants."""

    id: int
    name: str
    role: str
    # None: every tenant.
    tenant_ids: frozenset[int] | None

    @property
    def is_admin(self) -> bool:
        """Whether this operator may act (requeue, cancel, pause, delete)."""
        return self.role == WEB_ADMIN

    def sees(self, tenant_id: int | None) -> bool:
        """Whether this operator may see anything of `tenant_id` (None: a system job)."""
        if self.tenant_ids is None:
            return True
        return tenant_id is not None and tenant_id in self.tenant_ids


def operator() -> Operator:
    """The operator signed in for this request (pages run only once one is)."""
    found: Operator = g.operator
    return found


def not_found(what: str) -> NoReturn:
    """Answer 404: nothing by that id, or nothing this operator may see (never which)."""
    abort(404, description=what)


def check_sees(tenant_id: int | None, what: str) -> None:
    """404 unless the operator may see `tenant_id`'s records."""
    if not operator().sees(tenant_id):
        not_found(what)


def scoped_tenant(requested: int | None) -> int | None:
    """The tenant a listing is limited to: the one asked for, checked against the scope.

    An operator limited to some tenants always reads one of them at a time (the
    first when none is asked for); one outside the scope reads as unknown.
    """
    scope = operator().tenant_ids
    if scope is None:
        return requested
    if requested is None:
        if not scope:
            not_found("no tenant in this user's scope")
        return min(scope)
    if requested not in scope:
        not_found(f"no tenant {requested}")
    return requested


def visible(items: Iterable[T], tenant_of: Callable[[T], Any]) -> list[T]:
    """The items whose tenant the operator may see."""
    who = operator()
    return [item for item in items if who.sees(tenant_of(item))]


def attempt(action: Callable[[], str]) -> bool:
    """Run an operator's action; flash what it did, or its error in the command line's words.

    The outermost boundary of an action: any error becomes one message on the
    next page (and a log line), never a crash or a traceback shown.
    """
    settings = console().settings
    try:
        done = action()
    except Exception as exc:
        _code, message = describe_error(exc, settings.database_url, settings.broker_url)
        logger.warning("console action by %s failed: %s", operator().name, message)
        flash(message, "error")
        return False
    flash(done, "ok")
    return True
