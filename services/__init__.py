"""Taskyard's business logic: functions that take a Session first and never commit."""
