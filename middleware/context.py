"""Per-message state shared by the middleware and the actors, one value per worker thread."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from dramatiq import Message
from sqlalchemy.orm import Session


@dataclass
class HeldSend:
    """A message sent inside a transaction, published once the transaction commits."""

    message: Message[Any]
    delay: int | None


@dataclass
class MessageContext:
    """What the running actor may reach: its message, its session, its held sends.

    `message` is None in a producer's `taskyard_transaction()`.
    """

    message: Message[Any] | None
    session: Session
    held: list[HeldSend] = field(default_factory=list)
    # Tenants a held send named that this transaction has already found.
    tenants_known: set[int] = field(default_factory=set)


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
