"""A tenant's lifecycle: `delete_tenant` removes everything it owns, then the tenant."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from marshmallow import Schema, fields, validate

import brokers
from actors.base import taskyard_actor
from middleware.runtime import runtime_of
from services import tenant_deletion
from transport import queues

logger = logging.getLogger(__name__)

# A large tenant takes a while; the default ten minutes would cut it short
# (harmlessly: a retry carries on where it stopped, but it would look failed).
DELETE_TIME_LIMIT_MS = 6 * 60 * 60 * 1000


class DeleteTenantArgs(Schema):
    """Arguments of `delete_tenant`."""

    tenant_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    batch_size = fields.Integer(strict=True, validate=validate.Range(min=1, max=100_000))
    # For tests and operators: stop (and fail) after this many batches.
    max_batches = fields.Integer(strict=True, validate=validate.Range(min=0))


def tenant_queue_names(tenant_id: int) -> list[str]:
    """The tenant's queue, its delay queue and its dead-letter queue."""
    return queues.tenant_queue_names(brokers.settings, tenant_id)


def delete_queues(names: Sequence[str]) -> int:
    """Delete these queues from the broker; how many existed."""
    return queues.delete_queues(brokers.broker, brokers.settings.broker_url, names)


@taskyard_actor(
    name="delete_tenant",
    tenant_scoped=False,
    schema=DeleteTenantArgs,
    time_limit=DELETE_TIME_LIMIT_MS,
)
def delete_tenant(
    tenant_id: int,
    batch_size: int = tenant_deletion.DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete every row of the tenant in batches, its queues, then the tenant; rows per table."""
    runtime = runtime_of(brokers.broker)
    if runtime is None:
        raise RuntimeError("delete_tenant needs a broker built by brokers.build_broker")
    counts = tenant_deletion.delete_tenant_data(
        runtime.session_factory,
        tenant_id,
        delete_queues=delete_queues,
        queues=tenant_queue_names(tenant_id),
        batch_size=batch_size,
        max_batches=max_batches,
    )
    logger.info("Deleted tenant %s: %s", tenant_id, counts, extra={"tenant_id": tenant_id})
    return counts
