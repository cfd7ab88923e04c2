"""Test-only actor of the fairness test, loaded by its worker besides `actors`."""

from __future__ import annotations

import time

from actors.base import taskyard_actor

ACTOR_NAME = "test_fair_pause"


@taskyard_actor(name=ACTOR_NAME)
def fair_pause(tenant_id: int, seconds: float) -> None:
    """Take `seconds`, so that a backlog lasts while the test watches."""
    time.sleep(seconds)
