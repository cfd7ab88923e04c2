"""Which tenant a queue belongs to, and whether a queue RabbitMQ deleted is declared again."""

from __future__ import annotations

import pytest

from middleware.tenant_routing import TenantRouting


def routing(served: list[int] | Exception) -> TenantRouting:
    def list_tenants() -> list[int]:
        if isinstance(served, Exception):
            raise served
        return served

    return TenantRouting(queue_prefix="t1.", list_tenants=list_tenants)


def test_a_tenant_queue_and_its_delay_queue_name_their_tenant() -> None:
    router = routing([])
    assert router.tenant_of_queue("t1.tenant.7") == 7
    assert router.tenant_of_queue("t1.tenant.7.DQ") == 7
    assert router.tenant_of_queue("t1.taskyard.system") is None
    # Another prefix's queue, or a name that only looks like one, is no tenant's.
    assert router.tenant_of_queue("t2.tenant.7") is None
    assert router.tenant_of_queue("t1.tenant.seven") is None


def test_a_deleted_tenants_queue_is_let_go_and_the_others_kept() -> None:
    # Tenant 7 is being deleted: the tenants served are 3 and 5
    router = routing([3, 5])
    assert not router.still_served("t1.tenant.7")
    assert not router.still_served("t1.tenant.7.DQ")
    assert router.still_served("t1.tenant.5")
    # A queue that is no tenant's is always declared again, as Dramatiq does
    assert router.still_served("t1.taskyard.system")


def test_when_the_tenants_cannot_be_read_the_queue_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = routing(ConnectionError("database away"))
    assert router.still_served("t1.tenant.7")
    assert "Could not read the tenants; t1.tenant.7 kept" in caplog.text


def test_without_a_tenant_list_every_queue_is_kept() -> None:
    assert TenantRouting(queue_prefix="t1.", pinned=[7]).still_served("t1.tenant.7")
