"""The middleware package loads its exports on first use, not when one module of it is imported.

The metrics server's fork process imports `middleware.metrics_server` alone; through
an eager `middleware/__init__.py` it paid for the whole engine (the DB session, the
retry policy, the outbox) at every worker start.
"""

from __future__ import annotations

import pytest

import middleware
from middleware.context import current_message, current_session
from middleware.db_session import DbSession
from middleware.retry_policy import RetryPolicy
from middleware.tenant_routing import TenantRouting
from tests.support import loaded_by


def test_the_metrics_servers_module_does_not_import_the_engine() -> None:
    engine = ("middleware.db_session", "middleware.retry_policy", "middleware.tenant_routing",
              "middleware.outbox")  # fmt: skip
    loaded, output = loaded_by("import middleware.metrics_server", engine)
    assert loaded == [], output


def test_each_export_is_the_object_its_module_defines() -> None:
    assert middleware.DbSession is DbSession
    assert middleware.RetryPolicy is RetryPolicy
    assert middleware.TenantRouting is TenantRouting
    assert middleware.current_message is current_message
    assert middleware.current_session is current_session
    assert sorted(middleware.__all__) == sorted(
        ["DbSession", "RetryPolicy", "TenantRouting", "current_message", "current_session"]
    )


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        middleware.Nothing  # noqa: B018
    with pytest.raises(ImportError):
        exec("from middleware import Nothing", {})
