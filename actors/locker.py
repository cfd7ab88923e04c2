"""The tenant locker's maintenance: re-encrypt every secret under the first key after a rotation."""

from __future__ import annotations

from typing import TypedDict

import brokers
from actors.base import taskyard_actor
from middleware import current_session
from services import locker


class ReencryptResult(TypedDict):
    """What `reencrypt_locker` leaves on its job record (counts only, never values)."""

    reencrypted: int


@taskyard_actor(name="reencrypt_locker", tenant_scoped=False)
def reencrypt_locker() -> ReencryptResult:
    """Re-encrypt every locker entry with the first of `TASKYARD_SECRET_KEYS`."""
    count = locker.reencrypt_all(current_session(), secret_keys=brokers.settings.secret_keys)
    return {"reencrypted": count}
