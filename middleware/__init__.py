"""Behaviour every message gets: tenant routing, the DB session, the retry policy.

The names below are loaded on first use (PEP 562): a process that needs one
module of this package, such as the metrics server's fork process, does not
import the whole engine with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from middleware.context import current_message, current_session
    from middleware.db_session import DbSession
    from middleware.retry_policy import RetryPolicy
    from middleware.tenant_routing import TenantRouting

# Each name this package exports, and the module that defines it.
_HOMES = {
    "DbSession": "middleware.db_session",
    "RetryPolicy": "middleware.retry_policy",
    "TenantRouting": "middleware.tenant_routing",
    "current_message": "middleware.context",
    "current_session": "middleware.context",
}

__all__ = ["DbSession", "RetryPolicy", "TenantRouting", "current_message", "current_session"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'middleware' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
