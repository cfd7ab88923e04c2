"""The tenant locker's maintenance: re-encrypt every secret under the first key after a rotation."""

from __future__ import annotations

import logging

import brokers
from actors.base import taskyard_actor
from middleware import current_session
from services import locker

logger = logging.getLogger(__name__)


@taskyard_actor(name="reencrypt_locker", tenant_scoped=False)
def reencrypt_locker() -> locker.ReencryptSummary:
    """Re-encrypt every locker entry with the first of `TASKYARD_SECRET_KEYS`; counts only."""
    summary = locker.reencrypt_all(current_session(), secret_keys=brokers.settings.secret_keys)
    if summary["unreadable"]:
        logger.warning(
            "%d locker entries could not be read with the configured keys: %s",
            summary["unreadable"],
            ", ".join(summary["unreadable_entries"]),
        )
    return summary
