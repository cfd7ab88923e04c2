"""Test-only actors of the Dramatiq options test, loaded by its worker besides `actors`."""

from __future__ import annotations

from pathlib import Path

import dramatiq

import brokers  # noqa: F401  (first: the actors are declared on the installed broker)
from actors.base import TaskyardActor, taskyard_actor


def _ran(path: str) -> None:
    with Path(path).open("a") as runs:
        runs.write("ran\n")


def retries_once(tenant_id: int, path: str) -> None:
    """Fail every time: max_retries=1 lets it run twice."""
    _ran(path)
    raise RuntimeError("always fails")


def throws_value(tenant_id: int, path: str) -> None:
    """Raise the exception its actor throws."""
    _ran(path)
    raise ValueError("expected")


def runs(tenant_id: int, path: str) -> None:
    """Succeed, leaving a trace that it ran."""
    _ran(path)


def declare(broker: dramatiq.Broker) -> dict[str, TaskyardActor]:
    """Declare the test's actors on `broker`, by name."""
    return {
        "retries": taskyard_actor(name="test_opt_retries", broker=broker, max_retries=1)(
            retries_once
        ),
        "throws": taskyard_actor(
            name="test_opt_throws", broker=broker, max_attempts=5, throws=(ValueError,)
        )(throws_value),
        "aged": taskyard_actor(name="test_opt_aged", broker=broker, max_age=500)(runs),
        "plain": taskyard_actor(name="test_opt_plain", broker=broker)(runs),
    }


ACTORS = declare(dramatiq.get_broker())
