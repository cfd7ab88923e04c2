"""Dramatiq's retry and age options, checked once: at an actor's declaration, at a send.

A value a message may carry is checked by the consumer's option table
(`transport.rabbitmq.MESSAGE_OPTIONS`); an actor's option and a message built
by `send()` are checked against the same table here, so a value is refused
the same way wherever it is set.  Options whose values are Python objects
(exception classes, functions) are the actor's alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dramatiq.middleware import MiddlewareError

from transport.rabbitmq import MAX_ATTEMPTS_CAP, limit_conflict, option_problem

# Options a message may not carry, and what to do instead.
ACTOR_ONLY: dict[str, str] = {
    "throws": "set it on the actor: exception classes cannot travel in a JSON message",
    "retry_when": "set it on the actor: a function cannot travel in a JSON message",
    "on_retry_exhausted": (
        "set it on the actor: a message may not choose which actor its failure is sent to"
    ),
}
# Options that may be None on an actor, meaning "not set" (Dramatiq's default applies).
_NONE_MEANS_UNSET = frozenset({"max_age", "notify_shutdown", "throws", "retry_when"})


def is_taskyard(actor: Any) -> bool:
    """Whether `actor` was declared as Taskyard's (keyword arguments, a tenant or the system).

    Any other actor on Taskyard's broker is a plain Dramatiq one: the engine
    runs it too (`middleware.plain_actors`), with its positional arguments, in
    a world of its own (no tenant).
    """
    return "tenant_scoped" in actor.options


class OptionRefused(MiddlewareError, ValueError):
    """An actor or message option Taskyard cannot honour; the message says what to use instead.

    A `MiddlewareError`, so that Dramatiq lets it out of a `before_declare_actor` hook.
    """


def _exception_classes(value: Any) -> bool:
    classes = value if isinstance(value, tuple) else (value,)
    return bool(classes) and all(
        isinstance(item, type) and issubclass(item, BaseException) for item in classes
    )


def _actor_option_problem(name: str, value: Any) -> str | None:
    if value is None and name in _NONE_MEANS_UNSET:
        return None
    if name == "max_retries" and value is None:
        return (
            "max_retries=None (retry for ever) is refused: a Taskyard job gets at most "
            f"{MAX_ATTEMPTS_CAP} attempts; use max_retries={MAX_ATTEMPTS_CAP - 1}, or retry_when"
        )
    if name == "throws" and not _exception_classes(value):
        return f"throws must be an exception class or a tuple of them, not {value!r}"[:300]
    if name == "retry_when" and not callable(value):
        return f"retry_when must be a function (retries, exception) -> bool, not {value!r}"[:300]
    if name == "on_retry_exhausted" and not (isinstance(value, str) and 0 < len(value) <= 200):
        return f"on_retry_exhausted must be an actor's name, not {value!r}"[:300]
    if name in ACTOR_ONLY:
        return None
    return option_problem(name, value)


def check_actor_options(actor_name: str, options: Mapping[str, Any], names: Iterable[str]) -> None:
    """Raise `OptionRefused` when one of `names` is set on the actor to a value Taskyard refuses."""
    for name in names:
        if name in options:
            problem = _actor_option_problem(name, options[name])
            if problem is not None:
                raise OptionRefused(f"actor {actor_name}: {problem}")
    conflict = limit_conflict(options)
    if conflict is not None:
        raise OptionRefused(f"actor {actor_name}: {conflict}")


def check_message_options(
    actor_name: str, options: Mapping[str, Any], names: Iterable[str]
) -> None:
    """Raise `OptionRefused` when a message is built with one of `names` set to a refused value.

    The same checks the consumer makes when the message arrives, made at
    `send()`, before anything is recorded or published.
    """
    for name in names:
        if name not in options:
            continue
        if name in ACTOR_ONLY:
            raise OptionRefused(f"{actor_name}: message option {name!r}: {ACTOR_ONLY[name]}")
        problem = option_problem(name, options[name])
        if problem is not None:
            raise OptionRefused(f"{actor_name}: {problem}")
    conflict = limit_conflict(options)
    if conflict is not None:
        raise OptionRefused(f"{actor_name}: {conflict}")
