"""Middleware hooks called only where a middleware defines them.

Dramatiq's `Broker.emit_before` / `emit_after` call every middleware's hook for
every signal: with Taskyard's stack, about twenty calls for each of a job's
four signals (`process_message`, `ack`, before and after), most of them
Dramatiq's `Middleware` defaults, which do nothing.  `HookDispatch` calls the
same hooks in the same order with the same error handling, and skips a
middleware whose hook for the signal is that default (on its class and not set
on the instance).  Which middleware define which hook is read once per signal,
and read again whenever the broker's middleware list is replaced or grows
(`add_middleware`), the only ways Dramatiq changes it.
"""

from __future__ import annotations

from typing import Any

from dramatiq.middleware import Middleware, MiddlewareError


def defines_hook(middleware: object, hook: str) -> bool:
    """Whether calling `middleware`'s `hook` may do anything (it is not Dramatiq's default).

    A hook Dramatiq's `Middleware` does not declare counts as defined, so that
    a middleware lacking it fails as under Dramatiq's own dispatch (logged).
    """
    default = getattr(Middleware, hook, None)
    if default is None:
        return True
    if hook in getattr(middleware, "__dict__", ()):
        return True
    return getattr(type(middleware), hook, None) is not default


class HookDispatch:
    """A broker mixin (first in the bases): `emit_before` / `emit_after` skip the no-op hooks."""

    middleware: list[Middleware]
    logger: Any

    # (the list the hooks were read from, its length, {hook: middleware defining it}).
    _hook_table: tuple[list[Middleware], int, dict[str, tuple[Middleware, ...]]] | None = None

    def _hooked(self, hook: str) -> tuple[Middleware, ...]:
        """The middleware defining `hook`, in the broker's order."""
        middleware = self.middleware
        table = self._hook_table
        if table is None or table[0] is not middleware or table[1] != len(middleware):
            table = (middleware, len(middleware), {})
            self._hook_table = table
        found = table[2].get(hook)
        if found is None:
            found = tuple(m for m in middleware if defines_hook(m, hook))
            table[2][hook] = found
        return found

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's `emit_before`: a MiddlewareError stops it, any other is logged."""
        signal = "before_" + signal
        for middleware in self._hooked(signal):
            try:
                getattr(middleware, signal)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", signal, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's `emit_after`: in reverse order, every failure logged."""
        signal = "after_" + signal
        for middleware in reversed(self._hooked(signal)):
            try:
                getattr(middleware, signal)(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", signal, middleware, exc_info=True
                )
