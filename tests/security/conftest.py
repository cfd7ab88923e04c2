"""Security fixtures: the reliability suite's own database, and a rig with two tenants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from settings import Settings
from tests.reliability.conftest import reliability_database
from tests.reliability.kill_support import Rig, open_rig
from tests.security.support import TenantB, make_tenant_b
from tests.support import delete_queues

__all__ = ["reliability_database"]


@pytest.fixture
def rig(reliability_database: str, settings: Settings, tmp_path: Path) -> Iterator[Rig]:
    """Tenant A's rig: its queue prefix, producer and workers (started by each test)."""
    with open_rig(reliability_database, settings, tmp_path) as made:
        yield made


@pytest.fixture
def tenant_b(rig: Rig, settings: Settings) -> Iterator[TenantB]:
    """Tenant B, with rows in every table a job can reach; its queues deleted after."""
    made = make_tenant_b(rig, settings)
    yield made
    queue = rig.routing.queue_for(made.id)
    delete_queues(settings.broker_url, [queue, f"{queue}.DQ", f"{queue}.XQ"])
