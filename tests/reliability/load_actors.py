"""Test-only actor of the load scenario, loaded by its workers besides `actors`.

`record_load_effect` writes one `rel_load_effects` row in the job's
transaction, then fails as its `fail` argument says: "transient" raises a
`TransientError` on the first attempt only (the retry succeeds), "permanent"
raises a `PermanentError` every time (dead at once).  The failed attempt's row
is rolled back with its transaction, so each succeeded job leaves one row.
"""

from __future__ import annotations

from sqlalchemy import text

from actors.base import taskyard_actor
from middleware.context import current_message, current_session
from services.errors import PermanentError, TransientError

ACTOR_NAME = "rel_record_load_effect"
# The dead-letter reason of the permanently failing jobs.
PERMANENT_REASON = "load_permanent"


@taskyard_actor(name=ACTOR_NAME)
def record_load_effect(tenant_id: int, index: int, fail: str = "") -> None:
    """Write the job's effect row; fail transiently once or permanently as `fail` says."""
    message = current_message()
    current_session().execute(
        text(
            "INSERT INTO rel_load_effects (message_id, tenant_id, index)"
            " VALUES (:message_id, :tenant_id, :index)"
        ),
        {"message_id": message.message_id, "tenant_id": tenant_id, "index": index},
    )
    if fail == "transient" and int(message.options.get("retries", 0)) == 0:
        raise TransientError(f"load job {index} fails on its first attempt")
    if fail == "permanent":
        raise PermanentError(f"load job {index} always fails", reason=PERMANENT_REASON)
