"""Per-message state shared by the middleware and the actors, one value per worker thread."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from dramatiq import Message
from sqlalchemy.orm import Session

from services.records import JobRecord


class MessageContext:
    """What the running actor may reach: its message, its session, its held sends.

    `message` is None in a producer's `taskyard_transaction()`.  A worker's
    context opens its session only when something asks for it (the actor,
    a held send): a job that never does opens no transaction, and its record
    joins the group commit instead.
    """

    __slots__ = (
        "_factory",
        "_session",
        "after_commit",
        "held",
        "holding",
        "message",
        "tenants_known",
        "token",
    )

    def __init__(
        self,
        *,
        message: Message[Any] | None,
        session: Session | None = None,
        session_factory: Callable[[], Session] | None = None,
    ) -> None:
        if session is None and session_factory is None:
            raise ValueError("a MessageContext needs a session or a session factory")
        self.message = message
        self._session = session
        self._factory = session_factory
        # Sends held until the transaction commits (written just before it).
        self.held: list[JobRecord] = []
        # Whether a send now is held for the transaction: always in a producer's
        # transaction; in a worker only while the engine runs the job's body (a send
        # from a middleware's hook, before or after it, is made at once instead).
        self.holding = message is None
        # Tenants a held send named that this transaction has already found.
        self.tenants_known: set[int] = set()
        # Work for once the transaction has committed (a group's completion, an ingest's),
        # run outside it: each opens what it needs (`Outbox.follow_on`).
        self.after_commit: list[Callable[[], object]] = []
        # The ContextVar token that made this context current (to restore the previous one).
        self.token: object | None = None

    @property
    def session(self) -> Session:
        """The message's session, opened (and its transaction begun) on first use."""
        if self._session is None:
            assert self._factory is not None
            self._session = self._factory()
        return self._session

    @property
    def opened(self) -> bool:
        """Whether anything asked for the session (the job then commits its own transaction)."""
        return self._session is not None

    def close(self) -> None:
        """Close the session, if one was opened (a later use opens a new one)."""
        if self._session is not None:
            self._session.close()
            self._session = None


_context: ContextVar[MessageContext | None] = ContextVar("taskyard_message", default=None)


def current_context() -> MessageContext | None:
    """The running message's context, or None outside a message."""
    return _context.get()


def enter_context(ctx: MessageContext | None) -> object:
    """Make `ctx` current; returns a token for `leave_context`."""
    return _context.set(ctx)


def leave_context(token: object) -> None:
    """Restore the context that was current before `enter_context`."""
    _context.reset(token)  # type: ignore[arg-type]


def current_session() -> Session:
    """The running message's session; only valid inside an actor."""
    ctx = _context.get()
    if ctx is None:
        raise RuntimeError("current_session() is only available while an actor runs")
    return ctx.session


def current_message() -> Message[Any]:
    """The running message; only valid inside an actor."""
    ctx = _context.get()
    if ctx is None or ctx.message is None:
        raise RuntimeError("current_message() is only available while an actor runs")
    return ctx.message


def after_commit(work: Callable[[], object]) -> None:
    """Run `work` once the running job's transaction has committed, outside it.

    `work` opens what it needs (a transaction with held sends:
    `Outbox.follow_on`).  A failure there is logged, never the job's: what
    `work` does must be completed by something else too (a sweeper) if the
    process dies between the two.
    """
    ctx = _context.get()
    if ctx is None or ctx.message is None:
        raise RuntimeError("after_commit() is only available while an actor runs")
    ctx.after_commit.append(work)
