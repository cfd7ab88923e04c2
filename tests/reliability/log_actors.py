"""Test-only actor and boot chatter of the worker-logging scenarios (loaded besides `actors`).

With REL_BOOT_LINES set, importing this module logs that many INFO lines: in a
worker process that is after the broker is loaded and before its threads start,
while Dramatiq's main process is not reading the worker's pipe yet.  `chatty`
logs `lines` INFO lines, then one WARNING line.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import brokers  # noqa: F401  (first: the actor is declared on the installed broker)
from actors.base import taskyard_actor

ACTOR_NAME = "rel_chatty"
# Every line this module logs at INFO carries it.
CHATTER = "chatter"
PADDING = "x" * 80

logger = logging.getLogger(__name__)


@taskyard_actor(name=ACTOR_NAME)
def chatty(tenant_id: int, key: str, lines: int = 0, **_: Any) -> None:
    """Log `lines` INFO lines, then one WARNING line naming `key`."""
    for n in range(lines):
        logger.info("%s job %s line %d %s", CHATTER, key, n, PADDING)
    logger.warning("chatty job %s done", key)


for _n in range(int(os.environ.get("REL_BOOT_LINES") or 0)):
    logger.info("%s boot line %d %s", CHATTER, _n, PADDING)
