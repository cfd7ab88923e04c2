"""Test-only actor and middleware of the kill scenarios, loaded by the workers besides `actors`.

`record_effect` writes one `rel_effects` row in the job's transaction, so a
duplicate run shows as a second row.  It can hold the worker at a chosen
moment, once per message (the first worker to get there makes a marker file
and waits; a redelivered copy finds the marker and goes straight on):

- `pause="run"`: after its row is written, while the actor still runs;
- `pause="commit"`: at the commit (a deferred trigger the test installs waits
  for an advisory lock the test holds; nothing in this module);
- `pause="ack"`: after the commit, before the acknowledgement (`HoldBeforeAck`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from sqlalchemy import text

import brokers
from actors.base import taskyard_actor
from middleware.context import current_message, current_session

ACTOR_NAME = "rel_record_effect"
# Longer than any scenario: the test kills the worker while it waits.
HOLD_SECONDS = 120.0

logger = logging.getLogger(__name__)


def first_arrival(signal_dir: str, key: str, moment: str) -> bool:
    """Make the marker of (key, moment); False when it was there already (a redelivery)."""
    try:
        fd = os.open(Path(signal_dir) / f"{key}.{moment}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@taskyard_actor(name=ACTOR_NAME)
def record_effect(
    tenant_id: int, key: str, pause: str = "", signal_dir: str = "", seconds: float = 0.0
) -> None:
    """Write the job's effect row; sleep `seconds`; hold at `pause` the first time."""
    current_session().execute(
        text("INSERT INTO rel_effects (message_id, key, pause) VALUES (:message_id, :key, :pause)"),
        {"message_id": current_message().message_id, "key": key, "pause": pause},
    )
    if seconds:
        time.sleep(seconds)
    if pause == "run" and first_arrival(signal_dir, key, "run"):
        logger.info("Holding %s while it runs", key)
        time.sleep(HOLD_SECONDS)


KILL_SELF_ACTOR = "rel_kill_self"


@taskyard_actor(name=KILL_SELF_ACTOR)
def kill_self(tenant_id: int, signal_dir: str, key: str) -> None:
    """Note the run in `<key>.runs`, then kill this worker process (a poison pill)."""
    with (Path(signal_dir) / f"{key}.runs").open("a") as runs:
        runs.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


NOTE_RUN_ACTOR = "rel_note_run"


@taskyard_actor(name=NOTE_RUN_ACTOR)
def note_run(tenant_id: int, signal_dir: str, key: str) -> None:
    """Note the run in `<key>.runs` and touch nothing else: its record joins the group commit."""
    with (Path(signal_dir) / f"{key}.runs").open("a") as runs:
        runs.write(f"{os.getpid()}\n")


class HoldBeforeAck(Middleware):
    """Holds a `pause="ack"` message after its commit: Dramatiq acks after this hook."""

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Wait here, the first time, for a committed message that asks for it."""
        kwargs = message.kwargs
        if (
            message.actor_name != ACTOR_NAME
            or exception is not None
            or kwargs.get("pause") != "ack"
        ):
            return
        if first_arrival(kwargs["signal_dir"], kwargs["key"], "ack"):
            logger.info("Holding %s before its acknowledgement", kwargs["key"])
            time.sleep(HOLD_SECONDS)


# Added last: its after-hook runs first, ahead of everything before the ack.
brokers.broker.add_middleware(HoldBeforeAck())
