"""Dramatiq's ShutdownNotifications, its option checked when an actor is declared."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import Broker
from dramatiq.middleware import ShutdownNotifications

from middleware.actor_options import check_actor_options


class JobShutdownNotifications(ShutdownNotifications):
    """Interrupts an actor declared (or sent) with notify_shutdown=True when its worker stops.

    The interrupt (`dramatiq.middleware.Shutdown`) lands in the engine's run:
    the attempt's transaction rolls back and is recorded as a failed attempt,
    retried like any other (TimeLimit's interrupt takes the same path).
    """

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Refuse, at declaration, a notify_shutdown that is not True, False or None."""
        check_actor_options(actor.actor_name, actor.options, ("notify_shutdown",))
