"""Behaviour every message gets: tenant routing, the DB session, the retry policy."""

from __future__ import annotations

from middleware.context import current_message, current_session
from middleware.db_session import DbSession
from middleware.retry_policy import RetryPolicy
from middleware.tenant_routing import TenantRouting

__all__ = ["DbSession", "RetryPolicy", "TenantRouting", "current_message", "current_session"]
